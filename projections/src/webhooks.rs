//! Webhooks: the endpoints (a read model of the webhook aggregates), and
//! the dispatcher's queue of deliveries in PostgreSQL (`webhook_deliveries`,
//! one row per endpoint and event).
//!
//! Each endpoint has its own queue state: a delivery is due at its
//! `next_attempt_at`, is leased while it is being sent, and waits while an
//! earlier delivery of the same aggregate to the same endpoint is pending,
//! so that one endpoint receives one aggregate's events in log order. A
//! slow or failing endpoint holds back only its own deliveries: at most
//! [`Claim::per_endpoint`] of them are in flight at once.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgExecutor, PgPool, Postgres, Transaction};
use tidings_domain::webhook::{Event, Scope};
use tidings_schemas::{AggregateType, EventEnvelope};
use uuid::Uuid;

use crate::mail::{self, Mail};
use crate::projection::{Effects, Projection};

/// The endpoint read model.
pub struct Webhooks;

impl Projection for Webhooks {
    type Event = Event;
    const TABLES: &'static [&'static str] = &["webhook_endpoints"];

    async fn apply(
        tx: &mut Transaction<'_, Postgres>,
        envelope: &EventEnvelope,
        event: &Event,
    ) -> Result<Effects, sqlx::Error> {
        let id: Uuid = match envelope.aggregate.id.parse() {
            Ok(id) => id,
            // The API names endpoints by UUID; nothing else is projected.
            Err(_) => return Ok(Effects::default()),
        };
        match event {
            Event::Registered {
                owner,
                url,
                events,
                scope,
                registered_at,
            } => {
                sqlx::query(
                    "INSERT INTO webhook_endpoints
                       (id, owner_id, url, event_types, scope, status, registered_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, 'active', $6, $6)
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(id)
                .bind(owner)
                .bind(url)
                .bind(events)
                .bind(scope_str(*scope))
                .bind(registered_at)
                .execute(&mut **tx)
                .await?;
            }
            Event::Deleted { .. } => {
                for table in [
                    "DELETE FROM webhook_endpoints WHERE id = $1",
                    "DELETE FROM webhook_secrets WHERE endpoint_id = $1",
                    "DELETE FROM webhook_failures WHERE endpoint_id = $1",
                    "DELETE FROM webhook_deliveries WHERE endpoint_id = $1",
                ] {
                    sqlx::query(table).bind(id).execute(&mut **tx).await?;
                }
            }
            Event::Disabled {
                reason,
                disabled_at,
            } => {
                let owner: Option<(String, String, String)> = sqlx::query_as(
                    "UPDATE webhook_endpoints e
                        SET status = 'disabled', disabled_reason = $2, updated_at = $3
                       FROM accounts a
                      WHERE e.id = $1 AND a.id = e.owner_id AND e.status = 'active'
                     RETURNING a.email, a.username, e.url",
                )
                .bind(id)
                .bind(reason)
                .bind(disabled_at)
                .fetch_optional(&mut **tx)
                .await?;
                // Its owner hears of it by mail (once: the key is the event's).
                if let Some((email, username, url)) = owner {
                    mail::enqueue(
                        &mut **tx,
                        &Mail {
                            dedupe_key: Some(format!("webhook-disabled:{}", envelope.event_id)),
                            to: email,
                            subject: "Tidings: a webhook of yours was disabled".into(),
                            body: format!(
                                "Hello {username},\n\nYour webhook {id} ({url}) was disabled: {reason}.\n\
                                 Its undelivered events are kept in its delivery log \
                                 (GET /api/webhooks/{id}/deliveries); register the endpoint again \
                                 once it answers.\n"
                            ),
                        },
                    )
                    .await?;
                }
            }
        }
        Ok(Effects::default())
    }
}

fn scope_str(scope: Scope) -> &'static str {
    match scope {
        Scope::Own => "own",
        Scope::All => "all",
    }
}

/// An endpoint as its owner reads it (never with its secret).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = WebhookEndpoint)]
pub struct Endpoint {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub url: String,
    /// The event types it receives.
    #[sqlx(rename = "event_types")]
    pub events: Vec<String>,
    /// `own` (events that concern its owner) or `all` (admins only).
    pub scope: String,
    /// `active` or `disabled`.
    pub status: String,
    pub disabled_reason: Option<String>,
    pub registered_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const ENDPOINT_COLUMNS: &str =
    "id, owner_id, url, event_types, scope, status, disabled_reason, registered_at, updated_at";

/// The endpoints of `owner`, latest first (at most `limit`).
pub async fn by_owner(
    db: impl PgExecutor<'_>,
    owner: Uuid,
    limit: i64,
) -> Result<Vec<Endpoint>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE owner_id = $1
         ORDER BY registered_at DESC, id DESC LIMIT $2"
    ))
    .bind(owner)
    .bind(limit)
    .fetch_all(db)
    .await
}

