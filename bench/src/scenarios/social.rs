//! The social read and the social write that contend most. `GET /api/feed`
//! (a reader following five authors) with the feed's Redis sorted set warm,
//! and cold (deleted before every read, so each one is PostgreSQL's query
//! and a refill), beside `GET /health`, the floor of an HTTP round trip
//! here. Then every registered user likes one post at once: all of those
//! writes are decided by the one post's decider, one after another; beside
//! the same users each changing their own profile at once, the same number
//! of writes spread over as many aggregates.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Value};

use super::Ctx;
use crate::report::{Row, Scenario};
use crate::stats::Summary;
use crate::tidings::{Api, User};

/// Authors the reader follows.
const AUTHORS: usize = 5;

pub async fn run(ctx: &Ctx) -> anyhow::Result<Scenario> {
    let mut scenario = Scenario::new("social", "Home feed read, and likes on one post");
    let api = &ctx.target.api;
    let users = &ctx.users;
    if users.len() < AUTHORS + 2 {
        bail!(
            "{} users registered; the scenario needs {}",
            users.len(),
            AUTHORS + 2
        );
    }
    let (posts_each, reads) = if ctx.plan.quick { (5, 30) } else { (20, 300) };

    let reader = &users[0];
    let reader_id = id_of(api, reader).await?;
    for author in &users[1..=AUTHORS] {
        let id = id_of(api, author).await?;
        api.ok(
            Method::PUT,
            &reader.token,
            &format!("/api/users/{id}/follow"),
            None,
        )
        .await?;
        for i in 0..posts_each {
            let post = json!({"text": format!("post {i} for the feed"), "visibility": "followers"});
            api.ok(Method::POST, &author.token, "/api/posts", Some(&post))
                .await?;
        }
    }
    let page = (AUTHORS * posts_each).min(20);
    wait_for_feed(api, reader, page).await?;

    let warm = timed(reads, || async {
        let (answer, took) = api
            .call(Method::GET, &reader.token, "/api/feed", None)
            .await?;
        expect_page(&answer.body, answer.status, page)?;
        Ok(took)
    })
    .await?;
    let feed_key = format!("{}:feed:{reader_id}", ctx.target.topic_prefix);
    let redis = deadpool_redis::redis::Client::open(crate::tidings::REDIS_URL)?;
    let mut conn = redis.get_multiplexed_async_connection().await?;
    let mut cold = Vec::with_capacity(reads);
    for _ in 0..reads {
        let deleted: i64 = deadpool_redis::redis::cmd("DEL")
            .arg(&feed_key)
            .query_async(&mut conn)
            .await?;
        if deleted != 1 && cold.is_empty() {
            bail!("no feed cache under {feed_key}: is the Redis prefix the topic prefix?");
        }
        let (answer, took) = api
            .call(Method::GET, &reader.token, "/api/feed", None)
            .await?;
        expect_page(&answer.body, answer.status, page)?;
        cold.push(took);
    }
    let health = timed(reads, || async {
        let started = Instant::now();
        let (answer, _) = api
            .call(Method::GET, &reader.token, "/health", None)
            .await?;
        if answer.status != 200 {
            bail!("GET /health answered {}", answer.status);
        }
        Ok(started.elapsed())
    })
    .await?;

    // Every user likes one public post, all at once.
    let author = &users[1];
    let created = api
        .ok(
            Method::POST,
            &author.token,
            "/api/posts",
            Some(&json!({"text": "like this", "visibility": "public"})),
        )
        .await?;
    let post = created["post"]["id"]
        .as_str()
        .context("no post id")?
        .to_owned();
    let like = format!("/api/posts/{post}/like");
    let (likes, likes_wall) = at_once(users, |user| {
        let (api, like) = (api.clone(), like.clone());
        async move { api.call(Method::PUT, &user.token, &like, None).await }
    })
    .await?;
    let (answer, _) = api
        .call(
            Method::GET,
            &author.token,
            &format!("/api/posts/{post}"),
            None,
        )
        .await?;
    let counted = serde_json::from_str::<Value>(&answer.body)?["like_count"].as_u64();
    if counted != Some(users.len() as u64) {
        bail!(
            "{} users liked the post; it shows like_count {counted:?}",
            users.len()
        );
    }
    let (spread, spread_wall) = at_once(users, |user| {
        let api = api.clone();
        let body = json!({"bio": "changed at once"});
        async move {
            api.call(Method::PATCH, &user.token, "/api/profile", Some(&body))
                .await
        }
    })
    .await?;

    let (w, c, h) = (Summary::of(&warm), Summary::of(&cold), Summary::of(&health));
    let (l, s) = (Summary::of(&likes), Summary::of(&spread));
    let n = users.len();
    scenario.rows.push(
        Row::new("GET /api/feed, warm cache, p50", w.p50, "ms").against("GET /health, p50", h.p50),
    );
    scenario.rows.push(
        Row::new("GET /api/feed, warm cache, p99", w.p99, "ms").against("GET /health, p99", h.p99),
    );
    scenario.rows.push(
        Row::new("GET /api/feed, cold cache, p50", c.p50, "ms")
            .against("GET /api/feed, warm cache, p50", w.p50),
    );
    scenario.rows.push(
        Row::new("GET /api/feed, cold cache, p99", c.p99, "ms")
            .against("GET /api/feed, warm cache, p99", w.p99),
    );
    scenario.rows.push(
        Row::new(
            format!("{n} likes of one post at once, all answered"),
            ms(likes_wall),
            "ms",
        )
        .against(
            format!("{n} profile changes (one each) at once"),
            ms(spread_wall),
        ),
    );
    scenario.rows.push(
        Row::new(
            format!("{n} likes of one post at once, reply p99"),
            l.p99,
            "ms",
        )
        .against(format!("{n} profile changes at once, p99"), s.p99),
    );
    scenario.notes.push(format!(
        "the feed: {page} posts per page of {} by {AUTHORS} followed authors, {reads} reads each way; \
         like_count {n} after {n} likes",
        AUTHORS * posts_each
    ));
    scenario.details = json!({
        "feed_warm": w.brief(), "feed_cold": c.brief(), "health": h.brief(),
        "likes": l.brief(), "likes_wall_ms": ms(likes_wall),
        "profile_changes": s.brief(), "profile_changes_wall_ms": ms(spread_wall),
    });
    if let Ok(mut plots) = ctx.plots.lock() {
        plots.latency("feed, warm cache", &w);
        plots.latency("feed, cold cache", &c);
    }
    Ok(scenario)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn id_of(api: &Api, user: &User) -> anyhow::Result<String> {
    let profile = api
        .ok(Method::GET, &user.token, "/api/profile", None)
        .await?;
    Ok(profile["id"]
        .as_str()
        .context("no id in the profile")?
        .to_owned())
}

fn expect_page(body: &str, status: u16, len: usize) -> anyhow::Result<()> {
    let items = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|b| b["items"].as_array().map(Vec::len));
    if status != 200 || items != Some(len) {
        bail!("GET /api/feed answered {status} with {items:?} items, not {len}");
    }
    Ok(())
}

