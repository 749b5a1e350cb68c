use serde_json::json;

use crate::support::{Client, World, ALL_ROLES};

#[tokio::test]
async fn an_account_is_registered_read_updated_and_logged_into() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);

    let reply = client.register("alice", "Alice@Example.com").await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let id = reply.body["user"]["id"].as_str().unwrap().to_owned();
    let token = reply.body["token"].as_str().unwrap().to_owned();
    let position = reply.body["position"].as_str().unwrap().to_owned();
    assert_eq!(reply.headers["x-position"].to_str().unwrap(), position);
    assert_eq!(reply.body["user"]["email"], "alice@example.com");

    // Read-your-writes: the profile is there as soon as the position is.
    let profile = client.own_profile(&token, &position).await;
    assert_eq!(profile.status, 200, "{}", profile.body);
    assert_eq!(profile.body["username"], "alice");
    assert_eq!(profile.body["display_name"], "alice");
    assert_eq!(profile.body["posts_count"], 0);

    let updated = client
        .send(
            client
                .patch("/api/profile")
                .bearer_auth(&token)
                .json(&json!({"display_name": "Alice A", "bio": "hello", "avatar_url": "https://img.example/a.png"})),
        )
        .await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_eq!(updated.body["display_name"], "Alice A");
    assert_eq!(updated.body["bio"], "hello");
    assert!(updated.body["position"].is_string());

    let cleared = client
        .send(
            client
                .patch("/api/profile")
                .bearer_auth(&token)
                .json(&json!({"bio": null})),
        )
        .await;
    assert_eq!(cleared.body["bio"], json!(null));
    assert_eq!(cleared.body["display_name"], "Alice A");

    let public = client.send(client.get(&format!("/api/users/{id}"))).await;
    assert_eq!(public.status, 200);
    assert_eq!(public.body["display_name"], "Alice A");
    assert!(
        public.body.get("email").is_none(),
        "a public profile shows no email"
    );

    for login in ["alice", "ALICE@example.com"] {
        let reply = client
            .send(
                client
                    .post("/api/auth/login")
                    .json(&json!({"login": login, "password": "correct horse battery"})),
            )
            .await;
        assert_eq!(reply.status, 200, "{login}: {}", reply.body);
        let again = client
            .send(
                client
                    .get("/api/profile")
                    .bearer_auth(reply.body["token"].as_str().unwrap()),
            )
            .await;
        assert_eq!(again.body["id"], id.as_str());
    }
    let wrong = client
        .send(
            client
                .post("/api/auth/login")
                .json(&json!({"login": "alice", "password": "wrong horse"})),
        )
        .await;
    assert_eq!(
        (wrong.status, wrong.body["code"].as_str()),
        (401, Some("invalid_credentials"))
    );
    let nobody = client
        .send(
            client
                .post("/api/auth/login")
                .json(&json!({"login": "nobody", "password": "wrong horse"})),
        )
        .await;
    assert_eq!(
        (nobody.status, nobody.body["code"].as_str()),
        (401, Some("invalid_credentials"))
    );

    // No password hash is in the log, nor in any command: it is kept in the
    // private store alone.
    let topics = world.settings.kafka().topics();
    for topic in [&topics.events, &topics.commands] {
        let text = world.payloads(topic).join("\n");
        assert!(!text.is_empty());
        assert!(
            !text.contains("argon2") && !text.contains("password"),
            "a password hash in {topic}"
        );
    }

    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn bad_input_gets_a_problem_and_appends_nothing() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let register = || client.post("/api/auth/register");
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (register().header("content-type", "application/json").body("{\"username\":"), 400, "malformed_json"),
        (register().json(&json!({"username": 5, "email": "a@b.io", "password": "long enough"})), 422, "validation_failed"),
        (register().json(&json!({"username": "bob"})), 422, "validation_failed"),
        (register().json(&json!({"username": "b", "email": "nope", "password": "short"})), 422, "validation_failed"),
        (register().json(&json!({"username": "bob", "email": "b@b.io", "password": "long enough", "admin": true})), 422, "validation_failed"),
        (register().header("content-type", "text/plain").body("hi"), 415, "unsupported_media_type"),
        (register().json(&json!({"username": "x".repeat(70_000)})), 413, "payload_too_large"),
        (register().header("Idempotency-Key", "").json(&json!({"username": "bob", "email": "b@b.io", "password": "long enough"})), 400, "invalid_idempotency_key"),
        (client.get("/api/profile"), 401, "unauthenticated"),
        (client.get("/api/profile").bearer_auth("not.a.token"), 401, "invalid_token"),
        (client.patch("/api/profile").bearer_auth("not.a.token").json(&json!({"bio": "x"})), 401, "invalid_token"),
        (client.get("/api/users/not-a-uuid"), 404, "not_found"),
        (client.get("/api/users/00000000-0000-0000-0000-000000000001"), 404, "not_found"),
        (client.get("/api/nothing/here"), 404, "not_found"),
        (client.get("/api/users/00000000-0000-0000-0000-000000000001").header("X-Min-Position", "%%%"), 400, "invalid_position"),
        // Without credentials a secured route says so first.
        (client.get("/api/profile").header("X-Min-Position", "%%%"), 401, "unauthenticated"),
    ];
    for (request, status, code) in cases {
        let reply = client.send(request).await;
        assert_eq!(reply.status, status, "{code}: {}", reply.body);
        assert_eq!(reply.body["code"], code, "{}", reply.body);
        assert_eq!(
            reply.headers["content-type"].to_str().unwrap(),
            "application/problem+json"
        );
    }
    // The field errors name the fields.
    let reply = client
        .send(register().json(&json!({"username": "b", "email": "nope", "password": "short"})))
        .await;
    let fields: Vec<&str> = reply.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["username", "email", "password"]);

    // An expired token is told apart from a bad one.
    let expired = tidings_api::auth::Jwt::new("test secret", std::time::Duration::ZERO)
        .issue(uuid::Uuid::new_v4(), 0);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let reply = client
        .send(client.get("/api/profile").bearer_auth(expired))
        .await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (401, Some("token_expired"))
    );

    let topics = world.settings.kafka().topics();
    assert_eq!(
        world.count(&topics.commands),
        0,
        "a rejected request appended a command"
    );
    assert_eq!(
        world.count(&topics.events),
        0,
        "a rejected request appended an event"
    );
    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_gets_the_first_answer() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let body = json!({"username": "carol", "email": "carol@example.com", "password": "correct horse battery"});
    let first = client
        .send(
            client
                .post("/api/auth/register")
                .header("Idempotency-Key", "k-1")
                .json(&body),
        )
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    let again = client
        .send(
            client
                .post("/api/auth/register")
                .header("Idempotency-Key", "k-1")
                .json(&body),
        )
        .await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body["user"]["id"], first.body["user"]["id"]);
    assert_eq!(again.body["position"], first.body["position"]);
    // Without the key it is a second registration, and the email is taken.
    let other = client
        .send(client.post("/api/auth/register").json(&body))
        .await;
    assert_eq!(
        (other.status, other.body["code"].as_str()),
        (409, Some("email_taken"))
    );

    let token = first.body["token"].as_str().unwrap();
    let patch = || {
        client
            .patch("/api/profile")
            .bearer_auth(token)
            .header("Idempotency-Key", "p-1")
            .json(&json!({"bio": "once"}))
    };
    let (a, b) = (client.send(patch()).await, client.send(patch()).await);
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(b.headers["idempotent-replayed"], "true");
    assert_eq!(a.body["position"], b.body["position"]);

    let types: Vec<String> = world
        .events()
        .into_iter()
        .map(|(_, _, e)| e.event_type)
        .collect();
    let count = |t: &str| types.iter().filter(|x| *x == t).count();
    assert_eq!(count("account.registered"), 1, "{types:?}");
    assert_eq!(count("claim.claimed"), 2, "{types:?}");
    assert_eq!(count("account.profile_updated"), 1, "{types:?}");
    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn a_taken_username_gives_back_the_email_it_claimed() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    assert_eq!(
        client.register("dave", "dave@example.com").await.status,
        201
    );

    let taken = client.register("DAVE", "fresh@example.com").await;
    assert_eq!(
        (taken.status, taken.body["code"].as_str()),
        (409, Some("username_taken")),
        "{}",
        taken.body
    );
    let email = client.register("dave2", "DAVE@example.com").await;
    assert_eq!(
        (email.status, email.body["code"].as_str()),
        (409, Some("email_taken"))
    );

    // The lost registration released fresh@example.com: it is free again.
    let reply = client.register("erin", "fresh@example.com").await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert!(world
        .events()
        .iter()
        .any(|(_, _, e)| e.event_type == "claim.released"));
    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn with_redis_down_reads_still_answer() {
    let world = World::new().await;
    let mut settings = world.settings.clone();
    // Nothing listens on port 1: every Redis call fails fast.
    settings.redis_url = "redis://127.0.0.1:1".into();
    let app = world.start_with(settings, &ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (id, token, position) = client.user("frank").await;
    let reply = client.own_profile(&token, &position).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let public = client.send(client.get(&format!("/api/users/{id}"))).await;
    assert_eq!(public.status, 200);
    let ready = client.send(client.get("/ready")).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["redis"], "down");
    app.stop().await;
    world.clean_up().await;
}

