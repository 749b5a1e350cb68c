//! Webhooks: a user registers endpoints that receive, signed, the events of
//! the types they name (those that concern the user; admins may register
//! endpoints for every event), lists and deletes them, reads each one's
//! delivery log and sends a delivery again.
//!
//! Registering is a command (`webhook.register`, one aggregate per
//! endpoint); the secret is made here, shown once in the answer, and kept
//! beside the read model, never in the log. A URL is refused (422
//! `webhook_url_refused`) unless it is https and every address its host
//! resolves to is public, or allowlisted by the operator
//! (`TIDINGS_WEBHOOK_ALLOW`).

use actix_web::{web, HttpResponse};
use argon2::password_hash::rand_core::{OsRng, RngCore};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tidings_commands::AnyCommand;
use tidings_domain::webhook::{self, Registration, Scope};
use tidings_projections::webhooks::{self as read, Delivery, Endpoint};
use tidings_schemas::{AggregateRef, AggregateType, DeciderKind, Position};
use uuid::Uuid;

use crate::auth::Authenticated;
use crate::context::RequestContext;
use crate::error::{accepted, ApiError, Code, FieldError, Problem};
use crate::page::{Page, PageQuery, Paged};
use crate::ApiState;

/// WebhookList one user may have.
pub const MAX_ENDPOINTS: i64 = 20;
/// Event types one endpoint may name.
const MAX_TYPES: usize = 64;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/webhooks", web::post().to(register))
        .route("/api/webhooks", web::get().to(list))
        .route("/api/webhooks/{id}", web::delete().to(delete))
        .route("/api/webhooks/{id}/deliveries", web::get().to(deliveries))
        .route(
            "/api/webhooks/{id}/deliveries/{delivery_id}/retry",
            web::post().to(retry),
        );
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterWebhookBody {
    /// Where deliveries are posted: https, to a public address.
    url: String,
    /// The event types to receive (`post.created`, `room.message_posted`…).
    events: Vec<String>,
    /// `own` (default): the events that concern the caller — their own
    /// doings, their account, posts, media and webhooks, follows of or by
    /// them, rooms they are in. `all`: every event of the types (admins only).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    scope: Option<String>,
}

/// A new endpoint, with its secret: shown this once.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct RegisteredWebhook {
    id: Uuid,
    /// `whsec_<base64>`: the HMAC-SHA256 key is the base64-decoded part.
    secret: String,
    url: String,
    events: Vec<String>,
    scope: String,
    #[schema(value_type = String)]
    position: Position,
}

fn is_admin(state: &ApiState, me: &Authenticated) -> bool {
    me.account
        .as_ref()
        .is_some_and(|a| state.settings.admins.contains(&a.username.to_lowercase()))
}

/// Every event type of the registry but the uniqueness claims' (which
/// name email addresses, and are never sent).
fn known_type(name: &str) -> bool {
    DeciderKind::ALL
        .iter()
        .filter(|d| **d != DeciderKind::Claim)
        .any(|d| d.event_types().contains(&name))
}

/// A fresh secret: 32 random bytes.
fn secret() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

