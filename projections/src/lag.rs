//! How far behind the deciders and the projector are, and how much the
//! outbox holds, measured every few seconds as gauges.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use tidings_schemas::kafka::{KafkaSettings, ADMIN_TIMEOUT};
use tokio_util::sync::CancellationToken;

/// How often the gauges are refreshed.
pub const INTERVAL: Duration = Duration::from_secs(5);

pub async fn monitor(
    kafka: KafkaSettings,
    db: PgPool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let group = format!("{}.deciders", kafka.topic_prefix);
    // A consumer of the deciders' group id that never joins: it only reads
    // the group's committed offsets.
    let consumer: Arc<BaseConsumer> = Arc::new(kafka.consumer(Some(&group)).create()?);
    loop {
        if let Err(error) = measure(&kafka, &consumer, &db).await {
            tracing::debug!(error = format!("{error:#}"), "measuring lag");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(INTERVAL) => {}
        }
    }
}

/// Per partition: the end of the events, the end of the commands, and the
/// deciders' committed offset.
fn kafka_ends(
    consumer: &BaseConsumer,
    partitions: i32,
    events: &str,
    commands: &str,
) -> anyhow::Result<Vec<(i32, i64, i64, i64)>> {
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(commands, partition);
    }
    let committed = consumer.committed_offsets(list, ADMIN_TIMEOUT)?;
    (0..partitions)
        .map(|partition| {
            let (_, events_end) = consumer.fetch_watermarks(events, partition, ADMIN_TIMEOUT)?;
            let (_, commands_end) =
                consumer.fetch_watermarks(commands, partition, ADMIN_TIMEOUT)?;
            let done = match committed
                .find_partition(commands, partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            };
            Ok((partition, events_end, commands_end, done))
        })
        .collect()
}

async fn measure(
    kafka: &KafkaSettings,
    consumer: &Arc<BaseConsumer>,
    db: &PgPool,
) -> anyhow::Result<()> {
    let topics = kafka.topics();
    let projected: Vec<(i32, i64, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT partition, next_offset, last_event_at FROM projector_offsets")
            .fetch_all(db)
            .await?;
    let backlog = crate::outbox::backlog(db).await?;
    metrics::gauge!("tidings_outbox_backlog").set(backlog as f64);

    // librdkafka's metadata calls block: keep them off the async workers.
    let ends = {
        let (consumer, partitions) = (consumer.clone(), kafka.partitions);
        let (events, commands) = (topics.events.clone(), topics.commands.clone());
        tokio::task::spawn_blocking(move || kafka_ends(&consumer, partitions, &events, &commands))
            .await??
    };
    for (partition, events_end, commands_end, committed) in ends {
        let label = partition.to_string();
        let (next, last_at) = projected
            .iter()
            .find(|(p, _, _)| *p == partition)
            .map_or((0, None), |(_, next, at)| (*next, *at));
        let lag = (events_end - next).max(0);
        let behind = match (lag, last_at) {
            (0, _) | (_, None) => 0.0,
            (_, Some(at)) => (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0,
        };
        metrics::gauge!("tidings_projector_offset", "partition" => label.clone()).set(next as f64);
        metrics::gauge!("tidings_projector_lag_events", "partition" => label.clone())
            .set(lag as f64);
        metrics::gauge!("tidings_projector_seconds_behind", "partition" => label.clone())
            .set(behind);
        metrics::gauge!("tidings_decider_lag_commands", "partition" => label)
            .set((commands_end - committed).max(0) as f64);
    }
    Ok(())
}