pub async fn by_id(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Endpoint>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Keeps the secret of an endpoint `owner` is about to register, and returns
/// the one kept: `secret`, or the one stored first for this id. `None` when
/// the owner already has `max` endpoints (counted by their secrets, under a
/// lock per owner, so that concurrent registrations cannot all pass).
pub async fn store_secret(
    db: &PgPool,
    owner: Uuid,
    endpoint: Uuid,
    secret: &str,
    max: i64,
) -> Result<Option<String>, sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 14))")
        .bind(owner)
        .execute(&mut *tx)
        .await?;
    let kept: Option<String> =
        sqlx::query_scalar("SELECT secret FROM webhook_secrets WHERE endpoint_id = $1")
            .bind(endpoint)
            .fetch_optional(&mut *tx)
            .await?;
    if kept.is_some() {
        return Ok(kept);
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_secrets WHERE owner_id = $1")
        .bind(owner)
        .fetch_one(&mut *tx)
        .await?;
    if count >= max {
        return Ok(None);
    }
    sqlx::query("INSERT INTO webhook_secrets (endpoint_id, owner_id, secret) VALUES ($1, $2, $3)")
        .bind(endpoint)
        .bind(owner)
        .bind(secret)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(secret.to_owned()))
}

/// A delivery as the endpoint's owner reads it in its log.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = WebhookDelivery)]
pub struct Delivery {
    pub id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    /// `pending`, `delivered`, `failed` (a final answer: a 4xx other than
    /// 408 and 429) or `dead` (attempts used up, or the queue was full).
    pub status: String,
    pub attempts: i32,
    /// When a pending delivery is tried next.
    pub next_attempt_at: DateTime<Utc>,
    /// The HTTP status of the last answer.
    pub last_status: Option<i32>,
    /// Why the last attempt failed without an answer, or was refused.
    pub last_error: Option<String>,
    pub last_latency_ms: Option<i32>,
    /// The start of the last answer's body.
    pub last_response: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One page of an endpoint's delivery log, latest first, after the
/// `(created_at, id)` of `after`.
pub async fn deliveries(
    db: impl PgExecutor<'_>,
    endpoint: Uuid,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Delivery>, sqlx::Error> {
    let (at, id) = after.unzip();
    sqlx::query_as(
        "SELECT id, event_id, event_type, status, attempts, next_attempt_at, last_status,
                last_error, last_latency_ms, last_response, created_at, updated_at
           FROM webhook_deliveries
          WHERE endpoint_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
          ORDER BY created_at DESC, id DESC
          LIMIT $4",
    )
    .bind(endpoint)
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Makes a delivery that is not in flight due now, with its attempts
/// counted afresh. `None` when there is no such delivery of the endpoint.
pub async fn retry(
    db: impl PgExecutor<'_>,
    endpoint: Uuid,
    delivery: Uuid,
) -> Result<Option<Delivery>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE webhook_deliveries
            SET status = 'pending', attempts = 0, next_attempt_at = now(), leased_until = NULL,
                updated_at = now()
          WHERE endpoint_id = $1 AND id = $2
            AND NOT (status = 'pending' AND leased_until > now())
         RETURNING id, event_id, event_type, status, attempts, next_attempt_at, last_status,
                   last_error, last_latency_ms, last_response, created_at, updated_at",
    )
    .bind(endpoint)
    .bind(delivery)
    .fetch_optional(db)
    .await
}

/// Whether an endpoint has a delivery of this id.
pub async fn has_delivery(
    db: impl PgExecutor<'_>,
    endpoint: Uuid,
    delivery: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM webhook_deliveries WHERE endpoint_id = $1 AND id = $2)",
    )
    .bind(endpoint)
    .bind(delivery)
    .fetch_one(db)
    .await
}

// ---- the dispatcher's side ----

/// An active endpoint, as the dispatcher matches events against it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Target {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub event_types: Vec<String>,
    pub scope: String,
    pub registered_at: DateTime<Utc>,
}

pub async fn active_targets(db: &PgPool) -> Result<Vec<Target>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, owner_id, event_types, scope, registered_at
           FROM webhook_endpoints WHERE status = 'active'",
    )
    .fetch_all(db)
    .await
}