/// Until the reader's first page is full (the projector has fanned the
/// posts out).
async fn wait_for_feed(api: &Api, reader: &User, len: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (answer, _) = api
            .call(Method::GET, &reader.token, "/api/feed", None)
            .await?;
        if expect_page(&answer.body, answer.status, len).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the feed did not fill within 60 s: {}", answer.body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `count` sequential calls of `read`, each returning how long it took.
async fn timed<F, Fut>(count: usize, mut read: F) -> anyhow::Result<Vec<Duration>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Duration>>,
{
    let mut took = Vec::with_capacity(count);
    for _ in 0..count {
        took.push(read().await?);
    }
    Ok(took)
}

/// One write per user, all sent at once; each must be accepted (200, or
/// 202 when the projector lags). Their latencies, and the time until the
/// last answer.
async fn at_once<F, Fut>(users: &[User], write: F) -> anyhow::Result<(Vec<Duration>, Duration)>
where
    F: Fn(User) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(crate::tidings::Answer, Duration)>>
        + Send
        + 'static,
{
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for user in users {
        tasks.spawn(write(user.clone()));
    }
    let mut took = Vec::with_capacity(users.len());
    while let Some(done) = tasks.join_next().await {
        let (answer, elapsed) = done??;
        if !matches!(answer.status, 200 | 202) {
            bail!(
                "a write at once answered {} {}",
                answer.status,
                answer.body.chars().take(200).collect::<String>()
            );
        }
        took.push(elapsed);
    }
    Ok((took, started.elapsed()))
}
