//! The answers the OpenAPI document promises, for what no handler does
//! itself: methods a path does not have, missing credentials, bodies of the
//! wrong kind. `scripts/schemathesis` checks the whole document; these tests
//! pin the rules it found broken.

use serde_json::json;

use crate::support::{Client, World, ALL_ROLES};

#[tokio::test]
async fn a_method_a_path_does_not_have_is_405_with_allow() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let spec = client.send(client.get("/openapi.json")).await;
    let id = uuid::Uuid::new_v4();
    for (method, path, allow) in [
        ("DELETE", "/api/profile".to_owned(), "GET, PATCH"),
        ("PUT", "/api/auth/register".to_owned(), "POST"),
        ("POST", format!("/api/users/{id}"), "GET"),
        ("POST", "/health".to_owned(), "GET"),
        (
            "DELETE",
            "/schemas/events/account.registered.v1.json".to_owned(),
            "GET",
        ),
        ("POST", "/ws".to_owned(), "GET"),
    ] {
        let request = client
            .http
            .request(method.parse().unwrap(), format!("{}{path}", app.base));
        let reply = client.send(request).await;
        assert_eq!(reply.status, 405, "{method} {path}: {}", reply.body);
        assert_eq!(reply.headers["allow"], allow, "{method} {path}");
        assert_eq!(
            reply.headers["content-type"], "application/problem+json",
            "{method} {path}"
        );
        assert_eq!(reply.body["code"], "method_not_allowed", "{method} {path}");
        // What `Allow` says is what the document says.
        let template = if path.starts_with("/api/users/") {
            "/api/users/{id}"
        } else if path.starts_with("/schemas/") {
            "/schemas/{path}"
        } else {
            path.as_str()
        };
        let documented: Vec<String> = spec.body["paths"][template]
            .as_object()
            .unwrap()
            .keys()
            .map(|m| m.to_uppercase())
            .collect();
        assert_eq!(allow.split(", ").collect::<Vec<_>>(), documented, "{path}");
    }
    let reply = client.send(client.post("/api/nowhere")).await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (404, Some("not_found"))
    );
    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn missing_credentials_are_401_before_anything_else_is_looked_at() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    // No token and a malformed Idempotency-Key: the missing credentials win.
    let reply = client
        .send(
            client
                .patch("/api/profile")
                .header("Idempotency-Key", "")
                .json(&json!({"bio": "x"})),
        )
        .await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (401, Some("unauthenticated")),
        "{}",
        reply.body
    );
    // Nor an overlong key, nor an unreadable X-Min-Position on a read.
    let overlong = "k".repeat(10_000);
    let reply = client
        .send(
            client
                .patch("/api/profile")
                .header("Idempotency-Key", overlong.as_str())
                .json(&json!({"bio": "x"})),
        )
        .await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    let reply = client
        .send(client.get("/api/profile").header("X-Min-Position", "!!!"))
        .await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (401, Some("unauthenticated")),
        "{}",
        reply.body
    );
    // On a public read the position is still checked.
    let reply = client
        .send(
            client
                .get(&format!("/api/users/{}", uuid::Uuid::new_v4()))
                .header("X-Min-Position", "!!!"),
        )
        .await;
    assert_eq!(reply.body["code"], "invalid_position", "{}", reply.body);
    // Nor is a position in a partition the topics do not have.
    let elsewhere: tidings_schemas::Position = {
        let mut p = tidings_schemas::Position::default();
        p.include(77, 1);
        p
    };
    let reply = client
        .send(
            client
                .get(&format!("/api/users/{}", uuid::Uuid::new_v4()))
                .header("X-Min-Position", elsewhere.to_string()),
        )
        .await;
    assert_eq!(reply.body["code"], "invalid_position", "{}", reply.body);
    // A key with a control character is not a key.
    let reply = client
        .send(
            client
                .post("/api/auth/login")
                .header("Idempotency-Key", "a\tb")
                .json(&json!({"login": "x", "password": "y"})),
        )
        .await;
    assert_eq!(
        reply.body["code"], "invalid_idempotency_key",
        "{}",
        reply.body
    );
    // The socket without a token, as a plain request and as a handshake.
    let reply = client.send(client.get("/ws")).await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (401, Some("unauthenticated")),
        "{}",
        reply.body
    );
    let url = format!("{}/ws", app.base.replacen("http://", "ws://", 1));
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!(
            "a handshake without a token: {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
    // With a token, a request that is not a handshake is 400.
    let (_, token, _) = client.user("alice").await;
    let reply = client.send(client.get("/ws").bearer_auth(&token)).await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (400, Some("bad_handshake")),
        "{}",
        reply.body
    );
    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn every_answer_of_the_shared_machinery_is_documented() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let spec = client.send(client.get("/openapi.json")).await.body;
    let responses = |path: &str, method: &str| spec["paths"][path][method]["responses"].clone();

    let reply = client
        .send(
            client
                .post("/api/auth/login")
                .header("content-type", "text/plain")
                .body("{}"),
        )
        .await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    for (path, method) in [
        ("/api/auth/register", "post"),
        ("/api/auth/login", "post"),
        ("/api/profile", "patch"),
    ] {
        for status in ["400", "413", "415", "422"] {
            assert!(
                responses(path, method)[status]["content"]["application/problem+json"].is_object(),
                "{method} {path} lacks {status}"
            );
        }
    }

    let reply = client
        .send(
            client
                .get("/health")
                .header("X-Min-Position", "not a position"),
        )
        .await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (400, Some("invalid_position"))
    );
    let gets: Vec<String> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, item)| item["get"].is_object())
        .map(|(path, _)| path.clone())
        .collect();
    for path in &gets {
        let get = &spec["paths"][path]["get"];
        assert!(
            get["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == "X-Min-Position")),
            "GET {path} does not document X-Min-Position"
        );
        for status in ["400", "503"] {
            assert!(
                get["responses"][status].is_object(),
                "GET {path} lacks {status}"
            );
        }
        if get["security"].as_array().is_some_and(|s| !s.is_empty()) {
            assert!(get["responses"]["401"].is_object(), "GET {path} lacks 401");
        }
    }
    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn text_postgresql_cannot_store_is_refused_not_projected() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let reply = client
        .send(client.post("/api/auth/register").json(&json!({
            "username": "nul", "email": "n\u{0}l@example.com", "password": "correct horse battery"
        })))
        .await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (422, Some("validation_failed")),
        "{}",
        reply.body
    );
    let (_, token, _) = client.user("alice").await;
    let reply = client
        .send(
            client
                .patch("/api/profile")
                .bearer_auth(&token)
                .json(&json!({"bio": "a\u{0}b"})),
        )
        .await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (422, Some("validation_failed")),
        "{}",
        reply.body
    );
    let reply = client
        .send(
            client
                .post("/api/auth/login")
                .json(&json!({"login": "a\u{0}", "password": "whatever it is"})),
        )
        .await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (401, Some("invalid_credentials")),
        "{}",
        reply.body
    );
    // The projector is still running: a write is still read back.
    let reply = client
        .send(
            client
                .patch("/api/profile")
                .bearer_auth(&token)
                .json(&json!({"bio": "two\nlines"})),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    app.stop().await;
    world.clean_up().await;
}
