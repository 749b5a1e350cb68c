//! The webhook dispatcher role: events → deliveries → `POST`s.
//!
//! - **Intake** reads `<prefix>.events` in its own consumer group
//!   (`<prefix>.webhooks`). Before it matches a batch it waits until the
//!   projector has passed the end every partition had when the batch was
//!   read: every endpoint registered before those events is then in the read
//!   model, and every event the sequence rule admits is in the event index
//!   (off-chain events, which no reader applies, are never delivered). The
//!   matching deliveries are queued in PostgreSQL (once per endpoint and
//!   event), then the offsets committed: at least once.
//! - **Sending** claims due deliveries (`webhooks::claim`: per endpoint, the
//!   first pending one of each aggregate, a few in flight at most) and posts
//!   each, signed, with a time limit; 2xx delivers, a timeout, a connection
//!   error, 408, 429 or 5xx is tried again after an exponential pause with
//!   jitter (at least `Retry-After`) until the attempts are used up (dead),
//!   any other answer is final (failed). An endpoint whose every attempt has
//!   failed for `TIDINGS_WEBHOOK_DISABLE_AFTER_SECS` is disabled (a command),
//!   and its owner mailed by the projector.
//!
//! Deliveries only go where [`Destinations`] allows: the sender's resolver
//! checks every address a name resolves to, and the connection is made to
//! those addresses; redirects are not followed; an answer is read up to
//! [`RESPONSE_CAP`] bytes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sha2::Sha256;
use sqlx::PgPool;
use tidings_commands::{AnyCommand, CommandBus, CommandEnvelope};
use tidings_domain::webhook;
use tidings_http::outbound::Destinations;
use tidings_projections::webhooks::{
    self as queue, Attempt, Candidate, Claim, Due, NewDelivery, Owners,
};
use tidings_schemas::kafka::{KafkaSettings, ADMIN_TIMEOUT};
use tidings_schemas::{AggregateRef, AggregateType, EventEnvelope};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::settings::WebhookSettings;

/// Records read per intake batch, at most.
const BATCH: usize = 500;
/// How long a batch waits for more records once it has one.
const BATCH_WAIT: Duration = Duration::from_millis(20);
/// How often intake looks again at the projector's offsets while it waits.
const PROJECTOR_POLL: Duration = Duration::from_millis(20);
/// How often the queue is looked at when nothing was due.
const SEND_POLL: Duration = Duration::from_millis(100);
/// Deliveries of one endpoint in flight at once.
const PER_ENDPOINT: i64 = 4;
/// Bytes of an answer read, at most; the log keeps the first [`KEPT`].
pub const RESPONSE_CAP: usize = 64 * 1024;
const KEPT: usize = 1024;
/// A `Retry-After` longer than this is taken as this.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);

/// Runs intake and sending until `stop`.
pub async fn run(
    kafka: KafkaSettings,
    db: PgPool,
    bus: CommandBus,
    settings: WebhookSettings,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let destinations = Destinations::new(&settings.webhook_allow)
        .map_err(|e| anyhow::anyhow!("TIDINGS_WEBHOOK_ALLOW: {e}"))?;
    let client = client(destinations, &settings)?;
    let intake = intake(kafka, db.clone(), settings.webhook_queue_max, stop.clone());
    let sending = send(db, bus, client, settings, stop);
    tokio::try_join!(intake, sending)?;
    Ok(())
}

