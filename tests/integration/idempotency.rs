//! `Idempotency-Key` as API.md's Conventions define it: scoped to the caller,
//! bound to the request, replayed without appending anything, and never a
//! way into somebody else's account.

use std::time::Duration;

use serde_json::{json, Value};
use tidings::Role;

use crate::support::{eventually, Client, Reply, World, ALL_ROLES};

const PASSWORD: &str = "correct horse battery";

fn register(client: &Client, key: &str, body: &Value) -> reqwest::RequestBuilder {
    client
        .post("/api/auth/register")
        .header("Idempotency-Key", key)
        .json(body)
}

fn person(name: &str, password: &str) -> Value {
    json!({"username": name, "email": format!("{name}@example.com"), "password": password})
}

/// What the log holds: (commands, events).
fn log_size(world: &World) -> (usize, usize) {
    let topics = world.settings.kafka().topics();
    (world.count(&topics.commands), world.count(&topics.events))
}

fn replayed(reply: &Reply) -> Option<&str> {
    reply
        .headers
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap())
}

/// The defect: bob, registering with the key alice used, got a token for
/// alice's account.
#[tokio::test]
async fn another_request_with_a_used_key_is_refused_and_gets_no_token() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let alice = client
        .send(register(&client, "K", &person("alice", PASSWORD)))
        .await;
    assert_eq!(alice.status, 201, "{}", alice.body);
    let before = log_size(&world);

    let bob = client
        .send(register(&client, "K", &person("bob", "another password")))
        .await;
    assert_eq!(
        (bob.status, bob.body["code"].as_str()),
        (422, Some("idempotency_key_reused")),
        "{}",
        bob.body
    );
    assert!(bob.body.get("token").is_none(), "{}", bob.body);
    assert_eq!(replayed(&bob), None);
    // The same body with one byte changed is another request too.
    let mut alice_again = person("alice", PASSWORD);
    alice_again["display_name"] = json!("Alice");
    let changed = client.send(register(&client, "K", &alice_again)).await;
    assert_eq!(changed.body["code"], "idempotency_key_reused");
    assert_eq!(log_size(&world), before, "a refused request appended");

    // Bob with a key of his own is just another registration.
    let bob = client
        .send(register(&client, "K2", &person("bob", "another password")))
        .await;
    assert_eq!(bob.status, 201, "{}", bob.body);
    assert_ne!(bob.body["user"]["id"], alice.body["user"]["id"]);
    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn the_same_request_again_gets_the_first_answer_and_appends_nothing() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let carol = person("carol", PASSWORD);
    let first = client.send(register(&client, "k-1", &carol)).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(replayed(&first), None);
    let before = log_size(&world);

    let again = client.send(register(&client, "k-1", &carol)).await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(replayed(&again), Some("true"));
    assert_eq!(again.headers["x-position"], first.headers["x-position"]);
    assert_eq!(
        again.headers["content-type"].to_str().unwrap(),
        "application/json"
    );
    let without_token = |body: &Value| {
        let mut body = body.clone();
        body.as_object_mut().unwrap().remove("token");
        body
    };
    assert_eq!(without_token(&again.body), without_token(&first.body));

    // The token of the replay is a fresh one, and it works.
    let token = again.body["token"].as_str().unwrap();
    let position = again.body["position"].as_str().unwrap();
    let profile = client.own_profile(token, position).await;
    assert_eq!(profile.status, 200, "{}", profile.body);
    assert_eq!(profile.body["id"], first.body["user"]["id"]);

    // A sign-in replays too, with a fresh token and no password check.
    let login = |password: &str| {
        client
            .post("/api/auth/login")
            .header("Idempotency-Key", "l-1")
            .json(&json!({"login": "carol", "password": password}))
    };
    let signed_in = client.send(login(PASSWORD)).await;
    assert_eq!(signed_in.status, 200, "{}", signed_in.body);
    let signed_in_again = client.send(login(PASSWORD)).await;
    assert_eq!(
        (signed_in_again.status, replayed(&signed_in_again)),
        (200, Some("true"))
    );
    let token = signed_in_again.body["token"].as_str().unwrap();
    let profile = client
        .send(client.get("/api/profile").bearer_auth(token))
        .await;
    assert_eq!(profile.body["id"], first.body["user"]["id"]);
    // The stored answers hold no token: nothing in them signs anyone in.
    let db = world.db().await;
    let bodies: Vec<Vec<u8>> = sqlx::query_scalar("SELECT body FROM idempotency_keys")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(bodies.len(), 2);
    for body in bodies {
        let body = String::from_utf8(body).unwrap();
        assert!(!body.contains("token") && !body.contains("eyJ"), "{body}");
    }
    // Another password with the same key is another request.
    let guessed = client.send(login("a guessed password")).await;
    assert_eq!(guessed.body["code"], "idempotency_key_reused");

    assert_eq!(log_size(&world), before, "a replay appended");
    app.stop().await;
    world.clean_up().await;
}

