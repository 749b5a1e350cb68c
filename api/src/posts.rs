//! Posts, their reactions and comments, and the home feed.
//!
//! A write on a post is decided by the post's aggregate (one writer: exact
//! counts, one reaction per user, nothing added to a deleted post). Whether
//! the caller may see the post at all is read from the read models first:
//! a post the caller may not see answers 404 and sends no command, exactly
//! as a post that does not exist.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tidings_commands::AnyCommand;
use tidings_domain::post::{self, Reaction, Visibility};
use tidings_projections::cache::FEED_CAP;
use tidings_projections::posts::{self as read, CommentView, PostView, Source};
use tidings_schemas::{AggregateRef, AggregateType, Position};
use uuid::Uuid;

use crate::accounts::Accepted;
use crate::auth::Authenticated;
use crate::context::RequestContext;
use crate::error::{accepted, ApiError, FieldError, Problem};
use crate::media;
use crate::page::{Page, PageQuery, Paged};
use crate::validate::{self, Fields};
use crate::ApiState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/posts", web::post().to(create_post))
        .route("/api/posts/{id}", web::get().to(get_post))
        .route("/api/posts/{id}", web::delete().to(delete_post))
        .route("/api/posts/{id}/like", web::put().to(like))
        .route("/api/posts/{id}/like", web::delete().to(unlike))
        .route("/api/posts/{id}/reaction", web::put().to(react))
        .route("/api/posts/{id}/reaction", web::delete().to(unreact))
        .route("/api/posts/{id}/comments", web::post().to(add_comment))
        .route("/api/posts/{id}/comments", web::get().to(list_comments))
        .route("/api/users/{id}/posts", web::get().to(user_posts))
        .route("/api/feed", web::get().to(feed));
}

fn post_ref(id: Uuid) -> AggregateRef {
    AggregateRef::new(AggregateType::Post, id.to_string())
}

/// The post's id: derived from the request's command id, so a retry with
/// the same `Idempotency-Key` is the same post.
fn post_id(command_id: Uuid) -> Uuid {
    Uuid::new_v5(&command_id, b"post")
}

/// A post the caller may see, or 404.
async fn seen(state: &ApiState, viewer: Uuid, id: Uuid) -> Result<PostView, ApiError> {
    read::visible(&state.db, viewer, id)
        .await?
        .ok_or_else(ApiError::not_found)
}