/// The HTTP client of deliveries: its resolver checks addresses, it never
/// follows a redirect nor uses a proxy.
fn client(
    destinations: Destinations,
    settings: &WebhookSettings,
) -> anyhow::Result<reqwest::Client> {
    let timeout = Duration::from_millis(settings.webhook_timeout_ms);
    reqwest::Client::builder()
        .dns_resolver(Arc::new(Checked(Arc::new(destinations))))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .pool_max_idle_per_host(PER_ENDPOINT as usize)
        .user_agent(concat!("Tidings-Webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the webhook HTTP client")
}

/// The resolver of deliveries: a name resolves to its addresses only when
/// every one of them may be reached.
struct Checked(Arc<Destinations>);

impl reqwest::dns::Resolve for Checked {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let destinations = self.0.clone();
        Box::pin(async move {
            let addresses = destinations.resolve(name.as_str(), 0).await?;
            let addresses: reqwest::dns::Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}

// ---- intake ----

async fn intake(
    kafka: KafkaSettings,
    db: PgPool,
    queue_max: i64,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let topic = kafka.topics().events;
    let group = format!("{}.webhooks", kafka.topic_prefix);
    let consumer: Arc<StreamConsumer> = Arc::new(
        kafka
            .consumer(Some(&group))
            .create()
            .context("creating the webhook consumer")?,
    );
    consumer.subscribe(&[&topic])?;
    tracing::info!(%group, "webhook dispatcher started");
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => break,
            message = consumer.recv() => message?.detach(),
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(message) => batch.push(message?.detach()),
                Err(_) => break,
            }
        }
        let ends = ends(&consumer, &topic, kafka.partitions).await?;
        if !projected_past(&db, &ends, &stop).await? {
            break;
        }
        let envelopes: Vec<(i32, i64, EventEnvelope)> = batch
            .iter()
            .filter_map(|m| {
                let envelope = EventEnvelope::from_json(m.payload().unwrap_or_default()).ok()?;
                Some((m.partition(), m.offset(), envelope))
            })
            .collect();
        let queued = match_and_queue(&db, &envelopes, queue_max).await?;
        if queued > 0 {
            metrics::counter!("tidings_webhook_queued_total").increment(queued);
        }
        let mut offsets: HashMap<i32, i64> = HashMap::new();
        for message in &batch {
            let next = offsets.entry(message.partition()).or_default();
            *next = (*next).max(message.offset() + 1);
        }
        let mut list = TopicPartitionList::new();
        for (partition, next) in offsets {
            list.add_partition_offset(&topic, partition, Offset::Offset(next))?;
        }
        consumer.commit(&list, CommitMode::Sync)?;
    }
    consumer.unsubscribe();
    Ok(())
}

/// The end of every partition of the events topic, now.
async fn ends(
    consumer: &Arc<StreamConsumer>,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<Vec<(i32, i64)>> {
    let (consumer, topic) = (consumer.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        (0..partitions)
            .map(|p| Ok((p, consumer.fetch_watermarks(&topic, p, ADMIN_TIMEOUT)?.1)))
            .collect()
    })
    .await?
}

/// Waits until the projector has passed `ends` on every partition; `false`
/// when stopped first.
async fn projected_past(
    db: &PgPool,
    ends: &[(i32, i64)],
    stop: &CancellationToken,
) -> anyhow::Result<bool> {
    loop {
        let projected = queue::projected_offsets(db).await?;
        if ends
            .iter()
            .all(|(p, end)| *end == 0 || projected.get(p).is_some_and(|next| next >= end))
        {
            return Ok(true);
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(false),
            _ = tokio::time::sleep(PROJECTOR_POLL) => {}
        }
    }
}

/// Queues a delivery for every active endpoint an event is for.
async fn match_and_queue(
    db: &PgPool,
    events: &[(i32, i64, EventEnvelope)],
    queue_max: i64,
) -> anyhow::Result<u64> {
    let targets = queue::active_targets(db).await?;
    if targets.is_empty() {
        return Ok(0);
    }
    // Events some endpoint asked for, registered before they happened.
    let wanted: Vec<Candidate<'_>> = events
        .iter()
        // Uniqueness claims name email addresses: never sent.
        .filter(|(_, _, e)| {
            !matches!(
                e.aggregate.kind,
                AggregateType::Email | AggregateType::Username
            )
        })
        .filter(|(_, _, e)| {
            targets
                .iter()
                .any(|t| e.occurred_at >= t.registered_at && t.event_types.contains(&e.event_type))
        })
        .map(|(partition, offset, envelope)| Candidate {
            partition: *partition,
            offset: *offset,
            envelope,
        })
        .collect();
    if wanted.is_empty() {
        return Ok(0);
    }
    let applied = queue::applied(db, &wanted).await?;
    let wanted: Vec<Candidate<'_>> = wanted
        .into_iter()
        .filter(|c| applied.contains(&(c.partition, c.offset)))
        .collect();
    let owners: HashSet<Uuid> = targets
        .iter()
        .filter(|t| t.scope == "own")
        .map(|t| t.owner_id)
        .collect();
    let owners_of = Owners::load(
        db,
        &wanted.iter().map(|c| c.envelope).collect::<Vec<_>>(),
        &owners.into_iter().collect::<Vec<_>>(),
    )
    .await?;
    let mut deliveries = Vec::new();
    for candidate in &wanted {
        let event = candidate.envelope;
        let body = serde_json::to_string(&event.for_analysts(false))?;
        for target in &targets {
            let matches = event.occurred_at >= target.registered_at
                && target.event_types.contains(&event.event_type)
                && (target.scope == "all" || owners_of.concerns(target.owner_id, event));
            if matches {
                deliveries.push(NewDelivery {
                    endpoint: target.id,
                    event_id: event.event_id,
                    event_type: event.event_type.clone(),
                    aggregate_key: event.aggregate.key(),
                    partition: candidate.partition,
                    offset: candidate.offset,
                    body: body.clone(),
                });
            }
        }
    }
    Ok(queue::enqueue(db, &deliveries, queue_max).await?)
}