#[utoipa::path(post, path = "/api/webhooks", tag = "webhooks",
    request_body = RegisterWebhookBody,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "RegisteredWebhook; `secret` is shown this once", body = RegisteredWebhook, headers(("X-Position" = String))),
        (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: scope `all` is for admins", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed` (unknown event types, a bad scope), `webhook_url_refused` (not https, or a loopback, private, link-local or other internal address that is not allowlisted, or a host that does not resolve), `too_many_webhooks`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn register(
    state: web::Data<ApiState>,
    me: Authenticated,
    ctx: RequestContext,
    body: web::Json<RegisterWebhookBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let mut errors = Vec::new();
    let scope = match body.scope.as_deref() {
        None | Some("own") => Scope::Own,
        Some("all") => Scope::All,
        Some(_) => {
            errors.push(FieldError::new("scope", "`own` or `all`"));
            Scope::Own
        }
    };
    let mut events: Vec<String> = Vec::new();
    for name in &body.events {
        if !known_type(name) {
            errors.push(FieldError::new(
                "events",
                format!("{name:?} is not an event type of Tidings"),
            ));
        } else if !events.contains(name) {
            events.push(name.clone());
        }
    }
    if body.events.is_empty() || body.events.len() > MAX_TYPES {
        errors.push(FieldError::new(
            "events",
            format!("1 to {MAX_TYPES} event types"),
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    if scope == Scope::All && !is_admin(&state, &me) {
        return Err(ApiError::new(
            Code::Forbidden,
            "scope `all` (every event of the types) is for the site's admins",
        ));
    }
    let url = state
        .settings
        .destinations
        .check_url(&body.url)
        .await
        .map_err(|refused| ApiError::new(Code::WebhookUrlRefused, refused.to_string()))?;
    // A retry with the same Idempotency-Key is answered with the first
    // answer (its id and secret) by the idempotency layer; this id is new.
    let id = match &ctx.idempotency_key {
        Some(_) => ctx.command_id(Some(me.user_id)),
        None => Uuid::new_v4(),
    };
    // A retry of a registration that was not answered keeps the secret
    // stored by the first. The cap counts the secrets, under a lock per
    // user: concurrent registrations cannot pass it together.
    let secret = read::store_secret(&state.db, me.user_id, id, &secret(), MAX_ENDPOINTS)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                Code::TooManyWebhooks,
                format!("a user has at most {MAX_ENDPOINTS} webhooks: delete one first"),
            )
        })?;
    let command = ctx.envelope(
        ctx.command_id(Some(me.user_id)),
        Some(me.user_id),
        AggregateRef::new(AggregateType::Webhook, id.to_string()),
        AnyCommand::Webhook(webhook::Command::Register(Registration {
            owner: me.user_id,
            url: url.to_string(),
            events: events.clone(),
            scope,
            at: ctx.issued_at,
        })),
    );
    let position = accepted(state.bus.send(&command).await?)?;
    // The list reads the read model: wait for it (bounded) like other writes.
    state.projected(&position).await;
    Ok(HttpResponse::Created()
        .insert_header(("X-Position", position.to_string()))
        .insert_header(("Location", format!("/api/webhooks/{id}")))
        .json(RegisteredWebhook {
            id,
            secret,
            url: url.to_string(),
            events,
            scope: match scope {
                Scope::Own => "own".into(),
                Scope::All => "all".into(),
            },
            position,
        }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct WebhookList {
    items: Vec<Endpoint>,
}

#[utoipa::path(get, path = "/api/webhooks", tag = "webhooks",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's endpoints, latest first (never their secrets)", body = WebhookList),
        (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id))]
pub(crate) async fn list(
    state: web::Data<ApiState>,
    req: actix_web::HttpRequest,
    me: Authenticated,
) -> Result<HttpResponse, ApiError> {
    if let Some(needed) = crate::middleware::MinPosition::of(&req) {
        if !state.projected(&needed).await {
            return Err(ApiError::new(
                Code::PositionNotReached,
                "the read model has not reached X-Min-Position",
            ));
        }
    }
    let items = read::by_owner(&state.db, me.user_id, MAX_ENDPOINTS).await?;
    Ok(HttpResponse::Ok().json(WebhookList { items }))
}

/// The endpoint, if the caller may manage it (its owner, or an admin).
async fn managed(state: &ApiState, me: &Authenticated, id: Uuid) -> Result<Endpoint, ApiError> {
    match read::by_id(&state.db, id).await? {
        Some(endpoint) if endpoint.owner_id == me.user_id || is_admin(state, me) => Ok(endpoint),
        _ => Err(ApiError::new(Code::NotFound, "no such webhook")),
    }
}

#[utoipa::path(delete, path = "/api/webhooks/{id}", tag = "webhooks",
    params(("id" = Uuid, Path, description = "the endpoint")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted, with its pending deliveries and its log", headers(("X-Position" = String))),
        (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such webhook of the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn delete(
    state: web::Data<ApiState>,
    me: Authenticated,
    ctx: RequestContext,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    managed(&state, &me, id).await?;
    let command = ctx.envelope(
        ctx.command_id(Some(me.user_id)),
        Some(me.user_id),
        AggregateRef::new(AggregateType::Webhook, id.to_string()),
        AnyCommand::Webhook(webhook::Command::Delete {
            by: me.user_id,
            admin: is_admin(&state, &me),
            at: ctx.issued_at,
        }),
    );
    let position = accepted(state.bus.send(&command).await?)?;
    state.projected(&position).await;
    Ok(HttpResponse::NoContent()
        .insert_header(("X-Position", position.to_string()))
        .finish())
}

#[utoipa::path(get, path = "/api/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = Uuid, Path, description = "the endpoint"), PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The endpoint's deliveries, latest first: status, attempts, the last answer's status, latency and body (its first KiB)", body = Paged<Delivery>),
        (status = 400, description = "`invalid_query`: a bad limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such webhook of the caller's", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id))]
pub(crate) async fn deliveries(
    state: web::Data<ApiState>,
    me: Authenticated,
    id: web::Path<Uuid>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = Page::try_from(&*query)?;
    let endpoint = managed(&state, &me, id.into_inner()).await?;
    let items = read::deliveries(&state.db, endpoint.id, page.after, page.limit).await?;
    Ok(HttpResponse::Ok().json(Paged::of(items, page, |d: &Delivery| (d.created_at, d.id))))
}

#[utoipa::path(post, path = "/api/webhooks/{id}/deliveries/{delivery_id}/retry", tag = "webhooks",
    params(("id" = Uuid, Path, description = "the endpoint"), ("delivery_id" = Uuid, Path, description = "the delivery")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Due again now, its attempts counted afresh", body = Delivery),
        (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such webhook of the caller's, or no such delivery of it", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`delivery_in_flight`: being sent now", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id))]
pub(crate) async fn retry(
    state: web::Data<ApiState>,
    me: Authenticated,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (id, delivery) = path.into_inner();
    let endpoint = managed(&state, &me, id).await?;
    match read::retry(&state.db, endpoint.id, delivery).await? {
        Some(delivery) => Ok(HttpResponse::Accepted().json(delivery)),
        None if read::has_delivery(&state.db, endpoint.id, delivery).await? => Err(ApiError::new(
            Code::DeliveryInFlight,
            "the delivery is being sent now",
        )),
        None => Err(ApiError::new(Code::NotFound, "no such delivery")),
    }
}
