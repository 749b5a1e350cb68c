use std::time::Duration;

use futures_util::future::join_all;
use tidings::Role;

use crate::support::{Client, World};

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
