//! Rooms and messages, and direct conversations.
//!
//! Every write is a command to the room's aggregate, which decides it
//! (`tidings_domain::room`): who may join, invite, moderate, post, edit,
//! delete or mark read, and whether the room is full. A private room (and
//! any direct conversation) answers 404 to whoever is not in it, here and
//! on the WebSocket alike. The handlers check field shapes and that the
//! users a request names exist; the rest is the decider's.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tidings_commands::AnyCommand;
use tidings_domain::room::{self, Changes, Role, MAX_PARTICIPANTS};
use tidings_domain::Rejection;
use tidings_projections::rooms::{self as read, Listing, MessageView, ParticipantView, RoomView};
use tidings_schemas::{AggregateRef, AggregateType, Position};
use uuid::Uuid;

use crate::accounts::Accepted;
use crate::auth::Authenticated;
use crate::context::RequestContext;
use crate::error::{accepted, ApiError, Code, FieldError, Problem};
use crate::media;
use crate::page::{Page, PageQuery, Paged, DEFAULT_LIMIT, MAX_LIMIT};
use crate::posts::written;
use crate::validate::{self, Fields};
use crate::ApiState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/rooms", web::post().to(create_room))
        .route("/api/rooms", web::get().to(my_rooms))
        .route("/api/rooms/public", web::get().to(public_rooms))
        // A room id is hex and dashes, so that `/api/rooms/public` is never
        // taken for a room (a PATCH of it is 405, not a room not found).
        .route("/api/rooms/{id:[0-9a-fA-F-]+}", web::get().to(get_room))
        .route(
            "/api/rooms/{id:[0-9a-fA-F-]+}",
            web::patch().to(update_room),
        )
        .route("/api/rooms/{id}/preview", web::get().to(preview))
        .route("/api/rooms/{id}/join", web::post().to(join))
        .route("/api/rooms/{id}/leave", web::post().to(leave))
        .route("/api/rooms/{id}/invites", web::post().to(invite))
        .route("/api/rooms/{id}/transfer", web::post().to(transfer))
        .route(
            "/api/rooms/{id}/members/{user_id}",
            web::delete().to(remove_member),
        )
        .route(
            "/api/rooms/{id}/members/{user_id}/role",
            web::put().to(set_role),
        )
        .route("/api/rooms/{id}/messages", web::post().to(post_message))
        .route("/api/rooms/{id}/messages", web::get().to(messages))
        .route(
            "/api/rooms/{id}/messages/{mid}",
            web::patch().to(edit_message),
        )
        .route(
            "/api/rooms/{id}/messages/{mid}",
            web::delete().to(delete_message),
        )
        .route("/api/rooms/{id}/read", web::post().to(mark_read))
        .route("/api/dm/{user_id}/messages", web::post().to(send_direct))
        .route("/api/dm/{user_id}/messages", web::get().to(direct_messages));
}

/// The longest room name and description, in characters.
pub const MAX_NAME: usize = 100;
pub const MAX_DESCRIPTION: usize = 1000;
/// The largest settings object, serialized.
pub const MAX_SETTINGS: usize = 4096;

fn room_ref(id: Uuid) -> AggregateRef {
    AggregateRef::new(AggregateType::Room, id.to_string())
}

/// Sends a command to a room and waits (bounded) for its projection: the
/// position, and whether the read models show it.
async fn send(
    state: &ApiState,
    me: &Authenticated,
    ctx: &RequestContext,
    command_id: Uuid,
    room_id: Uuid,
    command: room::Command,
) -> Result<(Position, bool), ApiError> {
    let envelope = ctx.envelope(
        command_id,
        Some(me.user_id),
        room_ref(room_id),
        AnyCommand::Room(command),
    );
    let position = accepted(state.bus.send(&envelope).await?)?;
    let projected = state.projected(&position).await;
    Ok((position, projected))
}

/// A room the caller may see (public, or one the caller is in), or 404.
async fn seen(state: &ApiState, viewer: Uuid, id: Uuid) -> Result<RoomView, ApiError> {
    read::visible(&state.db, viewer, id)
        .await?
        .ok_or_else(ApiError::not_found)
}

/// A user named by a request, or 404.
async fn existing(state: &ApiState, user: Uuid) -> Result<(), ApiError> {
    state
        .account(user, None)
        .await?
        .map(|_| ())
        .ok_or_else(ApiError::not_found)
}

/// A room's name: 1 to [`MAX_NAME`] printable characters once trimmed, not
/// only invisible ones, and none that reorders the text around it.
fn name(value: &str) -> Result<String, String> {
    let value = value.trim();
    if validate::blank(value)
        || value.chars().count() > MAX_NAME
        || value
            .chars()
            .any(|c| c.is_control() || validate::reorders(c))
    {
        return Err(format!(
            "1 to {MAX_NAME} printable characters, not only invisible ones, no direction overrides"
        ));
    }
    Ok(value.to_owned())
}