/// An event of the log, read by the dispatcher.
pub struct Candidate<'a> {
    pub partition: i32,
    pub offset: i64,
    pub envelope: &'a EventEnvelope,
}

/// What the read models say about the aggregates of a batch: whom a post,
/// a medium or a webhook belongs to, and who is in a room.
#[derive(Default)]
pub struct Owners {
    posts: HashMap<Uuid, Uuid>,
    media: HashMap<Uuid, Uuid>,
    webhooks: HashMap<Uuid, Uuid>,
    /// When each (room, user) pair's membership began.
    room_members: HashMap<(Uuid, Uuid), DateTime<Utc>>,
}

impl Owners {
    /// Reads what `concerns` needs for these events and these users.
    pub async fn load(
        db: &PgPool,
        events: &[&EventEnvelope],
        users: &[Uuid],
    ) -> Result<Owners, sqlx::Error> {
        let ids = |kind: AggregateType| -> Vec<Uuid> {
            let set: HashSet<Uuid> = events
                .iter()
                .filter(|e| e.aggregate.kind == kind)
                .filter_map(|e| e.aggregate.id.parse().ok())
                .collect();
            set.into_iter().collect()
        };
        let pairs = |rows: Vec<(Uuid, Uuid)>| rows.into_iter().collect::<HashMap<_, _>>();
        let (posts, media, webhooks, rooms) = (
            ids(AggregateType::Post),
            ids(AggregateType::Media),
            ids(AggregateType::Webhook),
            ids(AggregateType::Room),
        );
        let mut owners = Owners::default();
        if !posts.is_empty() {
            owners.posts = pairs(
                sqlx::query_as("SELECT id, author_id FROM posts WHERE id = ANY($1)")
                    .bind(&posts)
                    .fetch_all(db)
                    .await?,
            );
        }
        if !media.is_empty() {
            owners.media = pairs(
                sqlx::query_as("SELECT id, owner_id FROM media WHERE id = ANY($1)")
                    .bind(&media)
                    .fetch_all(db)
                    .await?,
            );
        }
        if !webhooks.is_empty() {
            owners.webhooks = pairs(
                sqlx::query_as("SELECT id, owner_id FROM webhook_endpoints WHERE id = ANY($1)")
                    .bind(&webhooks)
                    .fetch_all(db)
                    .await?,
            );
        }
        if !rooms.is_empty() && !users.is_empty() {
            let rows: Vec<(Uuid, Uuid, DateTime<Utc>)> = sqlx::query_as(
                "SELECT room_id, user_id, joined_at FROM room_members
                  WHERE room_id = ANY($1) AND user_id = ANY($2)",
            )
            .bind(&rooms)
            .bind(users)
            .fetch_all(db)
            .await?;
            owners.room_members = rows
                .into_iter()
                .map(|(room, user, joined)| ((room, user), joined))
                .collect();
        }
        Ok(owners)
    }

    /// Whether an event concerns `user`, for an endpoint of scope `own`:
    /// the user caused it, or it is about their account, inbox, post,
    /// medium or webhook, a follow of or by them, or a room they are in.
    /// Uniqueness claims (which name an email address) concern no one.
    pub fn concerns(&self, user: Uuid, event: &EventEnvelope) -> bool {
        let kind = event.aggregate.kind;
        if matches!(kind, AggregateType::Email | AggregateType::Username) {
            return false;
        }
        if event.actor == Some(user) {
            return true;
        }
        let id = &event.aggregate.id;
        let uuid = id.parse::<Uuid>().ok();
        match kind {
            AggregateType::Account | AggregateType::Inbox => uuid == Some(user),
            AggregateType::Follow => id.split(':').any(|part| part.parse() == Ok(user)),
            AggregateType::Post => uuid.and_then(|p| self.posts.get(&p)) == Some(&user),
            AggregateType::Media => uuid.and_then(|m| self.media.get(&m)) == Some(&user),
            AggregateType::Webhook => uuid.and_then(|w| self.webhooks.get(&w)) == Some(&user),
            // A member since before the event (what happened before they
            // joined is not theirs to receive).
            AggregateType::Room => uuid
                .and_then(|r| self.room_members.get(&(r, user)))
                .is_some_and(|joined| *joined <= event.occurred_at),
            AggregateType::Email | AggregateType::Username => false,
        }
    }
}

/// A delivery to queue.
pub struct NewDelivery {
    pub endpoint: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub aggregate_key: String,
    pub partition: i32,
    pub offset: i64,
    pub body: String,
}