/// A registration that died after claiming (its API process crashed, the
/// client never retried) leaves a pending account; the sweeper abandons it and
/// frees its email and username. One that was activated keeps them.
#[tokio::test]
async fn an_unfinished_registration_is_swept_and_a_finished_one_kept() {
    use tidings_commands::registration::Saga;
    use tidings_commands::{CommandBus, Outcome};
    use tidings_domain::{account, claim};

    let world = World::new().await;
    let mut settings = world.settings.clone();
    // Long enough for the steps below to finish before the sweeper looks:
    // the test's own command bus crosses the topics, a fetch wait each way.
    settings.registration_timeout_secs = 12;
    let app = world.start_with(settings, &ALL_ROLES).await;
    let client = Client::new(&app.base);
    let bus = CommandBus::connect(
        &world.settings.kafka(),
        std::time::Duration::from_secs(15),
        Default::default(),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    let saga = |name: &str| Saga {
        user_id: uuid::Uuid::new_v4(),
        email: format!("{name}@example.com"),
        username: name.to_owned(),
        correlation_id: uuid::Uuid::new_v4(),
        issued_at: chrono::Utc::now(),
        idempotency_key: None,
    };
    let accepted =
        |outcome: Outcome| assert!(matches!(outcome, Outcome::Accepted { .. }), "{outcome:?}");
    // What the API does, up to where each registration stops.
    let (dead, live) = (saga("dead"), saga("live"));
    for s in [&dead, &live] {
        let register = account::Register {
            user_id: s.user_id,
            username: s.username.clone(),
            email: s.email.clone(),
            display_name: s.username.clone(),
            at: s.issued_at,
        };
        accepted(bus.send(&s.open(register)).await.unwrap());
        accepted(bus.send(&s.claim(claim::Kind::Email)).await.unwrap());
        accepted(bus.send(&s.claim(claim::Kind::Username)).await.unwrap());
    }
    accepted(bus.send(&live.activate()).await.unwrap());

    // Taken at first; free once the sweeper has abandoned the dead one.
    let reply = client.register("dead", "other@example.com").await;
    assert_eq!(
        reply.body["code"], "username_taken",
        "{} {}",
        reply.status, reply.body
    );
    crate::support::eventually(
        std::time::Duration::from_secs(45),
        "the dead registration's claims are freed",
        || async { client.register("dead", "dead@example.com").await.status == 201 },
    )
    .await;
    // The dead registration can no longer be finished.
    match bus.send(&dead.activate()).await.unwrap() {
        Outcome::Rejected { code, .. } => assert_eq!(code, "registration_expired"),
        other => panic!("a late activation went through: {other:?}"),
    }
    // The live one, older than the timeout too, kept its email.
    let reply = client.register("live2", "live@example.com").await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (409, Some("email_taken"))
    );
    // Every lost registration is abandoned too (by the API's own unwinding);
    // of these two, only the dead one.
    let abandoned = |id: uuid::Uuid| {
        world
            .events()
            .iter()
            .filter(|(_, _, e)| {
                e.event_type == "account.abandoned" && e.aggregate.id == id.to_string()
            })
            .count()
    };
    assert_eq!((abandoned(dead.user_id), abandoned(live.user_id)), (1, 0));
    app.stop().await;
    world.clean_up().await;
}
