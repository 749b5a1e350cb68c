//! Webhooks through real HTTP, Kafka, PostgreSQL and a real receiver
//! process (`tests/webhooks/receiver.py`, on 127.0.0.1, which the tests
//! allowlist): signatures that verify with the README's recipe and with the
//! Standard Webhooks library, retries with backoff, a receiver that is down
//! for 30 s, dead letters and a healthy endpoint beside them, disabling,
//! the delivery log and a manual retry, and the URLs that are refused.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tidings::settings::Role;

use crate::support::{eventually, Client, World, ALL_ROLES};

const PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.tools/webhooks/bin/python");
const RECEIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webhooks/receiver.py");

/// The receiver process and what it recorded.
struct Receiver {
    child: Child,
    port: u16,
    requests: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start(args: &[&str]) -> Receiver {
        Receiver::start_on(0, args, Arc::default())
    }

    /// Starts on `port` (0: any), recording into `requests`.
    fn start_on(port: u16, args: &[&str], requests: Arc<Mutex<Vec<Value>>>) -> Receiver {
        let mut child = Command::new(PYTHON)
            .arg(RECEIVER)
            .arg("serve")
            .args(["--port", &port.to_string()])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the receiver starts (scripts/stack up installs .tools/webhooks)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let port = first
            .strip_prefix("listening ")
            .expect("the receiver says where it listens")
            .parse()
            .unwrap();
        let recorded = requests.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                recorded
                    .lock()
                    .unwrap()
                    .push(serde_json::from_str(&line).unwrap());
            }
        });
        Receiver {
            child,
            port,
            requests,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }

    /// Requests answered 2xx, by event id (the first of each).
    fn delivered_ids(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.requests()
            .iter()
            .filter(|r| r["answered"].as_u64().is_some_and(|s| s < 300))
            .map(|r| {
                r["headers"]["x-tidings-event-id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .filter(|id| seen.insert(id.clone()))
            .collect()
    }

    fn stop(mut self) -> Arc<Mutex<Vec<Value>>> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.requests.clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks recorded requests with `receiver.py verify`: the Standard
/// Webhooks library and the README's recipe.
fn verify(secret: &str, requests: &[Value]) -> String {
    let mut child = Command::new(PYTHON)
        .args([RECEIVER, "verify", secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for request in requests {
            writeln!(stdin, "{request}").unwrap();
        }
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "verification failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A world whose webhooks may reach 127.0.0.1, retrying quickly.
async fn world() -> World {
    let mut world = World::new().await;
    let hooks = &mut world.settings.webhooks;
    hooks.webhook_allow = vec!["127.0.0.1/32".into()];
    hooks.webhook_backoff_ms = 200;
    hooks.webhook_backoff_max_ms = 2_000;
    hooks.webhook_max_attempts = 5;
    hooks.webhook_timeout_ms = 2_000;
    world
}

fn roles() -> Vec<Role> {
    let mut roles = ALL_ROLES.to_vec();
    roles.push(Role::Webhooks);
    roles
}

struct User {
    id: String,
    token: String,
}

async fn user(client: &Client, name: &str) -> User {
    let (id, token, _) = client.user(name).await;
    User { id, token }
}

/// Registers an endpoint; returns `(id, secret)`.
async fn register(client: &Client, who: &User, url: &str, events: &[&str]) -> (String, String) {
    let reply = client
        .send(
            client
                .post("/api/webhooks")
                .bearer_auth(&who.token)
                .json(&json!({"url": url, "events": events})),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    (
        reply.body["id"].as_str().unwrap().to_owned(),
        reply.body["secret"].as_str().unwrap().to_owned(),
    )
}

async fn post(client: &Client, who: &User, text: &str) -> String {
    let reply = client
        .send(
            client
                .post("/api/posts")
                .bearer_auth(&who.token)
                .json(&json!({"text": text, "visibility": "public"})),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body["post"]["id"].as_str().unwrap().to_owned()
}

async fn comment(client: &Client, who: &User, post: &str, text: &str) {
    let reply = client
        .send(
            client
                .post(&format!("/api/posts/{post}/comments"))
                .bearer_auth(&who.token)
                .json(&json!({"text": text})),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
}

async fn deliveries(client: &Client, who: &User, endpoint: &str) -> Vec<Value> {
    let reply = client
        .send(
            client
                .get(&format!("/api/webhooks/{endpoint}/deliveries?limit=100"))
                .bearer_auth(&who.token),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_is_signed_and_only_what_concerns_its_owner_is_sent() {
    let world = world().await;
    let running = world.start(&roles()).await;
    let client = Client::new(&running.base);
    let receiver = Receiver::start(&[]);
    let (alice, bob) = (user(&client, "alice").await, user(&client, "bob").await);
    let (endpoint, secret) = register(&client, &alice, &receiver.url(), &["post.created"]).await;
    assert!(secret.starts_with("whsec_"), "{secret}");

    let theirs = post(&client, &bob, "bob's, not for alice's webhook").await;
    let mine = post(&client, &alice, "alice's").await;
    eventually(
        Duration::from_secs(20),
        "alice's post delivered",
        || async { !receiver.requests().is_empty() },
    )
    .await;
    // Bob's post was decided first; give it every chance to arrive too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let request = &requests[0];
    let body: Value = serde_json::from_str(request["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["type"], "post.created");
    assert_eq!(body["aggregate"]["id"], mine.as_str());
    assert_ne!(body["aggregate"]["id"], theirs.as_str());
    assert_eq!(body["actor"], alice.id.as_str());
    let headers = &request["headers"];
    assert_eq!(headers["x-tidings-event-id"], body["event_id"]);
    assert_eq!(headers["webhook-id"], body["event_id"]);
    assert_eq!(headers["x-tidings-event-type"], "post.created");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(verify(&secret, &requests), "verified 1");

    // A wrong secret does not verify.
    let mut wrong = Command::new(PYTHON)
        .args([RECEIVER, "verify", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(wrong.stdin.take().unwrap(), "{request}").unwrap();
    assert!(!wrong.wait().unwrap().success());

    // The endpoint is listed without its secret; its log has the delivery.
    let listed = client
        .send(client.get("/api/webhooks").bearer_auth(&alice.token))
        .await;
    assert_eq!(listed.status, 200);
    let items = listed.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], endpoint.as_str());
    assert_eq!(items[0]["status"], "active");
    assert!(!listed.body.to_string().contains(&secret));
    eventually(Duration::from_secs(5), "the delivery logged", || async {
        let log = deliveries(&client, &alice, &endpoint).await;
        log.len() == 1 && log[0]["status"] == "delivered"
    })
    .await;
    let log = deliveries(&client, &alice, &endpoint).await;
    assert_eq!(log[0]["attempts"], 1);
    assert_eq!(log[0]["last_status"], 204);
    assert_eq!(log[0]["event_type"], "post.created");

    // Bob sees nothing of alice's endpoint, and cannot delete it.
    let path = format!("/api/webhooks/{endpoint}/deliveries");
    let theirs = client.send(client.get(&path).bearer_auth(&bob.token)).await;
    assert_eq!(theirs.status, 404, "{}", theirs.body);
    let listed = client
        .send(client.get("/api/webhooks").bearer_auth(&bob.token))
        .await;
    assert_eq!(listed.body["items"], json!([]));
    let path = format!("/api/webhooks/{endpoint}");
    let refused = client
        .send(client.delete(&path).bearer_auth(&bob.token))
        .await;
    assert_eq!(refused.status, 404, "{}", refused.body);
    let unauthenticated = client.send(client.get("/api/webhooks")).await;
    assert_eq!(unauthenticated.status, 401);

    // Deleted, it receives nothing more.
    let deleted = client
        .send(client.delete(&path).bearer_auth(&alice.token))
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    post(&client, &alice, "after the delete").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.requests().len(), 1);
    running.stop().await;
    world.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_three_times_gets_the_event_on_the_fourth_attempt() {
    let world = world().await;
    let running = world.start(&roles()).await;
    let client = Client::new(&running.base);
    let receiver = Receiver::start(&["--fail-first", "3"]);
    let alice = user(&client, "alice").await;
    let (endpoint, secret) = register(&client, &alice, &receiver.url(), &["post.created"]).await;
    post(&client, &alice, "fourth time lucky").await;
    eventually(Duration::from_secs(30), "the fourth attempt", || async {
        receiver.requests().len() >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let requests = receiver.requests();
    assert_eq!(requests.len(), 4, "no attempt after the one answered 204");
    let answered: Vec<u64> = requests
        .iter()
        .map(|r| r["answered"].as_u64().unwrap())
        .collect();
    assert_eq!(answered, [500, 500, 500, 204]);
    let ids: HashSet<&str> = requests
        .iter()
        .map(|r| r["headers"]["webhook-id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "every attempt carries the event's id");
    // Backoff: base 200 ms doubling, jitter in [0.5, 1): pauses of at least
    // 100, 200 and 400 ms, and growing overall.
    let at: Vec<f64> = requests.iter().map(|r| r["at"].as_f64().unwrap()).collect();
    let pauses: Vec<f64> = at.windows(2).map(|w| w[1] - w[0]).collect();
    for (pause, least) in pauses.iter().zip([0.1, 0.2, 0.4]) {
        assert!(*pause >= least, "pauses {pauses:?}");
    }
    assert!(pauses[2] > pauses[0], "pauses {pauses:?}");
    assert_eq!(verify(&secret, &requests), "verified 4");
    eventually(Duration::from_secs(5), "the log says delivered", || async {
        let log = deliveries(&client, &alice, &endpoint).await;
        log.len() == 1 && log[0]["status"] == "delivered" && log[0]["attempts"] == 4
    })
    .await;
    running.stop().await;
    world.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_30_seconds_gets_everything_afterwards_in_order() {
    let mut world = world().await;
    // Attempts enough for 30 s of pauses of at most 2 s.
    world.settings.webhooks.webhook_max_attempts = 100;
    let running = world.start(&roles()).await;
    let client = Client::new(&running.base);
    let receiver = Receiver::start(&[]);
    let port = receiver.port;
    let alice = user(&client, "alice").await;
    let url = receiver.url();
    let (endpoint, _) = register(&client, &alice, &url, &["post.commented"]).await;
    let requests = receiver.stop();

    // Two posts, ten comments each, while nothing listens.
    let posts = [
        post(&client, &alice, "first").await,
        post(&client, &alice, "second").await,
    ];
    for n in 0..10 {
        for p in &posts {
            comment(&client, &alice, p, &format!("comment {n}")).await;
        }
    }
    eventually(Duration::from_secs(20), "20 deliveries queued", || async {
        deliveries(&client, &alice, &endpoint).await.len() == 20
    })
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(requests.lock().unwrap().is_empty());
    let receiver = Receiver::start_on(port, &[], requests);
    eventually(
        Duration::from_secs(30),
        "every comment delivered",
        || async { receiver.delivered_ids().len() == 20 },
    )
    .await;
    // Per post, the comments arrived in the order they were made.
    let mut by_post: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for request in receiver.requests() {
        let body: Value = serde_json::from_str(request["body"].as_str().unwrap()).unwrap();
        by_post
            .entry(body["aggregate"]["id"].as_str().unwrap().to_owned())
            .or_default()
            .push(body["sequence"].as_u64().unwrap());
    }
    assert_eq!(by_post.len(), 2);
    for (post, sequences) in &by_post {
        let mut sorted = sequences.clone();
        sorted.sort_unstable();
        assert_eq!(sequences, &sorted, "the comments of {post} out of order");
    }
    let log = deliveries(&client, &alice, &endpoint).await;
    assert!(log.iter().all(|d| d["status"] == "delivered"), "{log:#?}");
    assert!(
        log.iter().any(|d| d["attempts"].as_i64().unwrap() > 1),
        "some delivery was tried while the receiver was down"
    );
    running.stop().await;
    world.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_dead_lettered_disabled_and_does_not_delay_a_healthy_one() {
    let mut world = world().await;
    world.settings.webhooks.webhook_max_attempts = 3;
    // Long enough for the ten to be dead-lettered first (a disabled
    // endpoint's deliveries wait).
    world.settings.webhooks.webhook_disable_after_secs = 8;
    let running = world.start(&roles()).await;
    let client = Client::new(&running.base);
    let failing = Receiver::start(&["--status", "500", "--delay-ms", "300"]);
    let healthy = Receiver::start(&[]);
    let alice = user(&client, "alice").await;
    let (bad, _) = register(&client, &alice, &failing.url(), &["post.created"]).await;
    let (good, _) = register(&client, &alice, &healthy.url(), &["post.created"]).await;
    let started = std::time::Instant::now();
    for n in 0..10 {
        post(&client, &alice, &format!("post {n}")).await;
    }
    eventually(
        Duration::from_secs(10),
        "the healthy endpoint has all 10",
        || async { healthy.delivered_ids().len() == 10 },
    )
    .await;
    let healthy_took = started.elapsed();
    eventually(
        Duration::from_secs(30),
        "the failing one's dead-lettered",
        || async {
            let log = deliveries(&client, &alice, &bad).await;
            log.len() == 10 && log.iter().all(|d| d["status"] == "dead")
        },
    )
    .await;
    let failing_took = started.elapsed();
    let log = deliveries(&client, &alice, &bad).await;
    assert!(log
        .iter()
        .all(|d| d["attempts"] == 3 && d["last_status"] == 500));
    assert!(
        healthy_took < failing_took,
        "the healthy endpoint ({healthy_took:?}) waited for the failing one ({failing_took:?})"
    );
    assert_eq!(failing.requests().len(), 30, "3 attempts at each of 10");
    let good_log = deliveries(&client, &alice, &good).await;
    assert!(good_log.iter().all(|d| d["attempts"] == 1));

    // Failing for more than 8 s, its next failure disables it, and alice is
    // told by mail.
    let listed = client
        .send(client.get("/api/webhooks").bearer_auth(&alice.token))
        .await;
    assert!(listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["status"] == "active"));
    // Its failing streak began with the first answer to its first request.
    let first = failing.requests()[0]["at"].as_f64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64((first + 9.0 - now).max(0.0))).await;
    post(&client, &alice, "one more").await;
    eventually(Duration::from_secs(20), "the endpoint disabled", || async {
        let listed = client
            .send(client.get("/api/webhooks").bearer_auth(&alice.token))
            .await;
        listed.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == bad.as_str() && e["status"] == "disabled")
    })
    .await;
    let db = world.db().await;
    let mailed: Vec<(String, String)> =
        sqlx::query_as("SELECT to_address, body FROM mail_outbox WHERE subject LIKE '%webhook%'")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(mailed.len(), 1, "{mailed:?}");
    assert_eq!(mailed[0].0, "alice@example.com");
    assert!(mailed[0].1.contains(&bad), "{}", mailed[0].1);
    db.close().await;
    eventually(
        Duration::from_secs(10),
        "the healthy one has the 11th",
        || async { healthy.delivered_ids().len() == 11 },
    )
    .await;

    // A dead delivery retried by hand is pending again, its attempts
    // counted afresh (it waits: its endpoint is disabled); an unknown
    // delivery is 404.
    let dead = log[0]["id"].as_str().unwrap();
    let retried = client
        .send(
            client
                .post(&format!("/api/webhooks/{bad}/deliveries/{dead}/retry"))
                .bearer_auth(&alice.token),
        )
        .await;
    assert_eq!(retried.status, 202, "{}", retried.body);
    assert_eq!(retried.body["status"], "pending");
    assert_eq!(retried.body["attempts"], 0);
    let unknown = client
        .send(
            client
                .post(&format!(
                    "/api/webhooks/{bad}/deliveries/{}/retry",
                    uuid::Uuid::new_v4()
                ))
                .bearer_auth(&alice.token),
        )
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    running.stop().await;
    world.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_retry_delivers_a_dead_letter_once_the_receiver_answers() {
    let mut world = world().await;
    world.settings.webhooks.webhook_max_attempts = 2;
    let running = world.start(&roles()).await;
    let client = Client::new(&running.base);
    let receiver = Receiver::start(&["--status", "503"]);
    let port = receiver.port;
    let alice = user(&client, "alice").await;
    let (endpoint, _) = register(&client, &alice, &receiver.url(), &["post.created"]).await;
    post(&client, &alice, "retry me").await;
    eventually(Duration::from_secs(20), "dead-lettered", || async {
        let log = deliveries(&client, &alice, &endpoint).await;
        log.len() == 1 && log[0]["status"] == "dead"
    })
    .await;
    let requests = receiver.stop();
    let receiver = Receiver::start_on(port, &[], requests);
    let log = deliveries(&client, &alice, &endpoint).await;
    let id = log[0]["id"].as_str().unwrap();
    let retried = client
        .send(
            client
                .post(&format!("/api/webhooks/{endpoint}/deliveries/{id}/retry"))
                .bearer_auth(&alice.token),
        )
        .await;
    assert_eq!(retried.status, 202, "{}", retried.body);
    eventually(
        Duration::from_secs(20),
        "delivered after the retry",
        || async {
            let log = deliveries(&client, &alice, &endpoint).await;
            log[0]["status"] == "delivered"
        },
    )
    .await;
    assert_eq!(receiver.delivered_ids().len(), 1);
    running.stop().await;
    world.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_that_reach_inside_the_network_and_bad_registrations_are_refused() {
    // No allowlist: as in production.
    let world = World::new().await;
    let running = world.start(&ALL_ROLES).await;
    let client = Client::new(&running.base);
    let alice = user(&client, "alice").await;
    let attempt = |body: Value| {
        let request = client
            .post("/api/webhooks")
            .bearer_auth(&alice.token)
            .json(&body);
        client.send(request)
    };
    for url in [
        "http://127.0.0.1:9/hook",
        "https://127.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://localhost/hook",
        "https://[::1]/hook",
        "https://[::ffff:10.0.0.1]/hook",
        "https://10.1.2.3/hook",
        "https://192.168.0.1/hook",
        "https://0.0.0.0/hook",
        "ftp://files.example/hook",
        "not a url",
        "https://user:password@203.0.113.9/hook",
    ] {
        let reply = attempt(json!({"url": url, "events": ["post.created"]})).await;
        assert_eq!(reply.status, 422, "{url}: {}", reply.body);
        assert_eq!(reply.body["code"], "webhook_url_refused", "{url}");
    }
    let reply = attempt(json!({"url": "https://hooks.example/in", "events": ["no.such"]})).await;
    assert_eq!(reply.status, 422);
    assert_eq!(reply.body["code"], "validation_failed");
    let reply = attempt(json!({"url": "https://hooks.example/in", "events": []})).await;
    assert_eq!(reply.body["code"], "validation_failed");
    let reply = attempt(
        json!({"url": "https://hooks.example/in", "events": ["post.created"], "scope": "all"}),
    )
    .await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    for body in [
        json!({"events": ["post.created"]}),
        json!({"url": 7, "events": "post.created"}),
        json!({"url": "https://hooks.example/in", "events": ["post.created"], "extra": 1}),
    ] {
        let reply = attempt(body).await;
        assert_eq!(reply.status, 422, "{}", reply.body);
        assert_eq!(reply.body["code"], "validation_failed");
    }
    let reply = client
        .send(
            client
                .post("/api/webhooks")
                .bearer_auth(&alice.token)
                .header("Content-Type", "application/json")
                .body("{not json"),
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let listed = client
        .send(client.get("/api/webhooks").bearer_auth(&alice.token))
        .await;
    assert_eq!(listed.body["items"], json!([]), "nothing was registered");
    running.stop().await;

    // Allowlisted 127.0.0.1 lets that address through, and no other.
    let mut settings = world.settings.clone();
    settings.webhooks.webhook_allow = vec!["127.0.0.1/32".into()];
    let running = world.start_with(settings, &ALL_ROLES).await;
    let client = Client::new(&running.base);
    let register_url = |url: &'static str| {
        let request = client
            .post("/api/webhooks")
            .bearer_auth(&alice.token)
            .json(&json!({"url": url, "events": ["post.created"]}));
        client.send(request)
    };
    assert_eq!(register_url("http://127.0.0.1:9/hook").await.status, 201);
    let reply = register_url("http://127.0.0.2:9/hook").await;
    assert_eq!(reply.body["code"], "webhook_url_refused");
    let reply = register_url("https://169.254.169.254/").await;
    assert_eq!(reply.body["code"], "webhook_url_refused");
    running.stop().await;
    world.clean_up().await;
}

async fn send(client: &Client, who: &User, path: &str, body: Value) -> crate::support::Reply {
    client
        .send(client.post(path).bearer_auth(&who.token).json(&body))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_receives_a_private_rooms_messages_from_when_they_joined_only() {
    let world = world().await;
    let running = world.start(&roles()).await;
    let client = Client::new(&running.base);
    let receiver = Receiver::start(&[]);
    let (alice, bob) = (user(&client, "alice").await, user(&client, "bob").await);
    register(&client, &alice, &receiver.url(), &["room.message_posted"]).await;
    let created = send(
        &client,
        &bob,
        "/api/rooms",
        json!({"name": "priv", "is_private": true}),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let room = created.body["room"]["id"].as_str().unwrap().to_owned();
    let invited = send(
        &client,
        &bob,
        &format!("/api/rooms/{room}/invites"),
        json!({"user_id": alice.id}),
    )
    .await;
    assert!(invited.status < 300, "{}", invited.body);
    let messages = format!("/api/rooms/{room}/messages");
    let say = |text: &'static str| send(&client, &bob, &messages, json!({"text": text}));
    assert_eq!(say("before alice joined").await.status, 201);
    let joined = send(
        &client,
        &alice,
        &format!("/api/rooms/{room}/join"),
        json!({}),
    )
    .await;
    assert_eq!(joined.status, 200, "{}", joined.body);
    assert_eq!(say("after alice joined").await.status, 201);
    eventually(
        Duration::from_secs(20),
        "the message after the join",
        || async { !receiver.requests().is_empty() },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let texts: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
            body["data"]["text"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(texts, ["after alice joined"]);
    running.stop().await;
    world.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_stay_within_the_cap() {
    let world = world().await;
    let running = world.start(&ALL_ROLES).await;
    let client = Client::new(&running.base);
    let alice = user(&client, "alice").await;
    let attempts = (0..30).map(|n| {
        let request = client
            .post("/api/webhooks")
            .bearer_auth(&alice.token)
            .json(&json!({"url": format!("http://127.0.0.1:9/{n}"), "events": ["post.created"]}));
        client.send(request)
    });
    let replies = futures_util::future::join_all(attempts).await;
    let created = replies.iter().filter(|r| r.status == 201).count();
    let refused = replies
        .iter()
        .filter(|r| r.status == 422 && r.body["code"] == "too_many_webhooks")
        .count();
    assert_eq!((created, refused), (20, 10));
    let listed = client
        .send(client.get("/api/webhooks").bearer_auth(&alice.token))
        .await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 20);
    running.stop().await;
    world.clean_up().await;
}