/// Queues deliveries (once per endpoint and event, however often the batch
/// is read). An endpoint with `queue_max` pending deliveries takes further
/// ones as `dead` (`queue_full`): kept in its log, retried by hand.
pub async fn enqueue(
    db: &PgPool,
    deliveries: &[NewDelivery],
    queue_max: i64,
) -> Result<u64, sqlx::Error> {
    if deliveries.is_empty() {
        return Ok(0);
    }
    // The id derives from endpoint and event: the same delivery read twice
    // is the same row.
    let ids: Vec<Uuid> = deliveries
        .iter()
        .map(|d| Uuid::new_v5(&d.endpoint, d.event_id.as_bytes()))
        .collect();
    let endpoints: Vec<Uuid> = deliveries.iter().map(|d| d.endpoint).collect();
    let events: Vec<Uuid> = deliveries.iter().map(|d| d.event_id).collect();
    let types: Vec<&str> = deliveries.iter().map(|d| d.event_type.as_str()).collect();
    let keys: Vec<&str> = deliveries
        .iter()
        .map(|d| d.aggregate_key.as_str())
        .collect();
    let partitions: Vec<i32> = deliveries.iter().map(|d| d.partition).collect();
    let offsets: Vec<i64> = deliveries.iter().map(|d| d.offset).collect();
    let bodies: Vec<&str> = deliveries.iter().map(|d| d.body.as_str()).collect();
    let queued = sqlx::query(
        "WITH new AS (
           SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[],
                                $6::int[], $7::bigint[], $8::text[])
                      AS n(id, endpoint_id, event_id, event_type, aggregate_key, partition, \"offset\", body)
         ), waiting AS (
           SELECT endpoint_id, count(*) AS n FROM webhook_deliveries
            WHERE status = 'pending' AND endpoint_id IN (SELECT endpoint_id FROM new)
            GROUP BY endpoint_id
         )
         INSERT INTO webhook_deliveries
           (id, endpoint_id, event_id, event_type, aggregate_key, partition, \"offset\", body,
            status, last_error, next_attempt_at)
         SELECT new.id, new.endpoint_id, new.event_id, new.event_type, new.aggregate_key,
                new.partition, new.\"offset\", new.body,
                CASE WHEN coalesce(w.n, 0) >= $9 THEN 'dead' ELSE 'pending' END,
                CASE WHEN coalesce(w.n, 0) >= $9 THEN 'queue_full' END,
                now()
           FROM new LEFT JOIN waiting w USING (endpoint_id)
         ON CONFLICT (endpoint_id, event_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&endpoints)
    .bind(&events)
    .bind(&types)
    .bind(&keys)
    .bind(&partitions)
    .bind(&offsets)
    .bind(&bodies)
    .bind(queue_max)
    .execute(db)
    .await?;
    Ok(queued.rows_affected())
}

/// How deliveries are claimed.
#[derive(Debug, Clone, Copy)]
pub struct Claim {
    /// Deliveries per claim.
    pub limit: i64,
    /// The most deliveries of one endpoint in flight at once.
    pub per_endpoint: i64,
    /// How long a claimed delivery is someone's; past it (the sender died),
    /// it is due again.
    pub lease_secs: f64,
}

/// A delivery claimed to be sent now.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Due {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub body: String,
    /// This attempt's number, from 1.
    pub attempts: i32,
    pub url: String,
    pub secret: String,
}