/// At most [`MAX_DESCRIPTION`] characters, no control characters but line
/// breaks and tabs; trimmed.
fn description(value: &str) -> Result<String, String> {
    if value.chars().count() > MAX_DESCRIPTION {
        return Err(format!("at most {MAX_DESCRIPTION} characters"));
    }
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err("no control characters but line breaks and tabs".into());
    }
    Ok(value.trim().to_owned())
}

/// A JSON object of at most [`MAX_SETTINGS`] bytes, without a NUL in any
/// key or string: PostgreSQL's `jsonb` cannot hold one, and a value it
/// cannot store would stop the projector.
fn settings(value: Map<String, Value>) -> Result<Map<String, Value>, String> {
    let size = serde_json::to_vec(&value).map_or(usize::MAX, |v| v.len());
    if size > MAX_SETTINGS {
        return Err(format!("at most {MAX_SETTINGS} bytes of JSON"));
    }
    fn has_nul(value: &Value) -> bool {
        match value {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().any(has_nul),
            Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        }
    }
    if value.iter().any(|(k, v)| k.contains('\0') || has_nul(v)) {
        return Err("no NUL characters".into());
    }
    Ok(value)
}

fn max_participants(value: i64) -> Result<u32, String> {
    u32::try_from(value)
        .ok()
        .filter(|v| (1..=MAX_PARTICIPANTS).contains(v))
        .ok_or_else(|| format!("1 to {MAX_PARTICIPANTS}"))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoomBody {
    /// 1 to 100 printable characters, trimmed.
    #[schema(
        pattern = r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]{0,98}[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f])?[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub name: String,
    /// At most 1,000 characters.
    #[schema(
        max_length = 1000,
        pattern = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"
    )]
    pub description: Option<String>,
    pub is_private: bool,
    /// 1 to 1,000; 1,000 when absent.
    #[schema(minimum = 1, maximum = 1000)]
    pub max_participants: Option<i64>,
    /// An http(s) URL.
    #[schema(
        pattern = r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*(http://[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f]{0,2041}|https://[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f]{0,2040})[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub avatar_url: Option<String>,
    /// Anything the client keeps with the room, a JSON object of at most
    /// 4,096 bytes.
    #[schema(value_type = Option<Object>)]
    pub settings: Option<Map<String, Value>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct WrittenRoom {
    room: RoomView,
    #[schema(value_type = String)]
    position: Position,
}

#[utoipa::path(post, path = "/api/rooms", tag = "rooms",
    request_body = CreateRoomBody,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created and projected; the caller is its owner and first participant", body = WrittenRoom, headers(("X-Position" = String))),
        (status = 202, description = "Created; not projected within the bounded wait: read it with `X-Min-Position`", body = Accepted),
        (status = 409, description = "`idempotency_key_in_flight`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn create_room(
    state: web::Data<ApiState>,
    me: Authenticated,
    ctx: RequestContext,
    body: web::Json<CreateRoomBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let mut fields = Fields::default();
    let name = fields.check("name", name(&body.name));
    let description = body
        .description
        .map(|d| fields.check("description", description(&d)));
    let avatar_url = body
        .avatar_url
        .map(|u| fields.check("avatar_url", validate::url(&u)));
    let settings = fields.check("settings", settings(body.settings.unwrap_or_default()));
    let max = fields.check(
        "max_participants",
        max_participants(body.max_participants.unwrap_or(MAX_PARTICIPANTS.into())),
    );
    fields.finish()?;
    let command_id = ctx.command_id(Some(me.user_id));
    let id = Uuid::new_v5(&command_id, b"room");
    let command = room::Command::Create(room::Create {
        room_id: id,
        owner: me.user_id,
        name: name.expect("checked"),
        description: description.map(|d| d.expect("checked")),
        avatar_url: avatar_url.map(|u| u.expect("checked")),
        settings: settings.expect("checked"),
        is_private: body.is_private,
        max_participants: max.expect("checked"),
        at: ctx.issued_at,
    });
    let (position, projected) = send(&state, &me, &ctx, command_id, id, command).await?;
    room_answer(&state, &me, StatusCode::CREATED, position, projected, id).await
}

/// The room as the caller sees it after a write.
async fn room_answer(
    state: &ApiState,
    me: &Authenticated,
    status: StatusCode,
    position: Position,
    projected: bool,
    id: Uuid,
) -> Result<HttpResponse, ApiError> {
    let room = match projected {
        true => read::visible(&state.db, me.user_id, id).await?,
        false => None,
    };
    Ok(written(
        status,
        position.clone(),
        room.map(|room| WrittenRoom { room, position }),
    ))
}

async fn list(
    state: &ApiState,
    me: &Authenticated,
    listing: Listing,
    query: &PageQuery,
) -> Result<(Vec<RoomView>, Page), ApiError> {
    let page = Page::try_from(query)?;
    let items = read::list(&state.db, me.user_id, listing, page.after, page.limit).await?;
    Ok((items, page))
}

#[utoipa::path(get, path = "/api/rooms", tag = "rooms",
    params(PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's rooms and direct conversations, newest first, each with the caller's role and unread count", body = Paged<RoomView>),
        (status = 400, description = "`invalid_query`: a bad limit or cursor", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id))]
