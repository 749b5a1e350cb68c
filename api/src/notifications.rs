//! Notifications: the caller's list (with `X-Unread-Count`) and marking
//! them read. They are made by the projector from others' events (a like, a
//! comment, a follow, a mention); marking read is a command on the caller's
//! inbox aggregate, so that a rebuild marks the same ones.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use tidings_commands::AnyCommand;
use tidings_domain::inbox;
use tidings_projections::notifications::{self as read, Notification};
use tidings_schemas::{AggregateRef, AggregateType, Position};
use uuid::Uuid;

use crate::accounts::Accepted;
use crate::auth::Authenticated;
use crate::context::RequestContext;
use crate::error::{accepted, ApiError, FieldError, Problem};
use crate::page::{Page, PageQuery, Paged};
use crate::ApiState;

/// The most ids one request marks read.
const MAX_IDS: usize = 500;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/notifications", web::get().to(list))
        .route("/api/notifications/read", web::post().to(mark_read));
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only the unread ones.
    #[serde(default)]
    pub unread: bool,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/notifications", tag = "notifications",
    params(ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's notifications, newest first (none about a deleted post)", body = Paged<Notification>,
            headers(("X-Unread-Count" = i64, description = "how many are unread"))),
        (status = 400, description = "`invalid_query`: a bad limit or cursor", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id))]
pub(crate) async fn list(
    state: web::Data<ApiState>,
    me: Authenticated,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let page = Page::try_from(&PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    })?;
    let items = read::list(&state.db, me.user_id, query.unread, page.after, page.limit).await?;
    let unread = read::unread_count(&state.db, me.user_id).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("X-Unread-Count", unread.to_string()))
        .json(Paged::of(items, page, |n| (n.created_at, n.id))))
}

/// `{ids}` or `{all: true}`; neither marks nothing.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkReadBody {
    #[serde(default)]
    #[schema(max_items = 500)]
    pub ids: Vec<Uuid>,
    #[serde(default)]
    pub all: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct MarkedRead {
    unread_count: i64,
    #[schema(value_type = String)]
    position: Position,
}

#[utoipa::path(post, path = "/api/notifications/read", tag = "notifications",
    request_body = MarkReadBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Marked read", body = MarkedRead, headers(("X-Position" = String), ("X-Unread-Count" = i64))),
        (status = 202, description = "Marked; not projected within the bounded wait", body = Accepted),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn mark_read(
    state: web::Data<ApiState>,
    me: Authenticated,
    ctx: RequestContext,
    body: web::Json<MarkReadBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    if body.ids.len() > MAX_IDS {
        return Err(ApiError::validation(vec![FieldError::new(
            "ids",
            format!("at most {MAX_IDS} ids"),
        )]));
    }
    let command = ctx.envelope(
        ctx.command_id(Some(me.user_id)),
        Some(me.user_id),
        AggregateRef::new(AggregateType::Inbox, me.user_id.to_string()),
        AnyCommand::Inbox(inbox::Command::MarkRead {
            user_id: me.user_id,
            ids: body.ids,
            all: body.all,
            at: ctx.issued_at,
        }),
    );
    let position = accepted(state.bus.send(&command).await?)?;
    if !state.projected(&position).await {
        return Ok(HttpResponse::Accepted()
            .insert_header(("X-Position", position.to_string()))
            .json(Accepted { position }));
    }
    let unread = read::unread_count(&state.db, me.user_id).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("X-Position", position.to_string()))
        .insert_header(("X-Unread-Count", unread.to_string()))
        .json(MarkedRead {
            unread_count: unread,
            position,
        }))
}
