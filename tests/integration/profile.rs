//! The extended profile (`/api/profile/details`) and its public part on
//! `GET /api/users/{id}`, end to end through the API, log, projector and
//! cache.

use serde_json::{json, Value};

use crate::support::{Client, Reply, World, ALL_ROLES};

/// A registered user whose account is projected: id and token.
struct User {
    id: String,
    token: String,
}

async fn user(client: &Client, name: &str) -> User {
    let (id, token, position) = client.user(name).await;
    let profile = client.own_profile(&token, &position).await;
    assert_eq!(profile.status, 200, "{}", profile.body);
    User { id, token }
}

async fn patch(client: &Client, who: &User, body: Value) -> Reply {
    client
        .send(
            client
                .patch("/api/profile/details")
                .bearer_auth(&who.token)
                .json(&body),
        )
        .await
}

/// Patches and returns the answer's body; panics unless 200.
async fn patched(client: &Client, who: &User, body: Value) -> Value {
    let reply = patch(client, who, body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

async fn own_details(client: &Client, who: &User, position: Option<&str>) -> Value {
    let mut request = client.get("/api/profile/details").bearer_auth(&who.token);
    if let Some(position) = position {
        request = request.header("X-Min-Position", position);
    }
    let reply = client.send(request).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

/// `GET /api/users/{id}` of `whose`, as `viewer` (anonymously with `None`).
async fn public_profile(client: &Client, viewer: Option<&User>, whose: &User) -> Value {
    let mut request = client.get(&format!("/api/users/{}", whose.id));
    if let Some(viewer) = viewer {
        request = request.bearer_auth(&viewer.token);
    }
    let reply = client.send(request).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

#[tokio::test]
async fn details_are_set_read_by_their_owner_and_shown_to_others_only_where_public() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let alice = user(&client, "alice").await;
    let bob = user(&client, "bob").await;

    let fresh = own_details(&client, &alice, None).await;
    assert_eq!(
        fresh,
        json!({"phone_number": null, "address": null, "education": null, "location": null,
               "website": null, "birthday": null, "public_fields": []})
    );
    assert_eq!(
        public_profile(&client, Some(&bob), &alice).await["details"],
        json!({}),
        "private to the owner by default"
    );

    let answer = patched(
        &client,
        &alice,
        json!({
            "phone_number": "+1 (555) 123-4567",
            "address": "Rua Augusta 1, Lisboa",
            "education": "University of Lisbon",
            "location": "Lisbon",
            "website": "https://alice.example.com/about",
            "birthday": "1990-05-17",
            "public_fields": ["website", "location", "website"]
        }),
    )
    .await;
    assert_eq!(answer["phone_number"], "+15551234567", "normalized");
    assert_eq!(answer["location"], "Lisbon");
    assert_eq!(answer["public_fields"], json!(["location", "website"]));
    let position = answer["position"].as_str().unwrap().to_owned();

    let own = own_details(&client, &alice, Some(&position)).await;
    assert_eq!(
        own,
        json!({
            "phone_number": "+15551234567",
            "address": "Rua Augusta 1, Lisboa",
            "education": "University of Lisbon",
            "location": "Lisbon",
            "website": "https://alice.example.com/about",
            "birthday": "1990-05-17",
            "public_fields": ["location", "website"]
        })
    );

    let expected = json!({"location": "Lisbon", "website": "https://alice.example.com/about"});
    for viewer in [Some(&bob), None, Some(&alice)] {
        let seen = public_profile(&client, viewer, &alice).await;
        assert_eq!(seen["details"], expected, "only the public fields");
        assert_eq!(seen["username"], "alice");
        assert!(seen.get("email").is_none(), "no email: {seen}");
        // The number as given or normalized (a bare "555" can be part of a
        // timestamp's microseconds).
        let shown = seen.to_string();
        assert!(
            !shown.contains("5551234567") && !shown.contains("123-4567"),
            "no phone number: {seen}"
        );
    }
    // Bob's own details are his alone.
    assert_eq!(
        own_details(&client, &bob, None).await["location"],
        Value::Null
    );

    let events = world.events();
    let updated: Vec<_> = events
        .iter()
        .filter(|(_, _, e)| e.event_type == "account.details_updated")
        .collect();
    assert_eq!(updated.len(), 1);
    assert_eq!(updated[0].2.data["phone_number"], "+15551234567");
    assert_eq!(updated[0].2.aggregate.id, alice.id);

    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn making_a_field_private_hides_it_at_once_and_null_clears_a_field() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let alice = user(&client, "alice").await;
    let bob = user(&client, "bob").await;

    patched(
        &client,
        &alice,
        json!({"location": "Lisbon", "education": "Lisbon School", "public_fields": ["location", "education"]}),
    )
    .await;
    // Bob reads it twice: the second read comes from the cache.
    for _ in 0..2 {
        let seen = public_profile(&client, Some(&bob), &alice).await;
        assert_eq!(
            seen["details"],
            json!({"location": "Lisbon", "education": "Lisbon School"})
        );
    }

    let answer = patched(&client, &alice, json!({"public_fields": ["education"]})).await;
    assert_eq!(answer["location"], "Lisbon", "private, not gone");
    // The very next read, with no position asked for, no longer shows it.
    let seen = public_profile(&client, Some(&bob), &alice).await;
    assert_eq!(seen["details"], json!({"education": "Lisbon School"}));

    // `null` clears; an absent field stays.
    let answer = patched(&client, &alice, json!({"education": null})).await;
    assert_eq!(answer["education"], Value::Null);
    assert_eq!(answer["location"], "Lisbon");
    assert_eq!(answer["public_fields"], json!(["education"]));
    let position = answer["position"].as_str().unwrap().to_owned();
    let own = own_details(&client, &alice, Some(&position)).await;
    assert_eq!(own["education"], Value::Null);
    assert_eq!(own["location"], "Lisbon");
    assert_eq!(
        public_profile(&client, Some(&bob), &alice).await["details"],
        json!({}),
        "a public field without a value shows nothing"
    );

    // A change to nothing appends nothing, and answers the details as they are.
    let before = world.events().len();
    let same = patched(&client, &alice, json!({"location": "Lisbon"})).await;
    assert_eq!(same["location"], "Lisbon");
    assert_eq!(world.events().len(), before);

    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn details_need_a_token_and_every_bad_field_is_refused_appending_nothing() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let alice = user(&client, "alice").await;

    let anonymous = client.send(client.get("/api/profile/details")).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert_eq!(anonymous.body["code"], "unauthenticated");
    let anonymous = client
        .send(
            client
                .patch("/api/profile/details")
                .json(&json!({"location": "Lisbon"})),
        )
        .await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);

    let before = world.events().len();
    let cases = [
        ("phone_number", json!("12345")),
        ("phone_number", json!("+1 555 123 4567 8901 23")),
        ("phone_number", json!("call me")),
        ("address", json!("x".repeat(201))),
        ("address", json!("line\nbreak")),
        ("address", json!("")),
        ("education", json!("nul\u{0}")),
        ("location", json!("x".repeat(101))),
        ("website", json!("ftp://example.com")),
        ("website", json!("example.com")),
        ("website", json!(format!("https://{}.com", "a".repeat(200)))),
        ("birthday", json!("1990-02-30")),
        ("birthday", json!("1899-12-31")),
        ("birthday", json!("2999-01-01")),
        ("birthday", json!("17/05/1990")),
        ("public_fields", json!(["location", "email"])),
    ];
    for (field, value) in cases {
        let reply = patch(&client, &alice, json!({ field: value })).await;
        assert_eq!(reply.status, 422, "{field} = {value}: {}", reply.body);
        assert_eq!(reply.body["code"], "validation_failed");
        assert_eq!(
            reply.body["errors"][0]["field"], field,
            "{field} = {value}: {}",
            reply.body
        );
        assert_eq!(
            reply.headers["content-type"], "application/problem+json",
            "{field}"
        );
    }
    // Every bad field of one body is reported, and the good ones are not
    // applied either.
    let reply = patch(
        &client,
        &alice,
        json!({"location": "Lisbon", "phone_number": "1", "website": "nope"}),
    )
    .await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    let fields: Vec<&str> = reply.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["phone_number", "website"]);
    let unknown = patch(&client, &alice, json!({"email": "a@b.io"})).await;
    assert_eq!(unknown.status, 422, "{}", unknown.body);

    assert_eq!(world.events().len(), before, "nothing appended");
    assert_eq!(
        own_details(&client, &alice, None).await["location"],
        Value::Null
    );

    app.stop().await;
    world.clean_up().await;
}