pub(crate) async fn my_rooms(
    state: web::Data<ApiState>,
    me: Authenticated,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let (items, page) = list(&state, &me, Listing::Mine, &query).await?;
    Ok(HttpResponse::Ok().json(Paged::of(items, page, |r| (r.created_at, r.id))))
}

#[utoipa::path(get, path = "/api/rooms/public", tag = "rooms",
    params(PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Public rooms, newest first", body = Paged<RoomView>,
            headers(("X-Total-Count" = i64, description = "public rooms"), ("X-Total-Rooms" = i64, description = "rooms, public and private (direct conversations left out)"))),
        (status = 400, description = "`invalid_query`: a bad limit or cursor", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id))]
pub(crate) async fn public_rooms(
    state: web::Data<ApiState>,
    me: Authenticated,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let (items, page) = list(&state, &me, Listing::Public, &query).await?;
    let (public, all) = read::totals(&state.db).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("X-Total-Count", public.to_string()))
        .insert_header(("X-Total-Rooms", all.to_string()))
        .json(Paged::of(items, page, |r| (r.created_at, r.id))))
}

/// A room with its participants and their read receipts.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct RoomDetail {
    #[serde(flatten)]
    room: RoomView,
    participants: Vec<ParticipantView>,
}

#[utoipa::path(get, path = "/api/rooms/{id}", tag = "rooms",
    params(("id" = Uuid, Path, description = "room id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The room, its participants and their receipts", body = RoomDetail),
        (status = 404, description = "no such room, or a private one the caller is not in", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id))]
pub(crate) async fn get_room(
    state: web::Data<ApiState>,
    me: Authenticated,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let room = seen(&state, me.user_id, id.into_inner()).await?;
    let participants = read::participants(&state.db, room.id).await?;
    Ok(HttpResponse::Ok().json(RoomDetail { room, participants }))
}

#[utoipa::path(get, path = "/api/rooms/{id}/preview", tag = "rooms",
    params(("id" = Uuid, Path, description = "room id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A public room, to anyone signed in", body = RoomView),
        (status = 404, description = "no such room, or a private one (to everyone)", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id))]
pub(crate) async fn preview(
    state: web::Data<ApiState>,
    me: Authenticated,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let room = read::public_room(&state.db, me.user_id, id.into_inner())
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(HttpResponse::Ok().json(room))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRoomBody {
    /// 1 to 100 printable characters, trimmed.
    #[schema(
        pattern = r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]{0,98}[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f])?[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub name: Option<String>,
    #[schema(
        max_length = 1000,
        pattern = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"
    )]
    pub description: Option<String>,
    #[schema(
        pattern = r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*(http://[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f]{0,2041}|https://[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f]{0,2040})[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub avatar_url: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub settings: Option<Map<String, Value>>,
    pub is_private: Option<bool>,
    /// At least the participants already in, at most 1,000.
    #[schema(minimum = 1, maximum = 1000)]
    pub max_participants: Option<i64>,
}

impl TryFrom<UpdateRoomBody> for Changes {
    type Error = ApiError;

    fn try_from(body: UpdateRoomBody) -> Result<Self, ApiError> {
        let mut fields = Fields::default();
        let changes = Changes {
            name: body.name.and_then(|n| fields.check("name", name(&n))),
            description: body
                .description
                .and_then(|d| fields.check("description", description(&d))),
            avatar_url: body
                .avatar_url
                .and_then(|u| fields.check("avatar_url", validate::url(&u))),
            settings: body
                .settings
                .and_then(|s| fields.check("settings", settings(s))),
            is_private: body.is_private,
            max_participants: body
                .max_participants
                .and_then(|m| fields.check("max_participants", max_participants(m))),
        };
        fields.finish()?;
        Ok(changes)
    }
}

