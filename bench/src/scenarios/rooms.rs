//! Messages in one room. Every message of a room is decided by the room's
//! one decider, one after another: open-loop `POST /api/rooms/{id}/messages`
//! at rising rates, spread over the room's writers, with one other
//! participant's socket waiting for each `message.created`. The rate
//! accepted with a reply p99 ≤ 50 ms, and POST → the other participant's
//! socket, beside the same rate of profile changes (one aggregate per
//! writer) → their owners' sockets: what deciding on one aggregate costs.

use std::sync::Arc;

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Value};

use super::{open_loop, refused_note, wait_for, Ctx, OpenLoop, Replies};
use crate::report::{Bound, Row, Scenario};
use crate::stats::Summary;
use crate::tidings::{self, Api, User};
use crate::ws::{marker, Protocol, Sockets, Tracker};

/// Participants of the room (the owner, the listener, the other writers).
const PARTICIPANTS: usize = 10;
/// The reply latency the accepted rate is held to.
const P99_MS: f64 = 50.0;

pub async fn run(ctx: &Ctx) -> anyhow::Result<Scenario> {
    let mut scenario = Scenario::new(
        "rooms",
        "Messages in one room: accepted rate at reply p99 ≤ 50 ms; POST → another participant's socket",
    );
    let plan = &ctx.plan;
    let api = &ctx.target.api;
    let n = ctx.users.len().min(PARTICIPANTS);
    if n < 3 {
        bail!("{} users registered; the scenario needs 3", ctx.users.len());
    }
    let owner = &ctx.users[0];
    let listener = &ctx.users[1];
    let writers: Vec<User> = std::iter::once(owner.clone())
        .chain(ctx.users[2..n].iter().cloned())
        .collect();
    let room = open_room(api, &ctx.run, owner, &ctx.users[1..n]).await?;

    let mut details = Vec::new();
    let mut best: Option<u32> = None;
    for &rate in &plan.room_rates {
        let count = (f64::from(rate) * plan.step.as_secs_f64()).round() as usize;

        // Messages, to the listener's own channel.
        let tracker = Tracker::new(count, count);
        let sockets = Sockets::open(
            Protocol::Tidings,
            vec![api.ws_url(&listener.token)],
            plan.connect_concurrency,
            Some(tracker.clone()),
        )
        .await;
        if sockets.failed > 0 {
            bail!(
                "the listener's socket did not open: {}",
                sockets.first_error.clone().unwrap_or_default()
            );
        }
        let replies = Arc::new(Replies::default());
        let load = open_loop(rate, count, |k, due| {
            let writer = &writers[k % writers.len()];
            let (api, token, room) = (api.clone(), writer.token.clone(), room.clone());
            let replies = replies.clone();
            tracker.sent(k, due);
            async move {
                let answer = post_message(&api, &token, &room, &marker(k)).await;
                replies.push(due.elapsed().as_secs_f64() * 1e3, answer);
            }
        })
        .await;
        let (accepted, others) = replies.split();
        let sent = (count - load.skipped) as u64;
        wait_for(plan.drain, || tracker.delivered() >= sent).await;
        sockets.close().await;
        let messages = Measured::of(count, &tracker, accepted, load);

        // The same rate of profile changes, each writer's at its own socket.
        let tokens: Vec<&str> = writers.iter().map(|w| w.token.as_str()).collect();
        let spread_tracker = Tracker::new(count, count);
        let spread_sockets = ctx
            .tidings_sockets(&tokens, tokens.len(), Some(spread_tracker.clone()))
            .await;
        let spread_replies = Arc::new(Replies::default());
        let spread_load = open_loop(rate, count, |k, due| {
            let writer = &writers[k % writers.len()];
            let (api, token) = (api.clone(), writer.token.clone());
            let (tracker, replies) = (spread_tracker.clone(), spread_replies.clone());
            tracker.sent(k, due);
            async move {
                let answer = api.write(&token, &marker(k)).await;
                replies.push(due.elapsed().as_secs_f64() * 1e3, answer);
            }
        })
        .await;
        let (spread_accepted, spread_others) = spread_replies.split();
        let spread_sent = (count - spread_load.skipped) as u64;
        wait_for(plan.drain, || spread_tracker.delivered() >= spread_sent).await;
        spread_sockets.close().await;
        let spread = Measured::of(count, &spread_tracker, spread_accepted, spread_load);

        let at = format!("{rate}/s");
        scenario.rows.extend([
            Row::new(
                format!("message reply at {at}, p99"),
                messages.reply.p99,
                "ms",
            )
            .against(
                format!("profile change reply at {at}, p99"),
                spread.reply.p99,
            ),
            Row::new(
                format!("POST message → other participant's socket at {at}, p50"),
                messages.frames.p50,
                "ms",
            )
            .against(
                format!("profile change → own socket at {at}, p50"),
                spread.frames.p50,
            ),
            Row::new(
                format!("POST message → other participant's socket at {at}, p99"),
                messages.frames.p99,
                "ms",
            )
            .against(
                format!("profile change → own socket at {at}, p99"),
                spread.frames.p99,
            ),
        ]);
        scenario.notes.push(format!(
            "{at}: {count} messages due over {} writers, {} accepted, {} reached the listener, {} lost (∞); \
             profile changes: {} accepted, {} lost",
            writers.len(),
            messages.accepted,
            tracker.delivered(),
            messages.lost,
            spread.accepted,
            spread.lost,
        ));
        scenario.notes.extend(refused_note(&others));
        scenario
            .notes
            .extend(refused_note(&spread_others).map(|n| format!("profile changes: {n}")));
        let held = messages.reply.p99 <= P99_MS && messages.lost == 0 && others.is_empty();
        details.push(json!({
            "rate": rate, "messages": messages, "profile_changes": spread, "held": held,
        }));
        if let Ok(mut plots) = ctx.plots.lock() {
            plots.latency(&format!("message → socket, {at}"), &messages.curve);
        }
        if !held {
            // Past the rate the room keeps up with, every higher one is
            // only a longer queue.
            break;
        }
        best = Some(rate);
    }
    let best = best.unwrap_or(0);
    scenario.rows.insert(
        0,
        Row::new(
            format!("messages/s to one room of {n} accepted at reply p99 ≤ 50 ms"),
            f64::from(best),
            "messages/s",
        )
        .target(
            Bound::AtLeast,
            f64::from(plan.room_rates[0]),
            "the lowest rate tried holds",
        ),
    );
    scenario.details = json!({ "room": room, "participants": n, "rates": details });
    Ok(scenario)
}

