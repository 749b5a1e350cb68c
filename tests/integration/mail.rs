//! Mail end to end: password forgot, reset and change, their confirmation
//! mails, and notification digests, sent over SMTP to a real SMTP server
//! (aiosmtpd, a process of the test's own on 127.0.0.1) whose mailbox the
//! tests read.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::support::{eventually, Client, Socket, World, ALL_ROLES};

const PASSWORD: &str = "correct horse battery";
const NEW_PASSWORD: &str = "a new and better horse";

/// An SMTP server that keeps what it receives in a maildir.
struct SmtpServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl SmtpServer {
    /// A port for a server that is not started yet: mail to it fails.
    fn reserve() -> SmtpServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("tidings-mail-{}", uuid::Uuid::new_v4()));
        SmtpServer {
            child: None,
            port,
            dir,
        }
    }

    async fn started() -> SmtpServer {
        let mut server = SmtpServer::reserve();
        server.start().await;
        server
    }

    /// The Python that has aiosmtpd: the virtualenv `scripts/stack up`
    /// makes, else the system's.
    fn python() -> PathBuf {
        let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/aiosmtpd/bin/python");
        if venv.exists() {
            venv
        } else {
            PathBuf::from("python3")
        }
    }

    async fn start(&mut self) {
        // A maildir: aiosmtpd makes the three folders only where it makes
        // the directory itself.
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(self.dir.join(sub)).unwrap();
        }
        let child = Command::new(Self::python())
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("aiosmtpd runs (scripts/stack up installs it)");
        self.child = Some(child);
        let port = self.port;
        eventually(Duration::from_secs(15), "aiosmtpd listens", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
    }

    fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every mail received so far, as text.
    fn mails(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("new")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .collect()
    }

    /// The mails to `to` whose subject contains `subject`.
    fn mails_to(&self, to: &str, subject: &str) -> Vec<String> {
        self.mails()
            .into_iter()
            .filter(|m| header(m, "To").contains(to) && header(m, "Subject").contains(subject))
            .collect()
    }

    /// Waits for the first mail to `to` with `subject`.
    async fn wait_for(&self, to: &str, subject: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(mail) = self.mails_to(to, subject).into_iter().next() {
                return mail;
            }
            assert!(
                Instant::now() < deadline,
                "no mail to {to} about {subject:?} within {within:?}; received: {:?}",
                self.mails()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A header's value (its first line).
fn header(mail: &str, name: &str) -> String {
    mail.lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_default()
        .to_owned()
}

/// The reset token a reset mail carries.
fn reset_token(mail: &str) -> String {
    let at = mail
        .find("reset token: ")
        .expect("a reset token in the mail")
        + 13;
    mail[at..].split_whitespace().next().unwrap().to_owned()
}

async fn forgot(client: &Client, email: &str) -> u16 {
    client
        .send(
            client
                .post("/api/auth/password/forgot")
                .json(&json!({ "email": email })),
        )
        .await
        .status
}

async fn reset(client: &Client, token: &str, password: &str) -> (u16, Value) {
    let reply = client
        .send(
            client
                .post("/api/auth/password/reset")
                .json(&json!({ "token": token, "password": password })),
        )
        .await;
    (reply.status, reply.body)
}

async fn login(client: &Client, login: &str, password: &str) -> u16 {
    client
        .send(
            client
                .post("/api/auth/login")
                .json(&json!({ "login": login, "password": password })),
        )
        .await
        .status
}

async fn profile(client: &Client, token: &str) -> (u16, Value) {
    let reply = client
        .send(client.get("/api/profile").bearer_auth(token))
        .await;
    (reply.status, reply.body)
}

/// Registers `name` and waits until the account is projected: `(id,
/// token)`.
async fn user(client: &Client, name: &str) -> (String, String) {
    let (id, token, position) = client.user(name).await;
    let reply = client.own_profile(&token, &position).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    (id, token)
}

#[tokio::test]
async fn a_forgotten_password_is_reset_by_mail_and_every_old_token_stops_working() {
    let smtp = SmtpServer::started().await;
    let world = World::new().await;
    let mut settings = world.settings.clone();
    settings.mail.smtp_url = Some(smtp.url());
    let app = world.start_with(settings, &ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (_, old_token) = user(&client, "alice").await;
    let mut socket = Socket::connect(&app.base, &old_token).await;
    socket.expect("subscribed").await;

    assert_eq!(forgot(&client, "Alice@Example.com").await, 202);
    let mail = smtp
        .wait_for("alice@example.com", "Reset", Duration::from_secs(15))
        .await;
    let token = reset_token(&mail);
    assert_eq!(token.len(), 43, "{mail}");
    // One mail per address per interval, however often it is asked.
    assert_eq!(forgot(&client, "alice@example.com").await, 202);
    // An address nobody has: the same answer, and no mail.
    assert_eq!(forgot(&client, "nobody@example.com").await, 202);

    let (status, body) = reset(&client, &token, "short").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("validation_failed"))
    );
    let (status, body) = reset(&client, "not a token we gave", NEW_PASSWORD).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_reset_token"))
    );

    let (status, body) = reset(&client, &token, NEW_PASSWORD).await;
    assert_eq!(status, 204, "{body}");
    // In force at once, on every process (the token version is read from
    // PostgreSQL on each request).
    let (status, body) = profile(&client, &old_token).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("token_revoked"))
    );
    assert_eq!(login(&client, "alice", PASSWORD).await, 401);
    assert_eq!(login(&client, "alice", NEW_PASSWORD).await, 200);
    // The open socket of the old token is told and closed.
    let pushed = socket.expect("event").await;
    assert_eq!(pushed["event"], "password.changed", "{pushed}");
    let error = socket.expect("error").await;
    assert_eq!(error["code"], "token_revoked");
    assert_eq!(socket.expect("closed").await["code"], 4001);

    // Single use.
    let (status, body) = reset(&client, &token, "yet another password").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_reset_token"))
    );
    assert_eq!(login(&client, "alice", NEW_PASSWORD).await, 200);

    let confirmation = smtp
        .wait_for("alice@example.com", "was changed", Duration::from_secs(15))
        .await;
    assert!(confirmation.contains("reset"), "{confirmation}");
    // Nothing more came: one reset mail, and none to the unknown address.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(smtp.mails_to("alice@example.com", "Reset").len(), 1);
    assert!(smtp.mails_to("nobody@example.com", "").is_empty());

    // The log says a password changed, and holds no hash or token.
    let events = world.events();
    let changed: Vec<_> = events
        .iter()
        .filter(|(_, _, e)| e.event_type == "account.password_changed")
        .collect();
    assert_eq!(
        changed.len(),
        1,
        "one change: the refused reuse appended nothing"
    );
    let data = &changed[0].2.data;
    assert_eq!(data["token_version"], 1);
    assert_eq!(data["reason"], "reset");
    let text = data.to_string();
    assert!(!text.contains("argon2") && !text.contains(&token), "{text}");
    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn changing_the_password_hands_out_a_new_token_and_revokes_every_other() {
    let smtp = SmtpServer::started().await;
    let world = World::new().await;
    let mut settings = world.settings.clone();
    settings.mail.smtp_url = Some(smtp.url());
    let app = world.start_with(settings, &ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (carol_id, token) = user(&client, "carol").await;
    // A change that died after its hash was kept and before its command
    // was decided: nothing changes, and it is never put in force later.
    let db = world.db().await;
    sqlx::query(
        "INSERT INTO pending_credentials (user_id, command_id, token_version, password_hash)
         VALUES ($1, $2, 1, 'not the hash of anything')",
    )
    .bind(uuid::Uuid::parse_str(&carol_id).unwrap())
    .bind(uuid::Uuid::new_v4())
    .execute(&db)
    .await
    .unwrap();
    db.close().await;
    assert_eq!(login(&client, "carol", PASSWORD).await, 200);
    assert_eq!(profile(&client, &token).await.0, 200);
    let other = client
        .send(
            client
                .post("/api/auth/login")
                .header("Idempotency-Key", "login-1")
                .json(&json!({ "login": "carol", "password": PASSWORD })),
        )
        .await
        .body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let change = |current: &str, new: &str| {
        client
            .post("/api/auth/password/change")
            .bearer_auth(&token)
            .json(&json!({ "current_password": current, "password": new }))
    };

    let wrong = client.send(change("not my password", NEW_PASSWORD)).await;
    assert_eq!(
        (wrong.status, wrong.body["code"].as_str()),
        (401, Some("invalid_credentials"))
    );
    let weak = client.send(change(PASSWORD, "short")).await;
    assert_eq!(
        (weak.status, weak.body["code"].as_str()),
        (422, Some("validation_failed"))
    );

    let posted = client
        .send(
            client
                .post("/api/posts")
                .bearer_auth(&token)
                .header("Idempotency-Key", "post-1")
                .json(&json!({ "text": "before the change", "visibility": "public" })),
        )
        .await;
    assert_eq!(posted.status, 201, "{}", posted.body);

    let changed = client
        .send(change(PASSWORD, NEW_PASSWORD).header("Idempotency-Key", "change-1"))
        .await;
    assert_eq!(changed.status, 204, "{}", changed.body);
    let fresh = changed.headers["x-token"].to_str().unwrap().to_owned();
    for old in [&token, &other] {
        let (status, body) = profile(&client, old).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("token_revoked"))
        );
    }
    // A replay hands out nothing a fresh request could not get: not the
    // change's new token to the old one, not a login's revoked token, not
    // an earlier answer to a revoked caller.
    let replays = [
        change(PASSWORD, NEW_PASSWORD).header("Idempotency-Key", "change-1"),
        client
            .post("/api/auth/login")
            .header("Idempotency-Key", "login-1")
            .json(&json!({ "login": "carol", "password": PASSWORD })),
        client
            .post("/api/posts")
            .bearer_auth(&token)
            .header("Idempotency-Key", "post-1")
            .json(&json!({ "text": "before the change", "visibility": "public" })),
    ];
    for replay in replays {
        let replay = client.send(replay).await;
        assert_eq!(
            (replay.status, replay.body["code"].as_str()),
            (401, Some("token_revoked")),
            "{}",
            replay.body
        );
        assert!(replay.headers.get("x-token").is_none());
    }
    let again = client
        .send(
            client
                .post("/api/posts")
                .bearer_auth(&fresh)
                .header("Idempotency-Key", "post-1")
                .json(&json!({ "text": "before the change", "visibility": "public" })),
        )
        .await;
    assert_eq!(again.status, 201, "the key is the user's: {}", again.body);
    assert_eq!(again.body["post"]["id"], posted.body["post"]["id"]);
    let (status, body) = profile(&client, &fresh).await;
    assert_eq!((status, body["username"].as_str()), (200, Some("carol")));
    assert_eq!(login(&client, "carol", PASSWORD).await, 401);
    assert_eq!(login(&client, "carol@example.com", NEW_PASSWORD).await, 200);
    let confirmation = smtp
        .wait_for("carol@example.com", "was changed", Duration::from_secs(15))
        .await;
    assert!(confirmation.contains("signed-in session"), "{confirmation}");
    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn mail_waits_out_an_smtp_server_that_is_down_and_an_expired_token_is_refused() {
    let mut smtp = SmtpServer::reserve();
    let world = World::new().await;
    let mut settings = world.settings.clone();
    settings.mail.smtp_url = Some(smtp.url());
    settings.mail.password_reset_ttl_secs = 2;
    settings.mail.mail_queue_max = 1;
    let app = world.start_with(settings, &ALL_ROLES).await;
    let client = Client::new(&app.base);
    user(&client, "dave").await;

    assert_eq!(forgot(&client, "dave@example.com").await, 202);
    // The first attempts find no server.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(smtp.mails().is_empty());
    // The queue is full (one waiting): a reset is refused for any address,
    // and nothing is done.
    let refused = client
        .send(
            client
                .post("/api/auth/password/forgot")
                .json(&json!({ "email": "dave@example.com" })),
        )
        .await;
    assert_eq!(
        (refused.status, refused.body["code"].as_str()),
        (503, Some("overloaded"))
    );
    assert!(refused.headers.contains_key("retry-after"));
    smtp.start().await;
    let mail = smtp
        .wait_for("dave@example.com", "Reset", Duration::from_secs(20))
        .await;
    let token = reset_token(&mail);
    // Sent, the queue has room again.
    eventually(Duration::from_secs(5), "the queue has room", || async {
        forgot(&client, "nobody@example.com").await == 202
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = reset(&client, &token, NEW_PASSWORD).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_reset_token"))
    );
    assert_eq!(login(&client, "dave", PASSWORD).await, 200);
    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn notifications_are_mailed_to_users_without_a_socket_at_most_once_per_interval() {
    let interval = Duration::from_millis(3000);
    let (smtp, world, app) = mailing(interval).await;
    let client = Client::new(&app.base);
    let (_, alice) = user(&client, "alice").await;
    let (bob_id, _) = user(&client, "bob").await;
    let (carol_id, carol) = user(&client, "carol").await;
    let mut carol_socket = Socket::connect(&app.base, &carol).await;
    carol_socket.expect("subscribed").await;

    for whom in [&bob_id, &carol_id] {
        let reply = client
            .send(
                client
                    .put(&format!("/api/users/{whom}/follow"))
                    .bearer_auth(&alice),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    // Carol, online, has it pushed on her channel.
    let pushed = carol_socket.expect("event").await;
    assert_eq!(pushed["event"], "notification.created", "{pushed}");
    assert_eq!(pushed["channel"], format!("user:{carol_id}"));

    // Bob, offline, has it mailed.
    let first = smtp
        .wait_for(
            "bob@example.com",
            "new notification",
            Duration::from_secs(15),
        )
        .await;
    assert!(first.contains("alice followed you"), "{first}");

    // Two more right away: one digest for both, an interval after the first.
    for text in ["hello @bob", "still there, @bob?"] {
        let reply = client
            .send(
                client
                    .post("/api/posts")
                    .bearer_auth(&alice)
                    .json(&json!({ "text": text, "visibility": "public" })),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    // A mention in a post deleted before the digest is not mailed.
    let gone = client
        .send(
            client
                .post("/api/posts")
                .bearer_auth(&alice)
                .json(&json!({ "text": "gone soon, @bob", "visibility": "public" })),
        )
        .await;
    assert_eq!(gone.status, 201, "{}", gone.body);
    let deleted = client
        .send(
            client
                .delete(&format!(
                    "/api/posts/{}",
                    gone.body["post"]["id"].as_str().unwrap()
                ))
                .bearer_auth(&alice),
        )
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    eventually(Duration::from_secs(15), "a second digest", || async {
        smtp.mails_to("bob@example.com", "new notification").len() >= 2
    })
    .await;
    // Queued an interval apart (as the mailer's transactions saw the time).
    let db = world.db().await;
    let queued: Vec<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT created_at FROM mail_outbox WHERE to_address = 'bob@example.com' ORDER BY id",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    db.close().await;
    assert_eq!(queued.len(), 2);
    assert!(
        (queued[1] - queued[0]).to_std().unwrap() >= interval,
        "{queued:?}"
    );
    let second = smtp
        .mails_to("bob@example.com", "new notification")
        .into_iter()
        .find(|m| m.contains("mentioned you"))
        .expect("the second digest lists the mentions");
    assert_eq!(second.matches("alice mentioned you").count(), 2, "{second}");
    assert!(!second.contains("followed you"), "{second}");

    // Nothing more for Bob, and nothing ever for Carol, who was online.
    tokio::time::sleep(interval * 2).await;
    assert_eq!(
        smtp.mails_to("bob@example.com", "new notification").len(),
        2
    );
    assert!(smtp.mails_to("carol@example.com", "").is_empty());
    app.stop().await;
    world.clean_up().await;
}

/// A Tidings of all roles that mails through a fresh SMTP server of the
/// test's own, with notification digests at most once per `interval`.
async fn mailing(interval: Duration) -> (SmtpServer, World, crate::support::Running) {
    let smtp = SmtpServer::started().await;
    let world = World::new().await;
    let mut settings = world.settings.clone();
    settings.mail.smtp_url = Some(smtp.url());
    settings.mail.notification_mail_interval_ms = interval.as_millis() as u64;
    let app = world.start_with(settings, &ALL_ROLES).await;
    (smtp, world, app)
}

/// `token`'s holder writes `body` to `path`.
async fn write(client: &Client, token: &str, path: &str, body: Value) -> Value {
    let reply = client
        .send(client.post(path).bearer_auth(token).json(&body))
        .await;
    assert!(
        reply.status == 200 || reply.status == 201,
        "{path}: {} {}",
        reply.status,
        reply.body
    );
    reply.body
}

/// The `message` notifications of `token`'s holder, newest first.
async fn message_notifications(client: &Client, token: &str) -> (Vec<Value>, String) {
    let reply = client
        .send(client.get("/api/notifications").bearer_auth(token))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let items = reply.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "message")
        .cloned()
        .collect();
    (
        items,
        reply.headers["x-unread-count"].to_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn messages_notify_the_participants_offline_once_until_read_and_invites_the_invitee() {
    let interval = Duration::from_millis(2000);
    let (smtp, world, app) = mailing(interval).await;
    let client = Client::new(&app.base);
    let (_, alice) = user(&client, "alice").await;
    let (bob_id, bob) = user(&client, "bob").await;
    let (carol_id, carol) = user(&client, "carol").await;
    let (_, dave) = user(&client, "dave").await;
    let created = write(
        &client,
        &alice,
        "/api/rooms",
        json!({"name": "book club", "is_private": true}),
    )
    .await;
    let room = created["room"]["id"].as_str().unwrap().to_owned();
    for (id, token) in [(&bob_id, &bob), (&carol_id, &carol)] {
        write(
            &client,
            &alice,
            &format!("/api/rooms/{room}/invites"),
            json!({ "user_id": id }),
        )
        .await;
        write(
            &client,
            token,
            &format!("/api/rooms/{room}/join"),
            json!({}),
        )
        .await;
    }
    // Each invitee was told of the invitation; they read everything then.
    for token in [&bob, &carol] {
        let reply = client
            .send(client.get("/api/notifications").bearer_auth(token))
            .await;
        let invite = reply.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["kind"] == "invite")
            .cloned()
            .unwrap_or_else(|| panic!("no invite notification: {}", reply.body));
        assert_eq!(invite["room_id"], room.as_str());
        assert_eq!(invite["actor_username"], "alice");
        write(
            &client,
            token,
            "/api/notifications/read",
            json!({ "all": true }),
        )
        .await;
    }
    let none = client
        .send(client.get("/api/notifications").bearer_auth(&dave))
        .await;
    assert_eq!(none.body["items"], json!([]), "{}", none.body);

    // Carol is online (counted once her own channel is subscribed); Bob is
    // not; Dave is in no room.
    let mut carols = Socket::connect(&app.base, &carol).await;
    carols.expect("subscribed").await;

    let messages = format!("/api/rooms/{room}/messages");
    let first = write(&client, &alice, &messages, json!({"text": "chapter one?"})).await;
    let first_id = first["message"]["id"].as_str().unwrap().to_owned();
    write(&client, &alice, &messages, json!({"text": "anyone?"})).await;

    // Bob, offline: one notification for the two messages, at the first.
    let (items, unread) = message_notifications(&client, &bob).await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["room_id"], room.as_str());
    assert_eq!(items[0]["message_id"], first_id.as_str());
    assert_eq!(items[0]["actor_username"], "alice");
    assert_eq!(items[0]["read"], false);
    assert_eq!(unread, "1");
    // Carol, online, has the messages themselves on her socket, and no
    // notification; the author and Dave have none either.
    loop {
        let frame = carols.expect("event").await;
        assert_ne!(frame["event"], "notification.created", "{frame}");
        if frame["event"] == "message.created" && frame["data"]["text"] == "anyone?" {
            break;
        }
    }
    for token in [&carol, &alice, &dave] {
        let (items, unread) = message_notifications(&client, token).await;
        assert!(items.is_empty(), "{items:?}");
        assert_eq!(unread, "0");
    }

    // Bob has it mailed; Carol does not (checked at the end). The
    // invitations may have been mailed before they were read.
    let wrote = |mail: &String| mail.contains("alice wrote in \"book club\"");
    eventually(
        Duration::from_secs(15),
        "Bob's digest of the messages",
        || async {
            smtp.mails_to("bob@example.com", "new notification")
                .iter()
                .any(wrote)
        },
    )
    .await;

    // Carol's message adds nothing for Bob: his notification stands for
    // every message after the first he has not read. Reading the room to
    // its end reads it.
    let reply = write(&client, &carol, &messages, json!({"text": "yes!"})).await;
    let carols_id = reply["message"]["id"].as_str().unwrap().to_owned();
    let (items, _) = message_notifications(&client, &bob).await;
    assert_eq!(items.len(), 1, "Carol's message adds none: {items:?}");
    write(
        &client,
        &bob,
        &format!("/api/rooms/{room}/read"),
        json!({ "message_id": carols_id }),
    )
    .await;
    let (items, unread) = message_notifications(&client, &bob).await;
    assert_eq!(
        (items[0]["read"].clone(), unread),
        (json!(true), "0".into())
    );
    // The next message starts another.
    write(&client, &alice, &messages, json!({"text": "chapter two"})).await;
    let (items, unread) = message_notifications(&client, &bob).await;
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(unread, "1");

    // Gone from the room, gone from the list.
    let left = client
        .send(
            client
                .post(&format!("/api/rooms/{room}/leave"))
                .bearer_auth(&bob),
        )
        .await;
    assert_eq!(left.status, 200, "{}", left.body);
    let (items, unread) = message_notifications(&client, &bob).await;
    assert!(items.is_empty(), "{items:?}");
    assert_eq!(unread, "0");
    // Back in the room, he starts from its end: the next message tells him
    // of itself, not of what he missed before leaving.
    write(
        &client,
        &alice,
        &format!("/api/rooms/{room}/invites"),
        json!({ "user_id": bob_id }),
    )
    .await;
    write(&client, &bob, &format!("/api/rooms/{room}/join"), json!({})).await;
    let (items, _) = message_notifications(&client, &bob).await;
    assert!(items.is_empty(), "{items:?}");
    let back = write(&client, &alice, &messages, json!({"text": "welcome back"})).await;
    let (items, _) = message_notifications(&client, &bob).await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["message_id"], back["message"]["id"]);
    assert_eq!(items[0]["read"], false);

    tokio::time::sleep(interval * 2).await;
    let carols_mail = smtp.mails_to("carol@example.com", "");
    assert!(!carols_mail.iter().any(wrote), "{carols_mail:?}");
    app.stop().await;
    world.clean_up().await;
}