// ---- sending ----

async fn send(
    db: PgPool,
    bus: CommandBus,
    client: reqwest::Client,
    settings: WebhookSettings,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let concurrency = settings.webhook_concurrency.max(1);
    let permits = Arc::new(Semaphore::new(concurrency));
    let lease = Duration::from_millis(settings.webhook_timeout_ms) + Duration::from_secs(30);
    let settings = Arc::new(settings);
    let mut in_flight = JoinSet::new();
    loop {
        while let Some(done) = in_flight.try_join_next() {
            done??;
        }
        let free = permits.available_permits() as i64;
        let claimed = if free > 0 {
            queue::claim(
                &db,
                Claim {
                    limit: free,
                    per_endpoint: PER_ENDPOINT,
                    lease_secs: lease.as_secs_f64(),
                },
            )
            .await?
        } else {
            Vec::new()
        };
        let idle = claimed.is_empty();
        for due in claimed {
            let permit = permits.clone().acquire_owned().await?;
            let (db, bus, client, settings) =
                (db.clone(), bus.clone(), client.clone(), settings.clone());
            in_flight.spawn(async move {
                let outcome = deliver(&db, &bus, &client, &settings, &due).await;
                drop(permit);
                outcome
            });
        }
        if idle {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(SEND_POLL) => {}
                Some(done) = in_flight.join_next() => done??,
            }
        } else if stop.is_cancelled() {
            break;
        }
    }
    // What is in flight finishes (each within its time limit); what is not
    // recorded is leased, and due again once its lease ends.
    while let Some(done) = in_flight.join_next().await {
        done??;
    }
    Ok(())
}

/// One attempt at one delivery, and what follows from it.
async fn deliver(
    db: &PgPool,
    bus: &CommandBus,
    client: &reqwest::Client,
    settings: &WebhookSettings,
    due: &Due,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let answer = post(client, due).await;
    let latency_ms = started.elapsed().as_millis().min(i32::MAX as u128) as i32;
    let attempt = judge(answer, due.attempts, settings, latency_ms, Utc::now());
    metrics::counter!("tidings_webhook_attempts_total", "outcome" => attempt.status).increment(1);
    metrics::histogram!("tidings_webhook_attempt_seconds").record(started.elapsed().as_secs_f64());
    if attempt.status != "delivered" {
        tracing::info!(
            delivery = %due.id, endpoint = %due.endpoint_id, attempt = due.attempts,
            status = attempt.status, http_status = attempt.http_status, error = attempt.error,
            "a webhook delivery failed"
        );
    }
    let failing_since = queue::record(db, due, &attempt).await?;
    let disable_after = Duration::from_secs(settings.webhook_disable_after_secs);
    if let Some(since) = failing_since {
        let failing_for = (Utc::now() - since).to_std().unwrap_or_default();
        if failing_for >= disable_after {
            disable(bus, due.endpoint_id, failing_for).await;
        }
    }
    Ok(())
}

/// An answer, or why there was none.
pub enum Answer {
    Response {
        status: u16,
        retry_after: Option<Duration>,
        body: String,
    },
    /// No answer: refused by the resolver, could not connect, timed out.
    Failed { error: String, refused: bool },
}

