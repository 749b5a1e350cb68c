//! The admin routes, for analysts and operators: the event log as NDJSON,
//! an aggregate folded as of an instant, and how far the projector is.
//!
//! Admins are the accounts whose usernames `TIDINGS_ADMIN_USERNAMES` lists
//! (the [`Admin`] extractor): anyone else signed in gets 403 `forbidden`,
//! anyone not signed in 401. What the routes show is redacted as
//! `tidings replay` redacts it (email addresses, phone numbers; password
//! hashes never), unless `include_private=true`.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tidings_projections::log::{self, Bound, Filter, LogError, LogQuery, LogReader};
use tidings_schemas::kafka::ADMIN_TIMEOUT;
use tidings_schemas::{AggregateRef, AnyState, DomainEvent, EventEnvelope};

use crate::auth::Authenticated;
use crate::error::{ApiError, Code, Problem};
use crate::ApiState;

/// Events one page of `GET /api/admin/events` holds by default, and at most.
const DEFAULT_EVENTS: usize = 1_000;
const MAX_EVENTS: usize = 10_000;
/// Bytes of NDJSON past which a page ends (the page is held whole before
/// it is sent, for its `X-Next-From`).
const MAX_PAGE_BYTES: usize = 8 << 20;
/// How long one page may read the log (a narrow filter over a long range
/// finds little per record read); the rest is the next page's.
const MAX_PAGE_TIME: Duration = Duration::from_secs(20);
/// The most events one fold (`as_of`) reads from the log.
const MAX_FOLD_EVENTS: i64 = 10_000;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/admin/events", web::get().to(events))
        .route(
            "/api/admin/aggregates/{type}/{id}",
            web::get().to(aggregate),
        )
        .route("/api/admin/projections", web::get().to(projections));
}

/// A signed-in caller whose username is among `TIDINGS_ADMIN_USERNAMES`.
#[derive(Debug, Clone)]
pub struct Admin(pub Authenticated);

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let state = req.app_data::<web::Data<ApiState>>().cloned();
        let who = Authenticated::from_request(req, payload);
        Box::pin(async move {
            let who = who.await?;
            let admins = state.map(|s| s.settings.admins.clone()).unwrap_or_default();
            let is_admin = who
                .account
                .as_ref()
                .is_some_and(|a| admins.contains(&a.username.to_lowercase()));
            if is_admin {
                Ok(Admin(who))
            } else {
                Err(ApiError::new(Code::Forbidden, "for the site's admins only"))
            }
        })
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Where to begin: `start` (default), an offset (every partition),
    /// partition offsets `0:120,1:98` (as `X-Next-From` gives), or a time
    /// (RFC 3339, or a date `YYYY-MM-DD`).
    pub from: Option<String>,
    /// Where to stop: `end` (default: the end as the request begins), an
    /// offset (excluded), partition offsets, or a time (included).
    pub until: Option<String>,
    /// Event types, comma-separated (`post.created,room.message_posted`).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
    /// Aggregates, comma-separated: a type (`room`) or a type and id (`room:<id>`).
    pub aggregate: Option<String>,
    /// Events in this page (default 1,000, at most 10,000).
    pub limit: Option<u32>,
    /// Keep email addresses and phone numbers.
    #[serde(default)]
    pub include_private: bool,
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::new(Code::InvalidQuery, detail)
}

impl EventsQuery {
    fn to_query(&self) -> Result<(LogQuery, usize), ApiError> {
        let bound = |text: &Option<String>, default: Bound, name: &str| match text {
            None => Ok(default),
            Some(text) => text
                .parse::<Bound>()
                .map_err(|e| invalid(format!("{name}: {e}"))),
        };
        let from = bound(&self.from, Bound::Start, "from")?;
        let until = bound(&self.until, Bound::End, "until")?;
        if from == Bound::End || until == Bound::Start {
            return Err(invalid("`from` cannot be `end`, nor `until` be `start`"));
        }
        let mut filter = Filter::default();
        for name in list(&self.event_type) {
            filter.add_type(name).map_err(|e| invalid(e.to_string()))?;
        }
        for spec in list(&self.aggregate) {
            filter
                .add_aggregate(spec)
                .map_err(|e| invalid(e.to_string()))?;
        }
        let limit = match self.limit {
            None => DEFAULT_EVENTS,
            Some(n) if (1..=MAX_EVENTS as u32).contains(&n) => n as usize,
            Some(_) => return Err(invalid(format!("limit is 1 to {MAX_EVENTS}"))),
        };
        Ok((
            LogQuery {
                from,
                until,
                filter,
                include_private: self.include_private,
            },
            limit,
        ))
    }
}

