//! Follows: follow and unfollow a user, and the followers and following
//! lists. Each pair (follower, followee) is an aggregate of its own, so
//! both writes are idempotent; following oneself is refused by it (422).

use actix_web::{web, HttpResponse};
use serde::Serialize;
use tidings_commands::AnyCommand;
use tidings_domain::follow;
use tidings_projections::follows::{self as read, FollowView, Side};
use tidings_schemas::{AggregateRef, AggregateType, Position};
use uuid::Uuid;

use crate::accounts::Accepted;
use crate::auth::Authenticated;
use crate::context::RequestContext;
use crate::error::{accepted, ApiError, Problem};
use crate::page::{Page, PageQuery, Paged};
use crate::ApiState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/users/{id}/follow", web::put().to(follow))
        .route("/api/users/{id}/follow", web::delete().to(unfollow))
        .route("/api/users/{id}/followers", web::get().to(followers))
        .route("/api/users/{id}/following", web::get().to(following));
}

/// Where the caller stands with the user after a write.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Followed {
    following: bool,
    /// The user's followers now.
    followers_count: i64,
    #[schema(value_type = String)]
    position: Position,
}

async fn write(
    state: &ApiState,
    me: &Authenticated,
    ctx: &RequestContext,
    followee: Uuid,
    follows: bool,
) -> Result<HttpResponse, ApiError> {
    // Following oneself is the decider's to refuse (422), whatever exists.
    if followee != me.user_id {
        state
            .account(followee, None)
            .await?
            .ok_or_else(ApiError::not_found)?;
    }
    let pair = follow::Pair {
        follower: me.user_id,
        followee,
        at: ctx.issued_at,
    };
    let command = match follows {
        true => follow::Command::Follow(pair),
        false => follow::Command::Unfollow(pair),
    };
    let command = ctx.envelope(
        ctx.command_id(Some(me.user_id)),
        Some(me.user_id),
        AggregateRef::new(
            AggregateType::Follow,
            follow::Pair::aggregate_id(me.user_id, followee),
        ),
        AnyCommand::Follow(command),
    );
    let position = accepted(state.bus.send(&command).await?)?;
    let account = match state.projected(&position).await {
        true => tidings_projections::accounts::by_id(&state.db, followee).await?,
        false => None,
    };
    let mut response = match account {
        Some(_) => HttpResponse::Ok(),
        None => HttpResponse::Accepted(),
    };
    response.insert_header(("X-Position", position.to_string()));
    Ok(match account {
        Some(account) => response.json(Followed {
            following: follows,
            followers_count: account.followers_count,
            position,
        }),
        None => response.json(Accepted { position }),
    })
}

#[utoipa::path(put, path = "/api/users/{id}/follow", tag = "social",
    params(("id" = Uuid, Path, description = "the user to follow")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Following (following again changes nothing)", body = Followed, headers(("X-Position" = String))),
        (status = 202, description = "Following; not projected within the bounded wait", body = Accepted),
        (status = 404, description = "no such user", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`cannot_follow_self`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn follow(
    state: web::Data<ApiState>,
    me: Authenticated,
    ctx: RequestContext,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    write(&state, &me, &ctx, id.into_inner(), true).await
}

#[utoipa::path(delete, path = "/api/users/{id}/follow", tag = "social",
    params(("id" = Uuid, Path, description = "the user to unfollow")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Not following (unfollowing again changes nothing)", body = Followed, headers(("X-Position" = String))),
        (status = 202, description = "Unfollowed; not projected within the bounded wait", body = Accepted),
        (status = 404, description = "no such user", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a dependency is down or the command timed out; `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all, fields(user_id = %me.user_id, request_id = %ctx.request_id))]
pub(crate) async fn unfollow(
    state: web::Data<ApiState>,
    me: Authenticated,
    ctx: RequestContext,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    write(&state, &me, &ctx, id.into_inner(), false).await
}

async fn list(
    state: &ApiState,
    req: &actix_web::HttpRequest,
    user: Uuid,
    side: Side,
    query: &PageQuery,
) -> Result<HttpResponse, ApiError> {
    let page = Page::try_from(query)?;
    let needed = crate::middleware::MinPosition::of(req);
    let account = state
        .account(user, needed.as_ref())
        .await?
        .ok_or_else(ApiError::not_found)?;
    let total = match side {
        Side::Followers => account.followers_count,
        Side::Following => account.following_count,
    };
    let items = read::list(&state.db, user, side, page.after, page.limit).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("X-Total-Count", total.to_string()))
        .json(Paged::of(items, page, |f: &FollowView| {
            (f.followed_at, f.id)
        })))
}

#[utoipa::path(get, path = "/api/users/{id}/followers", tag = "social",
    params(("id" = Uuid, Path, description = "user id"), PageQuery),
    responses(
        (status = 200, description = "Who follows the user, latest first", body = Paged<FollowView>,
            headers(("X-Total-Count" = i64, description = "the user's followers count"))),
        (status = 400, description = "`invalid_query`: a bad limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such user", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all)]
pub(crate) async fn followers(
    state: web::Data<ApiState>,
    req: actix_web::HttpRequest,
    id: web::Path<Uuid>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    list(&state, &req, id.into_inner(), Side::Followers, &query).await
}

#[utoipa::path(get, path = "/api/users/{id}/following", tag = "social",
    params(("id" = Uuid, Path, description = "user id"), PageQuery),
    responses(
        (status = 200, description = "Whom the user follows, latest first", body = Paged<FollowView>,
            headers(("X-Total-Count" = i64, description = "the user's following count"))),
        (status = 400, description = "`invalid_query`: a bad limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such user", body = Problem, content_type = "application/problem+json")
    ))]
#[tracing::instrument(skip_all)]
pub(crate) async fn following(
    state: web::Data<ApiState>,
    req: actix_web::HttpRequest,
    id: web::Path<Uuid>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    list(&state, &req, id.into_inner(), Side::Following, &query).await
}