#[utoipa::path(patch, path = "/api/rooms/{id}", tag = "rooms",
    request_body = UpdateRoomBody,
    params(("id" = Uuid, Path, description = "room id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Changed (absent fields stay as they are)", body = WrittenRoom, headers(("X-Position" = String))),
        (status = 202, description = "Changed; not projected within the bounded wait", body = Accepted),
        (status = 403, description = "`not_participant` (a public room the caller is not in) or `not_room_admin`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`room_not_found`: no such room, or a private one the caller is not in", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`idempotency_key_in_flight`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`max_participants_out_of_range` (below the participants in), `direct_conversation`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn update_room(
    state: web::Data<ApiState>,
    me: Authenticated,
    ctx: RequestContext,
    id: web::Path<Uuid>,
    body: web::Json<UpdateRoomBody>,
) -> Result<HttpResponse, ApiError> {
    let changes = Changes::try_from(body.into_inner())?;
    let id = id.into_inner();
    let command = room::Command::Update(room::Update {
        by: me.user_id,
        changes,
        at: ctx.issued_at,
    });
    let command_id = ctx.command_id(Some(me.user_id));
    let (position, projected) = send(&state, &me, &ctx, command_id, id, command).await?;
    room_answer(&state, &me, StatusCode::OK, position, projected, id).await
}

#[utoipa::path(post, path = "/api/rooms/{id}/join", tag = "rooms",
    params(("id" = Uuid, Path, description = "room id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Joined", body = WrittenRoom, headers(("X-Position" = String))),
        (status = 202, description = "Joined; not projected within the bounded wait", body = Accepted),
        (status = 404, description = "`room_not_found`: no such room, a private one without an invitation, or a direct conversation", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`room_full`, `already_participant` or `idempotency_key_in_flight`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn join(
    state: web::Data<ApiState>,
    me: Authenticated,
    ctx: RequestContext,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let command = room::Command::Join {
        user: me.user_id,
        at: ctx.issued_at,
    };
    let command_id = ctx.command_id(Some(me.user_id));
    let (position, projected) = send(&state, &me, &ctx, command_id, id, command).await?;
    room_answer(&state, &me, StatusCode::OK, position, projected, id).await
}

/// A membership change, as written.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Membership {
    room_id: Uuid,
    user_id: Uuid,
    /// The user's role now; `null` when no longer a participant (left,
    /// removed) or not yet one (invited).
    role: Option<String>,
    #[schema(value_type = String)]
    position: Position,
}

fn membership(
    status: StatusCode,
    room_id: Uuid,
    user_id: Uuid,
    role: Option<Role>,
    position: Position,
) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header(("X-Position", position.to_string()))
        .json(Membership {
            room_id,
            user_id,
            role: role.map(|r| r.as_str().to_owned()),
            position,
        })
}

#[utoipa::path(post, path = "/api/rooms/{id}/leave", tag = "rooms",
    params(("id" = Uuid, Path, description = "room id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Left: the room's messages no longer reach the caller", body = Membership, headers(("X-Position" = String))),
        (status = 403, description = "`not_participant`: a public room the caller is not in", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`room_not_found`: no such room, or a private one the caller is not in", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`owner_must_transfer`: the owner transfers the room first; `idempotency_key_in_flight`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`direct_conversation`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn leave(
    state: web::Data<ApiState>,
    me: Authenticated,
    ctx: RequestContext,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let command = room::Command::Leave {
        user: me.user_id,
        at: ctx.issued_at,
    };
    let command_id = ctx.command_id(Some(me.user_id));
    let (position, _) = send(&state, &me, &ctx, command_id, id, command).await?;
    Ok(membership(StatusCode::OK, id, me.user_id, None, position))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserBody {
    pub user_id: Uuid,
}

#[utoipa::path(post, path = "/api/rooms/{id}/invites", tag = "rooms",
    request_body = UserBody,
    params(("id" = Uuid, Path, description = "room id")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Invited (inviting again changes nothing): the user may join", body = Membership, headers(("X-Position" = String))),
        (status = 403, description = "`not_participant`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`room_not_found` (no such room, or a private one the caller is not in) or `not_found` (no such user)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`already_participant` or `idempotency_key_in_flight`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`room_is_public`: anyone may join a public room; `direct_conversation`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn invite(
    state: web::Data<ApiState>,
    me: Authenticated,
    ctx: RequestContext,
    id: web::Path<Uuid>,
    body: web::Json<UserBody>,
) -> Result<HttpResponse, ApiError> {
    let (id, user) = (id.into_inner(), body.user_id);
    existing(&state, user).await?;
    let command = room::Command::Invite {
        by: me.user_id,
        user,
        at: ctx.issued_at,
    };
    let command_id = ctx.command_id(Some(me.user_id));
    let (position, _) = send(&state, &me, &ctx, command_id, id, command).await?;
    Ok(membership(StatusCode::CREATED, id, user, None, position))
}

#[utoipa::path(post, path = "/api/rooms/{id}/transfer", tag = "rooms",
    request_body = UserBody,
    params(("id" = Uuid, Path, description = "room id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The user owns the room; the former owner is an admin", body = Membership, headers(("X-Position" = String))),
        (status = 403, description = "`not_room_owner` or `not_participant`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`room_not_found` or `member_not_found` (the user is not a participant)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`idempotency_key_in_flight`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`direct_conversation`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn transfer(
    state: web::Data<ApiState>,
    me: Authenticated,
    ctx: RequestContext,
    id: web::Path<Uuid>,
    body: web::Json<UserBody>,
) -> Result<HttpResponse, ApiError> {
    let (id, user) = (id.into_inner(), body.user_id);
    let command = room::Command::Transfer {
        by: me.user_id,
        to: user,
        at: ctx.issued_at,
    };
    let command_id = ctx.command_id(Some(me.user_id));
    let (position, _) = send(&state, &me, &ctx, command_id, id, command).await?;
    Ok(membership(
        StatusCode::OK,
        id,
        user,
        Some(Role::Owner),
        position,
    ))
}

#[utoipa::path(delete, path = "/api/rooms/{id}/members/{user_id}", tag = "rooms",
    params(("id" = Uuid, Path, description = "room id"), ("user_id" = Uuid, Path, description = "the participant to remove")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Removed: the room's messages no longer reach the user", body = Membership, headers(("X-Position" = String))),
        (status = 403, description = "`not_room_admin`, `cannot_remove_owner`, `cannot_remove_admin` (admins remove members only) or `not_participant`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`room_not_found` or `member_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`idempotency_key_in_flight`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`cannot_remove_self` (leave instead), `direct_conversation`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn remove_member(
    state: web::Data<ApiState>,
    me: Authenticated,
    ctx: RequestContext,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (id, user) = path.into_inner();
    let command = room::Command::RemoveMember {
        by: me.user_id,
        user,
        at: ctx.issued_at,
    };
    let command_id = ctx.command_id(Some(me.user_id));
    let (position, _) = send(&state, &me, &ctx, command_id, id, command).await?;
    Ok(membership(StatusCode::OK, id, user, None, position))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleBody {
    /// `admin` or `member`.
    #[schema(pattern = "^(admin|member)$")]
    pub role: String,
}

#[utoipa::path(put, path = "/api/rooms/{id}/members/{user_id}/role", tag = "rooms",
    request_body = RoleBody,
    params(("id" = Uuid, Path, description = "room id"), ("user_id" = Uuid, Path, description = "the participant")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The participant's role (the same again changes nothing)", body = Membership, headers(("X-Position" = String))),
        (status = 403, description = "`not_room_owner` or `not_participant`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`room_not_found` or `member_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`idempotency_key_in_flight`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`cannot_change_owner_role` (transfer instead), `direct_conversation`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn set_role(
    state: web::Data<ApiState>,
    me: Authenticated,
    ctx: RequestContext,
    path: web::Path<(Uuid, Uuid)>,
    body: web::Json<RoleBody>,
) -> Result<HttpResponse, ApiError> {
    let (id, user) = path.into_inner();
    let role = match body.role.as_str() {
        "admin" => Role::Admin,
        "member" => Role::Member,
        _ => {
            return Err(ApiError::validation(vec![FieldError::new(
                "role",
                "admin or member",
            )]))
        }
    };
    let command = room::Command::SetRole {
        by: me.user_id,
        user,
        role,
        at: ctx.issued_at,
    };
    let command_id = ctx.command_id(Some(me.user_id));
    let (position, _) = send(&state, &me, &ctx, command_id, id, command).await?;
    Ok(membership(StatusCode::OK, id, user, Some(role), position))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageBody {
    /// 1 to 5,000 characters once surrounding white space is trimmed, not
    /// only invisible ones (zero-width spaces, joiners), no control
    /// characters but line breaks and tabs (the pattern says so for JSON
    /// Schema, but for the invisible ones).
    #[schema(
        pattern = r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f]([^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]{0,4998}[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f])?[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub text: String,
    /// Up to 4 media items of the caller (`POST /api/media`), each once, in
    /// the order they are shown.
    #[serde(default)]
    #[schema(max_items = 4)]
    pub media_ids: Vec<Uuid>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditBody {
    /// As a new message's text.
    #[schema(
        pattern = r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f]([^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]{0,4998}[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f])?[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub text: String,
}

/// A message to post, checked.
fn new_message(
    ctx: &RequestContext,
    me: &Authenticated,
    body: MessageBody,
) -> Result<(Uuid, room::PostMessage), ApiError> {
    let mut fields = Fields::default();
    let text = fields.check("text", validate::text(&body.text));
    let media_ids = fields.check("media_ids", media::ids(&body.media_ids));
    fields.finish()?;
    let command_id = ctx.command_id(Some(me.user_id));
    let message = room::PostMessage {
        message_id: Uuid::new_v5(&command_id, b"message"),
        author: me.user_id,
        text: text.expect("checked"),
        media_ids: media_ids.expect("checked"),
        at: ctx.issued_at,
    };
    Ok((command_id, message))
}

/// Has the message's media items attached to it before it is sent. Nothing
/// is attached for a writer the read model does not count in the room: the
/// answer is the decider's refusal, so no item is held by a message that
/// never was.
async fn attach_media(
    state: &ApiState,
    me: &Authenticated,
    ctx: &RequestContext,
    command_id: Uuid,
    room_id: Uuid,
    message: &room::PostMessage,
) -> Result<(), ApiError> {
    if message.media_ids.is_empty() {
        return Ok(());
    }
    if !read::is_participant(&state.db, me.user_id, room_id).await? {
        let refusal = match read::visible(&state.db, me.user_id, room_id).await? {
            Some(_) => room::Error::NotParticipant,
            None => room::Error::NotFound,
        };
        return Err(ApiError::rejected(
            refusal.code(),
            refusal.kind(),
            &refusal.to_string(),
        ));
    }
    let holder = media::Holder::Message(message.message_id);
    media::attach(state, me, ctx, command_id, holder, &message.media_ids).await
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct WrittenMessage {
    message: MessageView,
    #[schema(value_type = String)]
    position: Position,
}

/// The message after a write, or 202 when not projected in time.
async fn message_answer(
    state: &ApiState,
    status: StatusCode,
    position: Position,
    projected: bool,
    message_id: Uuid,
) -> Result<HttpResponse, ApiError> {
    let message = match projected {
        true => read::message(&state.db, message_id).await?,
        false => None,
    };
    Ok(written(
        status,
        position.clone(),
        message.map(|message| WrittenMessage { message, position }),
    ))
}

#[utoipa::path(post, path = "/api/rooms/{id}/messages", tag = "rooms",
    request_body = MessageBody,
    params(("id" = Uuid, Path, description = "room id")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Posted and projected; pushed to every participant", body = WrittenMessage, headers(("X-Position" = String))),
        (status = 202, description = "Posted; not projected within the bounded wait", body = Accepted),
        (status = 403, description = "`not_participant`: a public room the caller has not joined", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`room_not_found`: no such room, or a private one the caller is not in", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`idempotency_key_in_flight`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn post_message(
    state: web::Data<ApiState>,
    me: Authenticated,
    ctx: RequestContext,
    id: web::Path<Uuid>,
    body: web::Json<MessageBody>,
) -> Result<HttpResponse, ApiError> {
    let (command_id, message) = new_message(&ctx, &me, body.into_inner())?;
    let id = id.into_inner();
    attach_media(&state, &me, &ctx, command_id, id, &message).await?;
    let message_id = message.message_id;
    let command = room::Command::PostMessage(message);
    let (position, projected) = send(&state, &me, &ctx, command_id, id, command).await?;
    message_answer(&state, StatusCode::CREATED, position, projected, message_id).await
}

/// `?before=<message id>&limit=`: the page of messages older than `before`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// 1 to 100; 20 when absent.
    pub limit: Option<i64>,
    /// A message of the room (`next_cursor` of the page before): only
    /// older messages follow.
    pub before: Option<Uuid>,
    /// The same as `before`, under the name every other list takes.
    pub cursor: Option<String>,
}

/// A page of a room's history, newest first; `next_cursor` is the `before`
/// of the next page.
async fn history(
    state: &ApiState,
    room_id: Uuid,
    query: &HistoryQuery,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::new(
            Code::InvalidQuery,
            format!("limit is 1 to {MAX_LIMIT}"),
        ));
    }
    let cursor = match &query.cursor {
        None => None,
        Some(cursor) => Some(Uuid::parse_str(cursor).map_err(|_| {
            ApiError::new(Code::InvalidQuery, "cursor is not one this API handed out")
        })?),
    };
    let before = match (query.before, cursor) {
        (Some(before), Some(cursor)) if before != cursor => {
            return Err(ApiError::new(
                Code::InvalidQuery,
                "before and cursor name different messages",
            ))
        }
        (before, cursor) => before.or(cursor),
    };
    let before = match before {
        None => None,
        Some(before) => Some(
            read::message(&state.db, before)
                .await?
                .filter(|m| m.room_id == room_id)
                .ok_or_else(|| {
                    ApiError::new(Code::InvalidQuery, "before names no message of this room")
                })?
                .ordinal,
        ),
    };
    let items = read::messages(&state.db, room_id, before, limit).await?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|m| m.id.to_string()))
        .flatten();
    Ok(HttpResponse::Ok().json(Paged { items, next_cursor }))
}

#[utoipa::path(get, path = "/api/rooms/{id}/messages", tag = "rooms",
    params(("id" = Uuid, Path, description = "room id"), HistoryQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Messages newest first, deleted ones as tombstones (`text` null); `next_cursor` is the `before` (or `cursor`) of the next page", body = Paged<MessageView>),
        (status = 400, description = "`invalid_query`: a bad limit, or `before` (`cursor`) names no message of the room", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such room, or a private one the caller is not in", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id))]
pub(crate) async fn messages(
    state: web::Data<ApiState>,
    me: Authenticated,
    id: web::Path<Uuid>,
    query: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let room = seen(&state, me.user_id, id.into_inner()).await?;
    history(&state, room.id, &query).await
}

#[utoipa::path(patch, path = "/api/rooms/{id}/messages/{mid}", tag = "rooms",
    request_body = EditBody,
    params(("id" = Uuid, Path, description = "room id"), ("mid" = Uuid, Path, description = "message id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Edited; pushed to every participant", body = WrittenMessage, headers(("X-Position" = String))),
        (status = 202, description = "Edited; not projected within the bounded wait", body = Accepted),
        (status = 403, description = "`not_message_author` or `not_participant`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`room_not_found` or `message_not_found` (also a deleted one)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`idempotency_key_in_flight`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn edit_message(
    state: web::Data<ApiState>,
    me: Authenticated,
    ctx: RequestContext,
    path: web::Path<(Uuid, Uuid)>,
    body: web::Json<EditBody>,
) -> Result<HttpResponse, ApiError> {
    let (id, message_id) = path.into_inner();
    let mut fields = Fields::default();
    let text = fields.check("text", validate::text(&body.text));
    fields.finish()?;
    let command = room::Command::EditMessage {
        message_id,
        by: me.user_id,
        text: text.expect("checked"),
        at: ctx.issued_at,
    };
    let command_id = ctx.command_id(Some(me.user_id));
    let (position, projected) = send(&state, &me, &ctx, command_id, id, command).await?;
    message_answer(&state, StatusCode::OK, position, projected, message_id).await
}

#[utoipa::path(delete, path = "/api/rooms/{id}/messages/{mid}", tag = "rooms",
    params(("id" = Uuid, Path, description = "room id"), ("mid" = Uuid, Path, description = "message id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Deleted (deleting again changes nothing): the tombstone, pushed to every participant", body = WrittenMessage, headers(("X-Position" = String))),
        (status = 202, description = "Deleted; not projected within the bounded wait", body = Accepted),
        (status = 403, description = "`not_message_author` (only its author, the owner and admins delete a message) or `not_participant`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`room_not_found` or `message_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`idempotency_key_in_flight`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn delete_message(
    state: web::Data<ApiState>,
    me: Authenticated,
    ctx: RequestContext,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (id, message_id) = path.into_inner();
    let command = room::Command::DeleteMessage {
        message_id,
        by: me.user_id,
        at: ctx.issued_at,
    };
    let command_id = ctx.command_id(Some(me.user_id));
    let (position, projected) = send(&state, &me, &ctx, command_id, id, command).await?;
    message_answer(&state, StatusCode::OK, position, projected, message_id).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadBody {
    /// The last message read (later ones stay unread).
    pub message_id: Uuid,
}

/// The caller's unread count after marking read, and every participant's
/// receipt.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ReadState {
    room_id: Uuid,
    unread_count: i64,
    receipts: Vec<ParticipantView>,
    #[schema(value_type = String)]
    position: Position,
}

#[utoipa::path(post, path = "/api/rooms/{id}/read", tag = "rooms",
    request_body = ReadBody,
    params(("id" = Uuid, Path, description = "room id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Read up to the message (an older one changes nothing); the receipt is pushed to the other participants", body = ReadState, headers(("X-Position" = String))),
        (status = 202, description = "Marked; not projected within the bounded wait", body = Accepted),
        (status = 403, description = "`not_participant`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`room_not_found` or `message_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`idempotency_key_in_flight`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn mark_read(
    state: web::Data<ApiState>,
    me: Authenticated,
    ctx: RequestContext,
    id: web::Path<Uuid>,
    body: web::Json<ReadBody>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let command = room::Command::MarkRead {
        user: me.user_id,
        message_id: body.message_id,
        at: ctx.issued_at,
    };
    let command_id = ctx.command_id(Some(me.user_id));
    let (position, projected) = send(&state, &me, &ctx, command_id, id, command).await?;
    let answer = match projected {
        true => Some(ReadState {
            room_id: id,
            unread_count: read::unread_count(&state.db, id, me.user_id).await?,
            receipts: read::participants(&state.db, id).await?,
            position: position.clone(),
        }),
        false => None,
    };
    Ok(written(StatusCode::OK, position, answer))
}

#[utoipa::path(post, path = "/api/dm/{user_id}/messages", tag = "rooms",
    request_body = MessageBody,
    params(("user_id" = Uuid, Path, description = "the other user")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Sent; the first message opens the two users' one conversation (a room of kind `direct`, `message.room_id`)", body = WrittenMessage, headers(("X-Position" = String))),
        (status = 202, description = "Sent; not projected within the bounded wait", body = Accepted),
        (status = 404, description = "no such user", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`idempotency_key_in_flight`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`cannot_message_self`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn send_direct(
    state: web::Data<ApiState>,
    me: Authenticated,
    ctx: RequestContext,
    to: web::Path<Uuid>,
    body: web::Json<MessageBody>,
) -> Result<HttpResponse, ApiError> {
    let to = to.into_inner();
    let (command_id, message) = new_message(&ctx, &me, body.into_inner())?;
    // Writing to oneself is the decider's to refuse (422).
    // The conversation is opened by its first message: a writer is always
    // in it, so its media are attached up front.
    if to != me.user_id {
        existing(&state, to).await?;
        let holder = media::Holder::Message(message.message_id);
        media::attach(&state, &me, &ctx, command_id, holder, &message.media_ids).await?;
    }
    let message_id = message.message_id;
    let command = room::Command::SendDirect { to, message };
    let room_id = room::direct_id(me.user_id, to);
    let (position, projected) = send(&state, &me, &ctx, command_id, room_id, command).await?;
    message_answer(&state, StatusCode::CREATED, position, projected, message_id).await
}

#[utoipa::path(get, path = "/api/dm/{user_id}/messages", tag = "rooms",
    params(("user_id" = Uuid, Path, description = "the other user"), HistoryQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The conversation's messages, newest first, as a room's", body = Paged<MessageView>),
        (status = 400, description = "`invalid_query`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no conversation with this user yet", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id))]
pub(crate) async fn direct_messages(
    state: web::Data<ApiState>,
    me: Authenticated,
    with: web::Path<Uuid>,
    query: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let room_id = room::direct_id(me.user_id, with.into_inner());
    if !read::is_participant(&state.db, me.user_id, room_id).await? {
        return Err(ApiError::not_found());
    }
    history(&state, room_id, &query).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(json: &str) -> Result<Changes, ApiError> {
        Changes::try_from(serde_json::from_str::<UpdateRoomBody>(json).unwrap())
    }

    #[test]
    fn a_patch_changes_only_what_it_names_trimmed() {
        let c = changes(r#"{"name": "  lounge  ", "is_private": true}"#).unwrap();
        assert_eq!(c.name.as_deref(), Some("lounge"));
        assert_eq!(c.is_private, Some(true));
        assert_eq!(c.description, None);
        assert_eq!(c.max_participants, None);
        assert_eq!(changes("{}").unwrap(), Changes::default());
    }

    #[test]
    fn bad_patches_are_refused_field_by_field() {
        let long = "x".repeat(MAX_DESCRIPTION + 1);
        let settings = format!(r#"{{"k": "{}"}}"#, "v".repeat(MAX_SETTINGS));
        let error = changes(&format!(
            r#"{{"name": " ", "description": "{long}", "avatar_url": "ftp://x", "settings": {settings}, "max_participants": 1001}}"#
        ))
        .unwrap_err();
        let fields: Vec<&str> = error.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "name",
                "description",
                "avatar_url",
                "settings",
                "max_participants"
            ]
        );
        assert!(changes(r#"{"max_participants": 0}"#).is_err());
        assert!(changes(r#"{"description": "a\u0000b"}"#).is_err());
        assert!(changes(r#"{"settings": {"a": [{"b\u0000": 1}]}}"#).is_err());
        assert!(changes(r#"{"settings": {"a": ["\u0000"]}}"#).is_err());
    }

    #[test]
    fn a_name_shows_something_and_reads_as_written() {
        for refused in ["\u{200b}", " \u{feff} ", "\u{202e}gnp.exe", "a\u{2067}b"] {
            assert!(name(refused).is_err(), "{refused:?}");
        }
        assert_eq!(
            name(" \u{1f469}\u{200d}\u{1f4bb} club ").unwrap(),
            "\u{1f469}\u{200d}\u{1f4bb} club"
        );
    }
}