/// While the first request with a key is being answered, a second one gets
/// 409 at once instead of running beside it. The first is held in flight
/// deterministically: no decider runs until the second has been answered.
#[tokio::test]
async fn a_key_in_flight_answers_409_and_then_the_first_answer() {
    let world = World::new().await;
    let front = world.start(&[Role::Api, Role::Projector]).await;
    let client = Client::new(&front.base);
    let dora = person("dora", PASSWORD);
    let first = tokio::spawn({
        let (client, dora) = (client.clone(), dora.clone());
        async move { client.send(register(&client, "k-dora", &dora)).await }
    });
    let commands = world.settings.kafka().topics().commands;
    eventually(
        Duration::from_secs(30),
        "the first request sends its first command",
        || async { world.count(&commands) > 0 },
    )
    .await;

    let second = client.send(register(&client, "k-dora", &dora)).await;
    assert_eq!(
        (second.status, second.body["code"].as_str()),
        (409, Some("idempotency_key_in_flight")),
        "{}",
        second.body
    );
    assert!(second.headers.contains_key("retry-after"));
    let other = client
        .send(register(&client, "k-dora", &person("dora", "not the same")))
        .await;
    assert_eq!(
        other.body["code"], "idempotency_key_reused",
        "{}",
        other.body
    );

    let deciders = world.start(&[Role::Deciders]).await;
    let first = first.await.unwrap();
    assert_eq!(first.status, 201, "{}", first.body);
    let third = client.send(register(&client, "k-dora", &dora)).await;
    assert_eq!((third.status, replayed(&third)), (201, Some("true")));
    assert_eq!(third.body["user"], first.body["user"]);
    let registered = world
        .events()
        .iter()
        .filter(|(_, _, e)| e.event_type == "account.registered")
        .count();
    assert_eq!(registered, 1);
    deciders.stop().await;
    front.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn a_key_belongs_to_its_user() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (alice, alice_token, _) = client.user("alice").await;
    let (bob, bob_token, _) = client.user("bob").await;
    let patch = |token: &str, bio: &str| {
        client
            .patch("/api/profile")
            .bearer_auth(token)
            .header("Idempotency-Key", "p-1")
            .json(&json!({"bio": bio}))
    };
    let first = client.send(patch(&alice_token, "alice's")).await;
    assert_eq!(first.status, 200, "{}", first.body);
    // Bob's p-1 is his own, whatever alice did with hers.
    let bobs = client.send(patch(&bob_token, "bob's")).await;
    assert_eq!((bobs.status, replayed(&bobs)), (200, None), "{}", bobs.body);
    assert_eq!(
        (bobs.body["id"].as_str(), bobs.body["bio"].as_str()),
        (Some(bob.as_str()), Some("bob's"))
    );

    let again = client.send(patch(&alice_token, "alice's")).await;
    assert_eq!((again.status, replayed(&again)), (200, Some("true")));
    assert_eq!(again.body, first.body);
    assert_eq!(again.body["id"], alice.as_str());
    let other = client.send(patch(&alice_token, "changed my mind")).await;
    assert_eq!(
        (other.status, other.body["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    let updates = world
        .events()
        .iter()
        .filter(|(_, _, e)| e.event_type == "account.profile_updated")
        .count();
    assert_eq!(updates, 2, "one update each for alice and bob");
    app.stop().await;
    world.clean_up().await;
}

/// A process that dies while answering leaves its key claimed. Once the
/// claim's lease has run out, a retry takes it over; it sends the very
/// commands the dead attempt sent, so nothing is registered twice.
#[tokio::test]
async fn a_dead_attempts_key_is_taken_over_once_its_lease_ran_out() {
    let world = World::new().await;
    // An API without deciders: its request stays in flight until it dies.
    let dying = world.spawn("api", &[]);
    let dying_client = Client::new(&dying.base_url());
    let erin = person("erin", PASSWORD);
    let request = tokio::spawn({
        let (client, erin) = (dying_client.clone(), erin.clone());
        async move {
            let _ = register(&client, "k-erin", &erin).send().await;
        }
    });
    let commands = world.settings.kafka().topics().commands;
    eventually(
        Duration::from_secs(30),
        "the dying attempt sends its first command",
        || async { world.count(&commands) > 0 },
    )
    .await;
    dying.kill();
    request.abort();

    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let held = client.send(register(&client, "k-erin", &erin)).await;
    assert_eq!(
        held.body["code"], "idempotency_key_in_flight",
        "{}",
        held.body
    );
    // The lease is 30 s; rather than wait it out, let it run out.
    let db = world.db().await;
    let aged = sqlx::query(
        "UPDATE idempotency_keys SET locked_until = now() - interval '1 second' WHERE status IS NULL",
    )
    .execute(&db)
    .await
    .unwrap();
    assert_eq!(aged.rows_affected(), 1);

    let taken_over = client.send(register(&client, "k-erin", &erin)).await;
    assert_eq!(
        (taken_over.status, replayed(&taken_over)),
        (201, None),
        "{}",
        taken_over.body
    );
    let again = client.send(register(&client, "k-erin", &erin)).await;
    assert_eq!((again.status, replayed(&again)), (201, Some("true")));
    assert_eq!(again.body["user"], taken_over.body["user"]);
    // The dead attempt's command was decided too (it was in the log), as
    // the same command: one account, one claim of each value.
    let types: Vec<String> = world
        .events()
        .into_iter()
        .map(|(_, _, e)| e.event_type)
        .collect();
    let count = |t: &str| types.iter().filter(|x| *x == t).count();
    assert_eq!(
        (count("account.registered"), count("claim.claimed")),
        (1, 2),
        "{types:?}"
    );
    app.stop().await;
    world.clean_up().await;
}

/// An answer that says "not now" (here 503: no decider answered in time) is
/// not kept: the retry runs again, as the same command, and the answer it
/// gets then is kept.
#[tokio::test]
async fn an_answer_that_is_not_final_is_not_kept() {
    let world = World::new().await;
    let mut settings = world.settings.clone();
    settings.command_timeout_ms = 2_000;
    let front = world
        .start_with(settings, &[Role::Api, Role::Projector])
        .await;
    let client = Client::new(&front.base);
    let deciders = world.start(&[Role::Deciders]).await;
    let (_, token, _) = client.user("fay").await;
    deciders.stop().await;

    let patch = || {
        client
            .patch("/api/profile")
            .bearer_auth(&token)
            .header("Idempotency-Key", "p-fay")
            .json(&json!({"bio": "hi"}))
    };
    let timed_out = client.send(patch()).await;
    assert_eq!(
        (timed_out.status, timed_out.body["code"].as_str()),
        (503, Some("command_timeout")),
        "{}",
        timed_out.body
    );
    let _deciders = world.start(&[Role::Deciders]).await;
    let mut retried = client.send(patch()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while retried.status == 503 && tokio::time::Instant::now() < deadline {
        retried = client.send(patch()).await;
    }
    assert_eq!(
        (retried.status, replayed(&retried)),
        (200, None),
        "{}",
        retried.body
    );
    let again = client.send(patch()).await;
    assert_eq!((again.status, replayed(&again)), (200, Some("true")));
    let updates = world
        .events()
        .iter()
        .filter(|(_, _, e)| e.event_type == "account.profile_updated")
        .count();
    assert_eq!(
        updates, 1,
        "the timed-out attempt and its retry are one command"
    );
    front.stop().await;
    world.clean_up().await;
}

/// After 24 hours a key is free again: another request with it is a new
/// request — with command ids of its own, never the first request's account
/// — and expired keys are pruned.
#[tokio::test]
async fn an_expired_key_is_a_new_key_and_is_pruned() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let db = world.db().await;
    let expire = || async {
        sqlx::query("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
            .execute(&db)
            .await
            .unwrap()
            .rows_affected()
    };
    let alice = client
        .send(register(&client, "K", &person("alice", PASSWORD)))
        .await;
    assert_eq!(alice.status, 201, "{}", alice.body);
    // A day later, rather than waiting one.
    assert_eq!(expire().await, 1);

    let bob = client
        .send(register(&client, "K", &person("bob", "another password")))
        .await;
    assert_eq!((bob.status, replayed(&bob)), (201, None), "{}", bob.body);
    assert_ne!(bob.body["user"]["id"], alice.body["user"]["id"]);
    assert_eq!(bob.body["user"]["username"], "bob");

    // The pruner runs when the API starts, then every few minutes.
    assert_eq!(expire().await, 1);
    app.stop().await;
    let app = world.start(&ALL_ROLES).await;
    eventually(
        Duration::from_secs(30),
        "expired keys are pruned",
        || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM idempotency_keys")
                .fetch_one(&db)
                .await
                .unwrap()
                == 0
        },
    )
    .await;
    app.stop().await;
    world.clean_up().await;
}