async fn post(client: &reqwest::Client, due: &Due) -> Answer {
    let signed = match Signed::new(
        &due.secret,
        &due.event_id.to_string(),
        Utc::now().timestamp(),
        &due.body,
    ) {
        Ok(signed) => signed,
        Err(error) => {
            return Answer::Failed {
                error,
                refused: true,
            }
        }
    };
    let request = client
        .post(&due.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Tidings-Event-Id", due.event_id.to_string())
        .header("X-Tidings-Event-Type", &due.event_type)
        .header("X-Tidings-Delivery-Id", due.id.to_string())
        .header("X-Tidings-Signature", &signed.tidings)
        .header("webhook-id", due.event_id.to_string())
        .header("webhook-timestamp", signed.timestamp.to_string())
        .header("webhook-signature", &signed.standard)
        .body(due.body.clone());
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(error) => {
            // The resolver's refusal is in the error's sources.
            let refused =
                std::iter::successors(Some(&error as &(dyn std::error::Error + 'static)), |e| {
                    e.source()
                })
                .any(|e| {
                    e.downcast_ref::<tidings_http::outbound::Refused>()
                        .is_some()
                });
            return Answer::Failed {
                error: describe(&error),
                refused,
            };
        }
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry_after(v, Utc::now()));
    // The answer is read up to the cap, and only its start is kept.
    let mut body = Vec::new();
    while body.len() < RESPONSE_CAP {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(KEPT);
    Answer::Response {
        status,
        retry_after,
        body: storable(&String::from_utf8_lossy(&body)),
    }
}

/// Text as PostgreSQL stores it: without NUL characters.
fn storable(text: &str) -> String {
    text.replace('\0', "\u{fffd}")
}

/// An error with its causes, one line.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    storable(&text)
}

/// `Retry-After` as seconds or as an HTTP date.
fn retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let wait = match value.trim().parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = DateTime::parse_from_rfc2822(value.trim()).ok()?;
            (at.with_timezone(&Utc) - now).to_std().unwrap_or_default()
        }
    };
    Some(wait.min(RETRY_AFTER_MAX))
}

/// What an attempt comes to: delivered, final, or tried again (when).
fn judge(
    answer: Answer,
    attempt: i32,
    settings: &WebhookSettings,
    latency_ms: i32,
    now: DateTime<Utc>,
) -> Attempt {
    let (retryable, http_status, error, response, retry_after) = match answer {
        Answer::Response {
            status,
            retry_after,
            body,
        } => {
            let retryable = status == 408 || status == 429 || status >= 500;
            let done = (200..300).contains(&status);
            if done {
                return Attempt {
                    status: "delivered",
                    retry_at: None,
                    http_status: Some(i32::from(status)),
                    error: None,
                    latency_ms,
                    response: Some(body),
                };
            }
            let error = (300..400)
                .contains(&status)
                .then(|| "redirects are not followed".to_owned());
            (
                retryable,
                Some(i32::from(status)),
                error,
                Some(body),
                retry_after,
            )
        }
        Answer::Failed { error, refused } => (!refused, None, Some(error), None, None),
    };
    let (status, retry_at) = match (retryable, attempt >= settings.webhook_max_attempts) {
        (false, _) => ("failed", None),
        (true, true) => ("dead", None),
        (true, false) => {
            let pause = backoff(attempt, settings, jitter()).max(retry_after.unwrap_or_default());
            ("pending", Some(now + pause))
        }
    };
    Attempt {
        status,
        retry_at,
        http_status,
        error,
        latency_ms,
        response,
    }
}

/// The pause after failed attempt `attempt` (from 1): the base doubled per
/// attempt, capped, times `jitter` in [0.5, 1).
fn backoff(attempt: i32, settings: &WebhookSettings, jitter: f64) -> Duration {
    let doubled = settings
        .webhook_backoff_ms
        .saturating_mul(1u64 << (attempt - 1).clamp(0, 40));
    let capped = doubled.min(settings.webhook_backoff_max_ms);
    Duration::from_millis((capped as f64 * (0.5 + jitter / 2.0)) as u64)
}