/// A write with its position, or 202 with only the position when the read
/// models did not show it within the bounded wait.
pub(crate) fn written<T: Serialize>(
    status: actix_web::http::StatusCode,
    position: Position,
    body: Option<T>,
) -> HttpResponse {
    let mut response = match body {
        Some(_) => HttpResponse::build(status),
        None => HttpResponse::Accepted(),
    };
    response.insert_header(("X-Position", position.to_string()));
    match body {
        Some(body) => response.json(body),
        None => response.json(Accepted { position }),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePostBody {
    /// 1 to 5,000 characters once surrounding white space is trimmed, not
    /// only invisible ones (zero-width spaces, joiners), no control
    /// characters but line breaks and tabs (the pattern says so for JSON
    /// Schema, but for the invisible ones).
    #[schema(
        pattern = r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f]([^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]{0,4998}[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f])?[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub text: String,
    /// `public` (the default) or `followers`.
    #[schema(pattern = "^(public|followers)$")]
    pub visibility: Option<String>,
    /// Up to 4 media items of the caller (`POST /api/media`), each once, in
    /// the order they are shown.
    #[serde(default)]
    #[schema(max_items = 4)]
    pub media_ids: Vec<Uuid>,
}

/// A post to write, checked.
struct NewPost {
    text: String,
    visibility: Visibility,
    media: Vec<Uuid>,
}

impl TryFrom<CreatePostBody> for NewPost {
    type Error = ApiError;

    fn try_from(body: CreatePostBody) -> Result<Self, ApiError> {
        let mut fields = Fields::default();
        let text = fields.check("text", validate::text(&body.text));
        let visibility = fields.check(
            "visibility",
            match body.visibility.as_deref() {
                None | Some("public") => Ok(Visibility::Public),
                Some("followers") => Ok(Visibility::Followers),
                Some(_) => Err("public or followers".to_owned()),
            },
        );
        let media = fields.check("media_ids", media::ids(&body.media_ids));
        fields.finish()?;
        Ok(NewPost {
            text: text.expect("checked"),
            visibility: visibility.expect("checked"),
            media: media.expect("checked"),
        })
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct CreatedPost {
    post: PostView,
    #[schema(value_type = String)]
    position: Position,
}

#[utoipa::path(post, path = "/api/posts", tag = "social",
    request_body = CreatePostBody,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Written and projected", body = CreatedPost, headers(("X-Position" = String))),
        (status = 202, description = "Written; not projected within the bounded wait: read it with `X-Min-Position`", body = Accepted),
        (status = 409, description = "`idempotency_key_in_flight`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: a field is not acceptable, or a media id (`media_ids[i]`) is unknown, deleted or someone else's", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn create_post(
    state: web::Data<ApiState>,
    me: Authenticated,
    ctx: RequestContext,
    body: web::Json<CreatePostBody>,
) -> Result<HttpResponse, ApiError> {
    let input = NewPost::try_from(body.into_inner())?;
    let command_id = ctx.command_id(Some(me.user_id));
    let id = post_id(command_id);
    let holder = media::Holder::Post(id);
    media::attach(&state, &me, &ctx, command_id, holder, &input.media).await?;
    let command = ctx.envelope(
        command_id,
        Some(me.user_id),
        post_ref(id),
        AnyCommand::Post(post::Command::Create(post::Create {
            post_id: id,
            author: me.user_id,
            text: input.text,
            visibility: input.visibility,
            media: input.media,
            at: ctx.issued_at,
        })),
    );
    let position = accepted(state.bus.send(&command).await?)?;
    let post = match state.projected(&position).await {
        true => read::visible(&state.db, me.user_id, id).await?,
        false => None,
    };
    Ok(written(
        actix_web::http::StatusCode::CREATED,
        position.clone(),
        post.map(|post| CreatedPost { post, position }),
    ))
}

#[utoipa::path(get, path = "/api/posts/{id}", tag = "social",
    params(("id" = Uuid, Path, description = "post id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The post", body = PostView),
        (status = 404, description = "no such post, deleted, or followers-only and the caller does not follow its author", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id))]
pub(crate) async fn get_post(
    state: web::Data<ApiState>,
    me: Authenticated,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(seen(&state, me.user_id, id.into_inner()).await?))
}

#[utoipa::path(delete, path = "/api/posts/{id}", tag = "social",
    params(("id" = Uuid, Path, description = "post id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted: hidden everywhere from now on", headers(("X-Position" = String))),
        (status = 403, description = "`not_post_author`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such post, or one the caller may not see", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn delete_post(
    state: web::Data<ApiState>,
    me: Authenticated,
    ctx: RequestContext,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    seen(&state, me.user_id, id).await?;
    let command = ctx.envelope(
        ctx.command_id(Some(me.user_id)),
        Some(me.user_id),
        post_ref(id),
        AnyCommand::Post(post::Command::Delete {
            by: me.user_id,
            at: ctx.issued_at,
        }),
    );
    let position = accepted(state.bus.send(&command).await?)?;
    state.projected(&position).await;
    Ok(HttpResponse::NoContent()
        .insert_header(("X-Position", position.to_string()))
        .finish())
}

/// A post's reaction counts after a write.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Reactions {
    like_count: i64,
    /// Count per reaction type.
    reactions: BTreeMap<String, i64>,
    /// The caller's reaction now.
    my_reaction: Option<String>,
    #[schema(value_type = String)]
    position: Position,
}

/// Sends a reaction command on a post the caller may see, and answers with
/// the counts once projected.
async fn reaction_command(
    state: &ApiState,
    me: &Authenticated,
    ctx: &RequestContext,
    id: Uuid,
    command: post::Command,
) -> Result<HttpResponse, ApiError> {
    seen(state, me.user_id, id).await?;
    let command = ctx.envelope(
        ctx.command_id(Some(me.user_id)),
        Some(me.user_id),
        post_ref(id),
        AnyCommand::Post(command),
    );
    let position = accepted(state.bus.send(&command).await?)?;
    let post = match state.projected(&position).await {
        true => read::visible(&state.db, me.user_id, id).await?,
        false => None,
    };
    Ok(written(
        actix_web::http::StatusCode::OK,
        position.clone(),
        post.map(|post| Reactions {
            like_count: post.like_count,
            reactions: post.reactions,
            my_reaction: post.my_reaction,
            position,
        }),
    ))
}

#[utoipa::path(put, path = "/api/posts/{id}/like", tag = "social",
    params(("id" = Uuid, Path, description = "post id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Liked (liking again changes nothing); replaces another reaction of the caller", body = Reactions),
        (status = 202, description = "Liked; not projected within the bounded wait", body = Accepted),
        (status = 404, description = "`not_found` or `post_not_found`: no such post, deleted, or not visible to the caller", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn like(
    state: web::Data<ApiState>,
    me: Authenticated,
    ctx: RequestContext,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let command = post::Command::React {
        user: me.user_id,
        reaction: Reaction::Like,
        at: ctx.issued_at,
    };
    reaction_command(&state, &me, &ctx, id.into_inner(), command).await
}

#[utoipa::path(delete, path = "/api/posts/{id}/like", tag = "social",
    params(("id" = Uuid, Path, description = "post id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Not liked (any other reaction of the caller stays)", body = Reactions),
        (status = 202, description = "Unliked; not projected within the bounded wait", body = Accepted),
        (status = 404, description = "no such post, deleted, or not visible to the caller", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn unlike(
    state: web::Data<ApiState>,
    me: Authenticated,
    ctx: RequestContext,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let command = post::Command::Unreact {
        user: me.user_id,
        only: Some(Reaction::Like),
        at: ctx.issued_at,
    };
    reaction_command(&state, &me, &ctx, id.into_inner(), command).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReactionBody {
    /// `like`, `love`, `haha`, `wow`, `sad` or `angry`.
    #[serde(rename = "type")]
    #[schema(pattern = "^(like|love|haha|wow|sad|angry)$")]
    pub kind: String,
}

impl TryFrom<ReactionBody> for Reaction {
    type Error = ApiError;

    fn try_from(body: ReactionBody) -> Result<Self, ApiError> {
        Reaction::ALL
            .into_iter()
            .find(|r| r.as_str() == body.kind)
            .ok_or_else(|| {
                ApiError::validation(vec![FieldError::new(
                    "type",
                    "one of like, love, haha, wow, sad, angry",
                )])
            })
    }
}

#[utoipa::path(put, path = "/api/posts/{id}/reaction", tag = "social",
    request_body = ReactionBody,
    params(("id" = Uuid, Path, description = "post id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's one reaction (replacing another); the same again changes nothing", body = Reactions),
        (status = 202, description = "Reacted; not projected within the bounded wait", body = Accepted),
        (status = 404, description = "no such post, deleted, or not visible to the caller", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn react(
    state: web::Data<ApiState>,
    me: Authenticated,
    ctx: RequestContext,
    id: web::Path<Uuid>,
    body: web::Json<ReactionBody>,
) -> Result<HttpResponse, ApiError> {
    let command = post::Command::React {
        user: me.user_id,
        reaction: Reaction::try_from(body.into_inner())?,
        at: ctx.issued_at,
    };
    reaction_command(&state, &me, &ctx, id.into_inner(), command).await
}

#[utoipa::path(delete, path = "/api/posts/{id}/reaction", tag = "social",
    params(("id" = Uuid, Path, description = "post id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller has no reaction to the post", body = Reactions),
        (status = 202, description = "Taken back; not projected within the bounded wait", body = Accepted),
        (status = 404, description = "no such post, deleted, or not visible to the caller", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn unreact(
    state: web::Data<ApiState>,
    me: Authenticated,
    ctx: RequestContext,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let command = post::Command::Unreact {
        user: me.user_id,
        only: None,
        at: ctx.issued_at,
    };
    reaction_command(&state, &me, &ctx, id.into_inner(), command).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommentBody {
    /// 1 to 5,000 characters once surrounding white space is trimmed, not
    /// only invisible ones (zero-width spaces, joiners), no control
    /// characters but line breaks and tabs (the pattern says so for JSON
    /// Schema, but for the invisible ones).
    #[schema(
        pattern = r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f]([^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]{0,4998}[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f])?[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub text: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct CreatedComment {
    comment: CommentView,
    #[schema(value_type = String)]
    position: Position,
}

#[utoipa::path(post, path = "/api/posts/{id}/comments", tag = "social",
    request_body = CommentBody,
    params(("id" = Uuid, Path, description = "post id")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Commented and projected", body = CreatedComment, headers(("X-Position" = String))),
        (status = 202, description = "Commented; not projected within the bounded wait", body = Accepted),
        (status = 404, description = "no such post, deleted, or not visible to the caller", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn add_comment(
    state: web::Data<ApiState>,
    me: Authenticated,
    ctx: RequestContext,
    id: web::Path<Uuid>,
    body: web::Json<CommentBody>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let mut fields = Fields::default();
    let text = fields.check("text", validate::text(&body.text));
    fields.finish()?;
    seen(&state, me.user_id, id).await?;
    let command_id = ctx.command_id(Some(me.user_id));
    let comment_id = Uuid::new_v5(&command_id, b"comment");
    let command = ctx.envelope(
        command_id,
        Some(me.user_id),
        post_ref(id),
        AnyCommand::Post(post::Command::Comment(post::AddComment {
            comment_id,
            author: me.user_id,
            text: text.expect("checked"),
            at: ctx.issued_at,
        })),
    );
    let position = accepted(state.bus.send(&command).await?)?;
    let comment = match state.projected(&position).await {
        true => read::comment(&state.db, comment_id).await?,
        false => None,
    };
    Ok(written(
        actix_web::http::StatusCode::CREATED,
        position.clone(),
        comment.map(|comment| CreatedComment { comment, position }),
    ))
}

#[utoipa::path(get, path = "/api/posts/{id}/comments", tag = "social",
    params(("id" = Uuid, Path, description = "post id"), PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Comments, oldest first", body = Paged<CommentView>,
            headers(("X-Total-Count" = i64, description = "the post's comment count"))),
        (status = 400, description = "`invalid_query`: a bad limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such post, deleted, or not visible to the caller", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id))]
pub(crate) async fn list_comments(
    state: web::Data<ApiState>,
    me: Authenticated,
    id: web::Path<Uuid>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = Page::try_from(&*query)?;
    let post = seen(&state, me.user_id, id.into_inner()).await?;
    let items = read::comments(&state.db, post.id, page.after, page.limit).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("X-Total-Count", post.comment_count.to_string()))
        .json(Paged::of(items, page, |c| (c.created_at, c.id))))
}

#[utoipa::path(get, path = "/api/users/{id}/posts", tag = "social",
    params(("id" = Uuid, Path, description = "user id"), PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The user's posts the caller may see, newest first", body = Paged<PostView>),
        (status = 400, description = "`invalid_query`: a bad limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such user", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id))]
pub(crate) async fn user_posts(
    state: web::Data<ApiState>,
    req: actix_web::HttpRequest,
    me: Authenticated,
    id: web::Path<Uuid>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = Page::try_from(&*query)?;
    let author = id.into_inner();
    let needed = crate::middleware::MinPosition::of(&req);
    state
        .account(author, needed.as_ref())
        .await?
        .ok_or_else(ApiError::not_found)?;
    let items = read::list(
        &state.db,
        me.user_id,
        Source::Author(author),
        page.after,
        page.limit,
    )
    .await?;
    Ok(HttpResponse::Ok().json(Paged::of(items, page, |p| (p.created_at, p.id))))
}

#[utoipa::path(get, path = "/api/feed", tag = "social",
    params(PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's own posts and those of the users the caller follows, newest first", body = Paged<PostView>),
        (status = 400, description = "`invalid_query`: a bad limit or cursor", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id))]
pub(crate) async fn feed(
    state: web::Data<ApiState>,
    req: actix_web::HttpRequest,
    me: Authenticated,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = Page::try_from(&*query)?;
    // A read at a position is answered from PostgreSQL, which has reached
    // it: the cached feeds are changed only after the read models advance.
    let items = match crate::middleware::MinPosition::of(&req) {
        Some(_) => read::list(&state.db, me.user_id, Source::Feed, page.after, page.limit).await?,
        None => cached_feed(&state, me.user_id, page).await?,
    };
    Ok(HttpResponse::Ok().json(Paged::of(items, page, |p| (p.created_at, p.id))))
}

/// A page of the feed by way of its cache (a Redis sorted set per user,
/// kept by the projector): the ids come from the cache, filled from
/// PostgreSQL when cold; the posts themselves, with their counts and the
/// viewer's visibility, from PostgreSQL. Redis down, or a page deeper than
/// the cache holds, reads PostgreSQL alone.
async fn cached_feed(
    state: &ApiState,
    viewer: Uuid,
    page: Page,
) -> Result<Vec<PostView>, ApiError> {
    let from_db = || read::list(&state.db, viewer, Source::Feed, page.after, page.limit);
    let entries = match state.cache.feed(viewer).await {
        Some(entries) => entries,
        None => {
            let Some(generation) = state.cache.feed_generation(viewer).await else {
                return Ok(from_db().await?);
            };
            let entries: Vec<(Uuid, i64)> = read::feed_index(&state.db, viewer, FEED_CAP as i64)
                .await?
                .into_iter()
                .map(|(id, at)| (id, at.timestamp_micros()))
                .collect();
            state.cache.fill_feed(viewer, generation, &entries).await;
            entries
        }
    };
    let after = page.after.map(|(at, id)| (at.timestamp_micros(), id));
    let ids: Vec<Uuid> = entries
        .iter()
        .filter(|(id, micros)| after.is_none_or(|after| (*micros, *id) < after))
        .map(|(id, _)| *id)
        .take(page.limit as usize)
        .collect();
    if (ids.len() as i64) < page.limit && entries.len() >= FEED_CAP {
        return Ok(from_db().await?);
    }
    Ok(read::by_ids(&state.db, viewer, &ids).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> Result<NewPost, ApiError> {
        NewPost::try_from(serde_json::from_str::<CreatePostBody>(json).unwrap())
    }

    #[test]
    fn a_post_defaults_to_public_and_is_trimmed() {
        let post = body(r#"{"text": "  hello  "}"#).unwrap();
        assert_eq!(post.text, "hello");
        assert_eq!(post.visibility, Visibility::Public);
    }

    #[test]
    fn blank_long_or_oddly_visible_posts_are_refused_field_by_field() {
        let long = "x".repeat(5001);
        let error = body(&format!(
            r#"{{"text": "{long}", "visibility": "friends", "media_ids": ["00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000001"]}}"#
        ))
        .err()
        .unwrap();
        let fields: Vec<&str> = error.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["text", "visibility", "media_ids"]);
        assert_eq!(
            body(r#"{"text": " \n "}"#).err().unwrap().code,
            "validation_failed"
        );
    }

    #[test]
    fn a_post_shows_at_most_four_media_items() {
        let ids = |n: u128| -> String {
            let ids: Vec<String> = (1..=n)
                .map(|i| format!("\"{}\"", Uuid::from_u128(i)))
                .collect();
            format!(r#"{{"text": "hi", "media_ids": [{}]}}"#, ids.join(", "))
        };
        assert_eq!(body(&ids(4)).unwrap().media.len(), 4);
        let error = body(&ids(5)).err().unwrap();
        assert_eq!(error.errors[0].field, "media_ids");
    }
}