/// Claims due deliveries: of active endpoints, each the first pending one
/// of its aggregate for its endpoint, at most `per_endpoint` of an endpoint
/// in flight. Any number of dispatchers may claim at once: a row is leased
/// by the one update that finds it free.
pub async fn claim(db: &PgPool, claim: Claim) -> Result<Vec<Due>, sqlx::Error> {
    sqlx::query_as(
        "WITH flying AS (
           SELECT endpoint_id, count(*) AS n FROM webhook_deliveries
            WHERE status = 'pending' AND leased_until > now()
            GROUP BY endpoint_id
         ), candidates AS (
           SELECT d.id, d.next_attempt_at,
                  row_number() OVER (PARTITION BY d.endpoint_id
                                     ORDER BY d.next_attempt_at, d.partition, d.\"offset\") AS n,
                  coalesce(f.n, 0) AS in_flight
             FROM webhook_deliveries d
             JOIN webhook_endpoints e ON e.id = d.endpoint_id AND e.status = 'active'
             LEFT JOIN flying f ON f.endpoint_id = d.endpoint_id
            WHERE d.status = 'pending' AND d.next_attempt_at <= now()
              AND (d.leased_until IS NULL OR d.leased_until <= now())
              AND NOT EXISTS (
                    SELECT 1 FROM webhook_deliveries b
                     WHERE b.endpoint_id = d.endpoint_id AND b.aggregate_key = d.aggregate_key
                       AND b.status = 'pending'
                       AND (b.partition, b.\"offset\") < (d.partition, d.\"offset\"))
         ), chosen AS (
           SELECT id FROM candidates WHERE n + in_flight <= $2
            ORDER BY next_attempt_at LIMIT $1
         )
         UPDATE webhook_deliveries d
            SET leased_until = now() + make_interval(secs => $3), attempts = d.attempts + 1,
                updated_at = now()
           FROM chosen, webhook_endpoints e, webhook_secrets s
          WHERE d.id = chosen.id AND e.id = d.endpoint_id AND s.endpoint_id = d.endpoint_id
            AND d.status = 'pending' AND (d.leased_until IS NULL OR d.leased_until <= now())
         RETURNING d.id, d.endpoint_id, d.event_id, d.event_type, d.body, d.attempts, e.url,
                   s.secret",
    )
    .bind(claim.limit)
    .bind(claim.per_endpoint)
    .bind(claim.lease_secs)
    .fetch_all(db)
    .await
}

/// What became of an attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// `delivered`, `failed`, `dead`, or `pending` (tried again at `retry_at`).
    pub status: &'static str,
    pub retry_at: Option<DateTime<Utc>>,
    pub http_status: Option<i32>,
    pub error: Option<String>,
    pub latency_ms: i32,
    pub response: Option<String>,
}

/// Records an attempt, and the endpoint's failing streak: the time since
/// which every attempt at it has failed (`None` once one succeeds).
pub async fn record(
    db: &PgPool,
    due: &Due,
    attempt: &Attempt,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "UPDATE webhook_deliveries
            SET status = $2, next_attempt_at = coalesce($3, next_attempt_at), leased_until = NULL,
                last_status = $4, last_error = $5, last_latency_ms = $6, last_response = $7,
                updated_at = now()
          WHERE id = $1",
    )
    .bind(due.id)
    .bind(attempt.status)
    .bind(attempt.retry_at)
    .bind(attempt.http_status)
    .bind(&attempt.error)
    .bind(attempt.latency_ms)
    .bind(&attempt.response)
    .execute(&mut *tx)
    .await?;
    let since = if attempt.status == "delivered" {
        sqlx::query("DELETE FROM webhook_failures WHERE endpoint_id = $1")
            .bind(due.endpoint_id)
            .execute(&mut *tx)
            .await?;
        None
    } else {
        sqlx::query_scalar(
            "INSERT INTO webhook_failures (endpoint_id, failing_since) VALUES ($1, now())
             ON CONFLICT (endpoint_id) DO UPDATE SET failing_since = webhook_failures.failing_since
             RETURNING failing_since",
        )
        .bind(due.endpoint_id)
        .fetch_optional(&mut *tx)
        .await?
    };
    tx.commit().await?;
    Ok(since)
}

/// The projector's next offset per partition.
pub async fn projected_offsets(db: &PgPool) -> Result<HashMap<i32, i64>, sqlx::Error> {
    let rows: Vec<(i32, i64)> =
        sqlx::query_as("SELECT partition, next_offset FROM projector_offsets")
            .fetch_all(db)
            .await?;
    Ok(rows.into_iter().collect())
}

/// Which of these events the projector applied (the sequence rule admitted
/// them): those in the event index at their own place in the log.
pub async fn applied(
    db: &PgPool,
    events: &[Candidate<'_>],
) -> Result<HashSet<(i32, i64)>, sqlx::Error> {
    let mut columns: (Vec<&str>, Vec<&str>, Vec<i64>) = Default::default();
    for c in events {
        columns.0.push(c.envelope.aggregate.kind.as_str());
        columns.1.push(&c.envelope.aggregate.id);
        columns.2.push(c.envelope.sequence as i64);
    }
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT i.partition, i.\"offset\" FROM event_index i
           JOIN UNNEST($1::text[], $2::text[], $3::bigint[]) AS k(t, id, s)
             ON i.aggregate_type = k.t AND i.aggregate_id = k.id AND i.sequence = k.s",
    )
    .bind(&columns.0)
    .bind(&columns.1)
    .bind(&columns.2)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().collect())
}
