//! An event this build cannot read — an unknown type, or a version newer
//! than it knows — stops its partition loudly, for the decider and the
//! projector alike, instead of being skipped: skipping would leave states
//! and read models silently wrong.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use tidings_schemas::EventEnvelope;
use uuid::Uuid;

use crate::support::{eventually, Client, World, ALL_ROLES};

fn halted(metrics: &str, reader: &str, partition: i32) -> bool {
    metrics.lines().any(|line| {
        line.starts_with("tidings_reader_halted{")
            && line.contains(&format!("reader=\"{reader}\""))
            && line.contains(&format!("partition=\"{partition}\""))
            && line.ends_with(" 1")
    })
}

#[tokio::test]
async fn an_unreadable_event_halts_its_partition_instead_of_being_skipped() {
    let world = World::new().await;
    let mut settings = world.settings.clone();
    settings.command_timeout_ms = 3_000;
    let app = world.start_with(settings, &ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (id, token, _) = client.user("ada").await;
    let renamed = client
        .send(
            client
                .patch("/api/profile")
                .bearer_auth(&token)
                .json(&json!({"display_name": "Ada"})),
        )
        .await;
    assert_eq!(renamed.status, 200, "{}", renamed.body);

    // A newer build wrote an event this one does not know, right after the
    // account's last one.
    let (partition, offset, last) = world
        .events()
        .into_iter()
        .rfind(|(_, _, e)| e.aggregate.id == id)
        .unwrap();
    let unknown = EventEnvelope {
        event_id: Uuid::new_v4(),
        event_type: "account.teleported".into(),
        version: 1,
        sequence: last.sequence + 1,
        previous: Some(last.event_id),
        command_id: Uuid::new_v4(),
        data: json!({"to": "the moon"}),
        ..last.clone()
    };
    let producer: FutureProducer = world.settings.kafka().producer().create().unwrap();
    let events_topic = world.settings.kafka().topics().events;
    let (key, payload) = (unknown.aggregate.key(), unknown.to_json());
    let unknown_offset = producer
        .send(
            FutureRecord::to(&events_topic)
                .partition(partition)
                .key(&key)
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .unwrap()
        .offset;
    assert!(unknown_offset > offset);

    // The decider decides nothing more on that partition: the write is not
    // accepted (and not lost: its command waits, uncommitted).
    let refused = client
        .send(
            client
                .patch("/api/profile")
                .bearer_auth(&token)
                .json(&json!({"display_name": "Ada Again"})),
        )
        .await;
    assert_eq!(refused.status, 503, "{}", refused.body);

    // Both readers say so, and the projector stays on the unknown event.
    eventually(
        Duration::from_secs(30),
        "the decider and the projector report the partition halted",
        || async {
            let metrics = client.send(client.get("/metrics")).await;
            let text = metrics.body.as_str().unwrap_or_default().to_owned();
            halted(&text, "decider", partition) && halted(&text, "projector", partition)
        },
    )
    .await;
    let db = world.db().await;
    let next: i64 =
        sqlx::query_scalar("SELECT next_offset FROM projector_offsets WHERE partition = $1")
            .bind(partition)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(
        next, unknown_offset,
        "the projector did not pass the unknown event"
    );
    let profile = client
        .send(client.get("/api/profile").bearer_auth(&token))
        .await;
    assert_eq!(profile.body["display_name"], "Ada");

    app.stop().await;
    world.clean_up_after_foreign_events().await;
}