/// What one load of writes did.
#[derive(serde::Serialize)]
struct Measured {
    accepted: usize,
    lost: usize,
    reply: Summary,
    frames: Summary,
    open_loop: OpenLoop,
    /// The frames' latency curve, for the plot.
    #[serde(skip)]
    curve: Summary,
}

impl Measured {
    /// A write due that brought no frame (skipped, refused, or later than
    /// the drain) counts as never arriving (∞).
    fn of(count: usize, tracker: &Tracker, mut accepted: Vec<f64>, load: OpenLoop) -> Measured {
        let mut latencies = tracker.latencies_ms();
        let lost = count.saturating_sub(latencies.len());
        latencies.extend(std::iter::repeat_n(f64::INFINITY, lost));
        let curve = Summary::of_ms(&mut latencies);
        Measured {
            accepted: accepted.len(),
            lost,
            reply: Summary::of_ms(&mut accepted).brief(),
            frames: curve.brief(),
            open_loop: load,
            curve,
        }
    }
}

/// `POST /api/rooms/{room}/messages {text}` as `token`'s user: accepted
/// (201, or 202 when its projector lags), else what was answered.
pub(super) async fn post_message(
    api: &Api,
    token: &str,
    room: &str,
    text: &str,
) -> Result<(), String> {
    let body = json!({ "text": text });
    let path = format!("/api/rooms/{room}/messages");
    match api.call(Method::POST, token, &path, Some(&body)).await {
        Ok((answer, _)) if matches!(answer.status, 201 | 202) => Ok(()),
        Ok((answer, _)) => Err(format!("{} {}", answer.status, code(&answer.body))),
        Err(error) => Err(tidings::unanswered(&error)),
    }
}

/// A public room of `owner` that `others` joined: its id.
pub(super) async fn open_room(
    api: &Api,
    run: &str,
    owner: &User,
    others: &[User],
) -> anyhow::Result<String> {
    let body = json!({"name": format!("bench {run}"), "is_private": false});
    let created = api
        .ok(Method::POST, &owner.token, "/api/rooms", Some(&body))
        .await?;
    let room = created["room"]["id"]
        .as_str()
        .context("no room id")?
        .to_owned();
    for user in others {
        api.ok(
            Method::POST,
            &user.token,
            &format!("/api/rooms/{room}/join"),
            Some(&json!({})),
        )
        .await?;
    }
    Ok(room)
}

/// The problem's `code`, if the body is one.
fn code(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|b| b["code"].as_str().map(str::to_owned))
        .unwrap_or_default()
}