/// A number in [0, 1) that differs between attempts and processes.
fn jitter() -> f64 {
    (Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

/// Asks for an endpoint to be disabled (its decider does it once).
async fn disable(bus: &CommandBus, endpoint: Uuid, failing_for: Duration) {
    let hours = failing_for.as_secs_f64() / 3600.0;
    let command = CommandEnvelope {
        command_id: Uuid::new_v4(),
        idempotency_key: None,
        actor: None,
        issued_at: Utc::now(),
        correlation_id: Uuid::new_v4(),
        aggregate: AggregateRef::new(AggregateType::Webhook, endpoint.to_string()),
        command: AnyCommand::Webhook(webhook::Command::Disable {
            reason: format!("every delivery attempt failed for {hours:.1} hours"),
            at: Utc::now(),
        }),
    };
    match bus.send(&command).await {
        Ok(_) => {
            metrics::counter!("tidings_webhook_disabled_total").increment(1);
            tracing::warn!(%endpoint, "a webhook endpoint failing for too long is disabled");
        }
        Err(error) => tracing::warn!(%endpoint, %error, "disabling a failing webhook endpoint"),
    }
}

/// The signatures of one delivery.
pub struct Signed {
    pub timestamp: i64,
    /// `X-Tidings-Signature`: `t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
    pub tidings: String,
    /// `webhook-signature` (Standard Webhooks): `v1,<base64 HMAC-SHA256 of
    /// "<id>.<t>.<body>">`.
    pub standard: String,
}

impl Signed {
    /// Signs with the key a secret `whsec_<base64>` stands for.
    pub fn new(secret: &str, id: &str, timestamp: i64, body: &str) -> Result<Signed, String> {
        let key = secret_key(secret)?;
        let mac = |message: &str| {
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key");
            mac.update(message.as_bytes());
            mac.finalize().into_bytes()
        };
        let tidings = mac(&format!("{timestamp}.{body}"));
        let hex: String = tidings.iter().map(|b| format!("{b:02x}")).collect();
        let standard = mac(&format!("{id}.{timestamp}.{body}"));
        Ok(Signed {
            timestamp,
            tidings: format!("t={timestamp},v1={hex}"),
            standard: format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(standard)
            ),
        })
    }
}

/// The key bytes of a secret `whsec_<base64>`.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret
        .strip_prefix("whsec_")
        .ok_or("a webhook secret begins with whsec_")?;
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("a webhook secret is base64 after whsec_: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> WebhookSettings {
        WebhookSettings {
            webhook_allow: vec![],
            webhook_max_attempts: 4,
            webhook_backoff_ms: 1000,
            webhook_backoff_max_ms: 10_000,
            webhook_timeout_ms: 1000,
            webhook_disable_after_secs: 60,
            webhook_queue_max: 10,
            webhook_concurrency: 4,
        }
    }

    fn response(status: u16, retry_after: Option<u64>) -> Answer {
        Answer::Response {
            status,
            retry_after: retry_after.map(Duration::from_secs),
            body: String::new(),
        }
    }

    #[test]
    fn answers_are_judged_by_the_contract() {
        let (s, now) = (settings(), Utc::now());
        assert_eq!(
            judge(response(204, None), 1, &s, 1, now).status,
            "delivered"
        );
        for retried in [408, 429, 500, 503] {
            let attempt = judge(response(retried, None), 1, &s, 1, now);
            assert_eq!(attempt.status, "pending", "{retried}");
            assert!(attempt.retry_at.unwrap() > now);
        }
        for last in [400, 401, 404, 410, 301] {
            assert_eq!(judge(response(last, None), 1, &s, 1, now).status, "failed");
        }
        assert_eq!(judge(response(500, None), 4, &s, 1, now).status, "dead");
        let timeout = Answer::Failed {
            error: "timed out".into(),
            refused: false,
        };
        assert_eq!(judge(timeout, 1, &s, 1, now).status, "pending");
        let refused = Answer::Failed {
            error: "10.0.0.1 is private".into(),
            refused: true,
        };
        assert_eq!(judge(refused, 1, &s, 1, now).status, "failed");
    }

    #[test]
    fn retry_after_is_honoured_and_backoff_doubles_with_jitter_and_a_cap() {
        let (s, now) = (settings(), Utc::now());
        let attempt = judge(response(429, Some(30)), 1, &s, 1, now);
        assert!(attempt.retry_at.unwrap() >= now + Duration::from_secs(30));
        assert_eq!(backoff(1, &s, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(2, &s, 0.0), Duration::from_millis(1000));
        assert_eq!(backoff(3, &s, 0.999_999), Duration::from_millis(3999));
        assert_eq!(backoff(30, &s, 0.0), Duration::from_millis(5000));
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        let date = (now + chrono::Duration::seconds(90)).to_rfc2822();
        let wait = retry_after(&date, now).unwrap();
        assert!(wait <= Duration::from_secs(90) && wait >= Duration::from_secs(88));
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(storable("ok\0nul"), "ok\u{fffd}nul");
        let j = jitter();
        assert!((0.0..1.0).contains(&j));
    }

    #[test]
    fn signatures_follow_the_documented_recipes() {
        // The key of a secret is the base64 after `whsec_`.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let signed = Signed::new(secret, id, 1_614_265_330, r#"{"test": 2432232314}"#).unwrap();
        // The example of the Standard Webhooks specification.
        assert_eq!(
            signed.standard,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let key = secret_key(secret).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(br#"1614265330.{"test": 2432232314}"#);
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(signed.tidings, format!("t=1614265330,v1={hex}"));
        assert!(Signed::new("nope", id, 0, "").is_err());
    }
}
