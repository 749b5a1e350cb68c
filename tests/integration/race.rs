use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::StreamExt;
use serde_json::json;
use tidings::Role;

use crate::support::{Client, World, ALL_ROLES};

/// 300 concurrent `PATCH /api/profile` on one account, 64 at a time — a
/// decider batch far larger than any memory of recent commands: every
/// accepted command's event is in the log exactly once, and the account's
/// history is one unbroken chain that every reader applies whole.
#[tokio::test]
async fn concurrent_writes_on_one_aggregate_apply_each_command_once() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (id, token, _) = client.user("hot").await;

    let replies: Vec<_> = futures_util::stream::iter(0..300)
        .map(|n| {
            let request = client
                .patch("/api/profile")
                .bearer_auth(&token)
                .json(&json!({"display_name": format!("name {n}")}));
            client.send(request)
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let others: Vec<String> = replies
        .iter()
        .filter(|r| r.status != 200 && r.status != 202)
        .map(|r| format!("{} {}", r.status, r.body))
        .collect();
    assert!(others.is_empty(), "unexpected answers: {others:?}");

    let events: Vec<_> = world
        .events()
        .into_iter()
        .map(|(_, _, e)| e)
        .filter(|e| e.aggregate.id == id)
        .collect();
    let updates = events
        .iter()
        .filter(|e| e.event_type == "account.profile_updated")
        .count();
    let event_ids: HashSet<_> = events.iter().map(|e| e.event_id).collect();
    let commands: HashSet<_> = events.iter().map(|e| e.command_id).collect();
    assert_eq!(
        (updates, event_ids.len(), commands.len(), events.len()),
        (300, 302, 302, 302),
        "each command's event once, nothing written twice"
    );
    let mut previous = None;
    for (expected, event) in (1..).zip(&events) {
        assert_eq!((event.sequence, event.previous), (expected, previous));
        previous = Some(event.event_id);
    }

    // Read at the position of every write: the read model holds the last
    // event of the chain, at version 302.
    let mut position = tidings_schemas::Position::default();
    for reply in &replies {
        position.merge(&reply.body["position"].as_str().unwrap().parse().unwrap());
    }
    let profile = client.own_profile(&token, &position.to_string()).await;
    assert_eq!(profile.status, 200, "{}", profile.body);
    let last = events.last().unwrap();
    assert_eq!(profile.body["display_name"], last.data["display_name"]);
    let db = world.db().await;
    let version: i64 = sqlx::query_scalar("SELECT version FROM accounts WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(version, 302);
    app.stop().await;
    world.clean_up().await;
}

/// 100 registrations with the same email, across two API processes: the
/// claim aggregate's single writer lets exactly one through.
#[tokio::test]
async fn one_email_racing_across_two_api_processes_registers_once() {
    let world = World::new().await;
    let backend = world.start(&[Role::Deciders, Role::Projector]).await;
    let first = world.spawn("api", &[]);
    let second = world.spawn("api", &[]);
    let clients = [
        Client::new(&first.base_url()),
        Client::new(&second.base_url()),
    ];

    let attempts = (0..100).map(|i| {
        let client = clients[i % 2].clone();
        async move {
            // Past password hashing's capacity a registration is refused
            // with 503 `overloaded` before anything is done: retry, as a
            // client would, after `Retry-After` (a bounded number of times).
            let mut reply = client
                .register(&format!("racer{i}"), "Same@Example.com")
                .await;
            for _ in 0..120 {
                if reply.status != 503 || reply.body["code"] != "overloaded" {
                    break;
                }
                assert!(reply.headers.contains_key("retry-after"));
                tokio::time::sleep(Duration::from_secs(1)).await;
                reply = client
                    .register(&format!("racer{i}"), "Same@Example.com")
                    .await;
            }
            reply
        }
    });
    let replies = join_all(attempts).await;
    let created = replies.iter().filter(|r| r.status == 201).count();
    let taken = replies
        .iter()
        .filter(|r| r.status == 409 && r.body["code"] == "email_taken")
        .count();
    let others: Vec<String> = replies
        .iter()
        .filter(|r| r.status != 201 && r.status != 409)
        .map(|r| format!("{} {}", r.status, r.body))
        .collect();
    assert!(others.is_empty(), "unexpected answers: {others:?}");
    assert_eq!((created, taken), (1, 99));

    let events = world.events();
    let registered = events
        .iter()
        .filter(|(_, _, e)| e.event_type == "account.registered")
        .count();
    let email_claims = events
        .iter()
        .filter(|(_, _, e)| e.event_type == "claim.claimed" && e.aggregate.id == "same@example.com")
        .count();
    assert_eq!((registered, email_claims), (1, 1));

    // The 99 losers gave their usernames back.
    let winner = replies.iter().find(|r| r.status == 201).unwrap();
    let loser_name = (0..100)
        .map(|i| format!("racer{i}"))
        .find(|n| winner.body["user"]["username"] != n.as_str())
        .unwrap();
    let reply = clients[0]
        .register(&loser_name, "another@example.com")
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);

    drop((first, second));
    backend.stop().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    world.clean_up().await;
}