fn list(text: &Option<String>) -> impl Iterator<Item = &str> {
    text.iter()
        .flat_map(|t| t.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn log_error(error: LogError) -> ApiError {
    match error {
        LogError::Query(error) => invalid(error.to_string()),
        LogError::Kafka(error) => {
            tracing::warn!(%error, "the event log cannot be read");
            ApiError::unavailable(
                Code::LogUnavailable,
                "the event log cannot be read; retry",
                2,
            )
        }
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(ApiError::internal)
}

#[utoipa::path(get, path = "/api/admin/events", tag = "admin",
    params(EventsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The events of the range that pass the filters, one envelope (event-envelope.v2.json) per line, in log order per partition: upcast to their current version, off-chain events (the sequence rule) left out. A page ends at `limit` events, 8 MiB or 20 s of reading; then `X-Next-From` is where the next page begins (pass it as `from`, with the same `until` and filters).",
            content_type = "application/x-ndjson", body = String,
            headers(("X-Next-From" = String, description = "partition offsets where the next page begins; absent once the range is read"))),
        (status = 400, description = "`invalid_query`: a bound, type, aggregate or limit that cannot be read", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: the caller is not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`log_unavailable`: Kafka cannot be reached; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %admin.0.user_id))]
pub(crate) async fn events(
    state: web::Data<ApiState>,
    admin: Admin,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let (query, limit) = query.to_query()?;
    let kafka = state.settings.kafka.clone();
    let mut reader = blocking(move || LogReader::open(&kafka, query))
        .await?
        .map_err(log_error)?;
    let started = Instant::now();
    let mut body = Vec::new();
    let mut kept = 0;
    while !reader.is_done()
        && kept < limit
        && body.len() < MAX_PAGE_BYTES
        && started.elapsed() < MAX_PAGE_TIME
    {
        let want = (limit - kept).min(1_000);
        let (back, batch) = blocking(move || {
            let batch = reader.next_batch(want, Duration::from_millis(200));
            (reader, batch)
        })
        .await?;
        reader = back;
        for record in batch.map_err(log_error)? {
            serde_json::to_writer(&mut body, &record.event).map_err(ApiError::internal)?;
            body.push(b'\n');
            kept += 1;
        }
    }
    let mut response = HttpResponse::Ok();
    response.content_type("application/x-ndjson");
    if !reader.is_done() {
        response.insert_header(("X-Next-From", reader.resume_from().to_string()));
    }
    Ok(response.body(body))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AsOfQuery {
    /// The instant (RFC 3339); default: now.
    pub as_of: Option<String>,
    /// Keep email addresses and phone numbers.
    #[serde(default)]
    pub include_private: bool,
}

/// An aggregate as it was at an instant.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AggregateAsOf {
    /// `{type, id}`.
    #[schema(value_type = Object)]
    pub aggregate: AggregateRef,
    pub as_of: DateTime<Utc>,
    /// How many events it had then (its `sequence` then).
    pub version: u64,
    /// Its state folded from those events, as its decider holds it.
    #[schema(value_type = Object)]
    pub state: Value,
    /// Those events, oldest first, as `/api/admin/events` shows them.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<EventEnvelope>,
}

#[utoipa::path(get, path = "/api/admin/aggregates/{type}/{id}", tag = "admin",
    params(
        ("type" = String, Path, description = "aggregate type: account, email, username, post, follow, inbox, media, room"),
        ("id" = String, Path, description = "aggregate id"),
        AsOfQuery
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The aggregate's state as of the instant (its events up to then folded by its decider), and those events. Only events the projector has indexed are seen: a read with `X-Min-Position` waits for a write.", body = AggregateAsOf),
        (status = 400, description = "`invalid_query`: `as_of` is not an RFC 3339 time", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: the caller is not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: no such aggregate type, or no event of that aggregate", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`history_too_long`: more than 10,000 events up to `as_of`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`log_unavailable`: Kafka cannot be reached; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %admin.0.user_id))]
pub(crate) async fn aggregate(
    state: web::Data<ApiState>,
    admin: Admin,
    path: web::Path<(String, String)>,
    query: web::Query<AsOfQuery>,
) -> Result<HttpResponse, ApiError> {
    let (kind, id) = path.into_inner();
    let kind = log::parse_aggregate_type(&kind).map_err(|_| ApiError::not_found())?;
    let as_of = match &query.as_of {
        None => Utc::now(),
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map_err(|e| invalid(format!("as_of: {e} (an RFC 3339 time)")))?
            .with_timezone(&Utc),
    };
    // The chain from its start, up to the first event past the instant.
    let rows: Vec<(i64, i32, i64, DateTime<Utc>)> = sqlx::query_as(
        r#"SELECT sequence, partition, "offset", occurred_at FROM event_index
           WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence LIMIT $3"#,
    )
    .bind(kind.as_str())
    .bind(&id)
    .bind(MAX_FOLD_EVENTS + 1)
    .fetch_all(&state.db)
    .await?;
    if rows.is_empty() {
        return Err(ApiError::not_found());
    }
    let upto: Vec<(i64, i32, i64)> = rows
        .iter()
        .enumerate()
        .take_while(|(i, (sequence, _, _, at))| *sequence == *i as i64 + 1 && *at <= as_of)
        .map(|(_, (sequence, partition, offset, _))| (*sequence, *partition, *offset))
        .collect();
    if upto.len() as i64 > MAX_FOLD_EVENTS {
        return Err(ApiError::new(
            Code::HistoryTooLong,
            format!("more than {MAX_FOLD_EVENTS} events up to as_of: read them with `tidings replay --aggregate {}:<id>`", kind.as_str()),
        ));
    }
    let mut envelopes = Vec::with_capacity(upto.len());
    if let Some(&(_, partition, _)) = upto.first() {
        let offsets: Vec<i64> = upto.iter().map(|(_, _, o)| *o).collect();
        let kafka = state.settings.kafka.clone();
        let read = blocking(move || log::read_at(&kafka, partition, &offsets))
            .await?
            .map_err(log_error)?;
        for (offset, envelope) in read {
            // The index names this aggregate's events; a record there that
            // is not one (a log that was replaced) is left out.
            let expected = upto.iter().find(|(_, _, o)| *o == offset);
            if expected.is_some_and(|(sequence, _, _)| {
                envelope.aggregate.kind == kind
                    && envelope.aggregate.id == id
                    && envelope.sequence as i64 == *sequence
            }) {
                envelopes.push(envelope);
            }
        }
        envelopes.sort_by_key(|e| e.sequence);
        if envelopes.len() != upto.len() {
            return Err(ApiError::internal(anyhow::anyhow!(
                "the log holds {} of the {} indexed events of {}:{id}",
                envelopes.len(),
                upto.len(),
                kind.as_str()
            )));
        }
    }
    let mut folded = AnyState::initial(kind);
    for envelope in &envelopes {
        let event = DomainEvent::decode(envelope).map_err(ApiError::internal)?;
        folded = folded.evolve(&event);
    }
    let mut state_value = match serde_json::to_value(&folded).map_err(ApiError::internal)? {
        // `{"Account": {…}}`: the decider's name says nothing the path does not.
        Value::Object(map) if map.len() == 1 => map
            .into_iter()
            .next()
            .map(|(_, v)| v)
            .unwrap_or(Value::Null),
        other => other,
    };
    if !query.include_private {
        redact(&mut state_value);
    }
    Ok(HttpResponse::Ok().json(AggregateAsOf {
        aggregate: AggregateRef::new(kind, id),
        as_of,
        version: envelopes.len() as u64,
        state: state_value,
        events: envelopes
            .iter()
            .map(|e| e.for_analysts(query.include_private))
            .collect(),
    }))
}

/// Leaves the personal fields out of a state, wherever they are in it.
fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for field in tidings_schemas::envelope::PERSONAL_FIELDS {
                map.remove(*field);
            }
            map.remove("password_hash");
            map.values_mut().for_each(redact);
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// How far one projection is, per partition.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProjectionLag {
    /// `read_models`: every read model, the channel outbox and the event
    /// index, committed together in one transaction per batch.
    pub name: String,
    pub partitions: Vec<PartitionLag>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PartitionLag {
    pub partition: i32,
    /// The next offset the projector applies.
    pub offset: i64,
    /// The end of the partition of `<prefix>.events`.
    pub end: i64,
    /// Events not projected yet (`end - offset`).
    pub lag: i64,
    /// How far behind the newest event projected is, while there is lag.
    pub seconds_behind: f64,
    /// When the newest event projected occurred.
    pub last_event_at: Option<DateTime<Utc>>,
    /// When the projector last committed on this partition.
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Projections {
    pub projections: Vec<ProjectionLag>,
}

#[utoipa::path(get, path = "/api/admin/projections", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Per projection and partition: offset, lag, time behind", body = Projections),
        (status = 403, description = "`forbidden`: the caller is not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`log_unavailable`: Kafka cannot be reached; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %admin.0.user_id))]
pub(crate) async fn projections(
    state: web::Data<ApiState>,
    admin: Admin,
) -> Result<HttpResponse, ApiError> {
    /// partition, next offset, updated at, last event at.
    type OffsetRow = (i32, i64, DateTime<Utc>, Option<DateTime<Utc>>);
    let rows: Vec<OffsetRow> = sqlx::query_as(
        "SELECT partition, next_offset, updated_at, last_event_at FROM projector_offsets",
    )
    .fetch_all(&state.db)
    .await?;
    let kafka = state.settings.kafka.clone();
    let ends = blocking(move || -> Result<Vec<i64>, rdkafka::error::KafkaError> {
        let consumer: BaseConsumer = kafka.client().create()?;
        let topic = kafka.topics().events;
        (0..kafka.partitions)
            .map(|p| Ok(consumer.fetch_watermarks(&topic, p, ADMIN_TIMEOUT)?.1))
            .collect()
    })
    .await?
    .map_err(|e| log_error(e.into()))?;
    let partitions = ends
        .into_iter()
        .enumerate()
        .map(|(partition, end)| {
            let partition = partition as i32;
            let row = rows.iter().find(|r| r.0 == partition);
            let offset = row.map_or(0, |r| r.1);
            let lag = (end - offset).max(0);
            let last_event_at = row.and_then(|r| r.3);
            let seconds_behind = match (lag, last_event_at) {
                (0, _) | (_, None) => 0.0,
                (_, Some(at)) => (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0,
            };
            PartitionLag {
                partition,
                offset,
                end,
                lag,
                seconds_behind,
                last_event_at,
                updated_at: row.map(|r| r.2),
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(Projections {
        projections: vec![ProjectionLag {
            name: "read_models".into(),
            partitions,
        }],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_loses_its_personal_fields_wherever_they_are() {
        let mut state = serde_json::json!({
            "username": "ada", "email": "ada@example.com",
            "details": {"phone_number": "+15551234567", "location": "London"},
            "claims": [{"email": "x@example.com", "kind": "email"}]
        });
        redact(&mut state);
        assert_eq!(
            state,
            serde_json::json!({
                "username": "ada", "details": {"location": "London"},
                "claims": [{"kind": "email"}]
            })
        );
    }

    #[test]
    fn a_page_query_reads_its_bounds_filters_and_limit() {
        let query = EventsQuery {
            from: Some("0:4,1:2".into()),
            until: None,
            event_type: Some("post.created, room.created".into()),
            aggregate: Some("room:1".into()),
            limit: Some(5),
            include_private: false,
        };
        let (read, limit) = query.to_query().unwrap();
        assert_eq!(limit, 5);
        assert_eq!(read.until, Bound::End);
        assert_eq!(read.filter.types, ["post.created", "room.created"]);
        for (from, limit, typ) in [
            (Some("soon"), None, None),
            (None, Some(0), None),
            (None, Some(10_001), None),
            (None, None, Some("post.nope")),
        ] {
            let bad = EventsQuery {
                from: from.map(Into::into),
                until: None,
                event_type: typ.map(Into::into),
                aggregate: None,
                limit,
                include_private: false,
            };
            assert_eq!(bad.to_query().unwrap_err().code, "invalid_query");
        }
    }
}
