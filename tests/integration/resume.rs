//! The gateway's delivery guarantees on a room's channel, end to end: a
//! socket that resumes with `since` gets exactly what it missed, in order,
//! then the live stream (also on a new gateway after its own was killed); a
//! live socket misses nothing while the outbox relay is killed and started
//! again; and every socket on every gateway gets every message once, in
//! order, whichever API process took it.
//!
//! What a socket received is held to the room's history
//! (`GET /api/rooms/{id}/messages`): consecutive seqs from where the socket
//! stood, each once, carrying the history's messages in its order. A lost,
//! doubled or reordered update fails the test, named by its seq.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};
use tidings::Role;
use tokio::time::Instant;
use uuid::Uuid;

use crate::support::{ChildTidings, Client, Running, Socket, World, ALL_ROLES};

/// How long a socket may take to receive a whole burst of messages: far
/// more than it takes, so only a lost update runs into it.
const DELIVERY: Duration = Duration::from_secs(120);
/// How long a socket that has everything is watched for anything more.
const QUIET: Duration = Duration::from_secs(2);
/// PostgreSQL connections of each pool of the processes a test starts
/// (besides the roles' own small pools): these tests start up to four
/// processes each, and run side by side under PostgreSQL's 100 connections.
const POOL: u32 = 3;

struct User {
    id: String,
    token: String,
}

/// Registers, and waits until the account is projected (a room names it).
/// A 503 (a command not decided in time while the deciders of several
/// processes share out the partitions) is retried under the same
/// `Idempotency-Key`, as the answer asks.
async fn user(client: &Client, name: &str) -> User {
    let key = Uuid::new_v4().to_string();
    for _ in 0..30 {
        let reply = client
            .send(
                client
                    .post("/api/auth/register")
                    .header("Idempotency-Key", &key)
                    .json(&json!({
                        "username": name,
                        "email": format!("{name}@example.com"),
                        "password": "correct horse battery",
                    })),
            )
            .await;
        if reply.status == 503 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        assert_eq!(reply.status, 201, "{}", reply.body);
        let token = reply.body["token"].as_str().unwrap().to_owned();
        let position = reply.body["position"].as_str().unwrap();
        let profile = client.own_profile(&token, position).await;
        assert_eq!(profile.status, 200, "{}", profile.body);
        let id = reply.body["user"]["id"].as_str().unwrap().to_owned();
        return User { id, token };
    }
    panic!("{name} could not register");
}

/// Tidings with `roles` in this process, on small pools (see [`POOL`]).
async fn start(world: &World, roles: &[Role]) -> Running {
    let mut settings = world.settings.clone();
    settings.database_pool = POOL;
    world.start_with(settings, roles).await
}

/// A `tidings` child process with `roles`, on small pools (see [`POOL`]),
/// with `env` besides.
fn spawn(world: &World, roles: &str, env: &[(&str, &str)]) -> ChildTidings {
    let pool = POOL.to_string();
    let mut env = env.to_vec();
    env.push(("TIDINGS_DATABASE_POOL", &pool));
    world.spawn(roles, &env)
}

/// A `tidings` child process with `roles` that serves HTTP, and where, once
/// it is up.
async fn serving(world: &World, roles: &str) -> (ChildTidings, String) {
    serving_with(world, roles, &[]).await
}

/// [`serving`], with `env` besides.
async fn serving_with(world: &World, roles: &str, env: &[(&str, &str)]) -> (ChildTidings, String) {
    let child = spawn(world, roles, env);
    tokio::task::spawn_blocking(move || {
        let base = child.base_url();
        (child, base)
    })
    .await
    .unwrap()
}

/// A `tidings` child process running the projector and its outbox relay,
/// once the relay runs.
async fn relay_process(world: &World) -> ChildTidings {
    let child = spawn(world, "projector", &[]);
    tokio::task::spawn_blocking(move || {
        child.wait_for_line("outbox relay started", Duration::from_secs(60));
        child
    })
    .await
    .unwrap()
}

/// `kill -9`.
async fn kill(child: ChildTidings) {
    tokio::task::spawn_blocking(move || child.kill())
        .await
        .unwrap();
}

/// Waits until `GET /ready` of `base` answers 200: every role owns its
/// partitions.
async fn ready(base: &str) {
    let client = Client::new(base);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let reply = client.send(client.get("/ready")).await;
        if reply.status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{base} not ready within 90 s: {} {}",
            reply.status,
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A public room of `owner` that `others` joined; its id.
async fn public_room(client: &Client, owner: &User, others: &[&User]) -> String {
    let created = client
        .send(
            client
                .post("/api/rooms")
                .bearer_auth(&owner.token)
                .json(&json!({"name": "resume", "is_private": false})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["room"]["id"].as_str().unwrap().to_owned();
    for who in others {
        let joined = client
            .send(
                client
                    .post(&format!("/api/rooms/{id}/join"))
                    .bearer_auth(&who.token)
                    .json(&json!({})),
            )
            .await;
        assert_eq!(joined.status, 200, "{}", joined.body);
    }
    id
}

/// Posts `text` as `who`: 201, or 202 while no projector runs. A "not now"
/// (503, or 409 while a first try is in flight) is retried under the same
/// `Idempotency-Key`, so a retry never posts twice.
async fn say(client: &Client, who: &User, room: &str, text: &str) {
    let key = Uuid::new_v4().to_string();
    for _ in 0..30 {
        let reply = client
            .send(
                client
                    .post(&format!("/api/rooms/{room}/messages"))
                    .bearer_auth(&who.token)
                    .header("Idempotency-Key", &key)
                    .json(&json!({ "text": text })),
            )
            .await;
        match reply.status {
            201 | 202 => return,
            503 | 409 => tokio::time::sleep(Duration::from_millis(500)).await,
            _ => panic!("posting {text:?}: {} {}", reply.status, reply.body),
        }
    }
    panic!("{text:?} could not be posted");
}

/// Posts each of `texts` as `who`, through `clients` in turn, `parallel` at
/// a time (so the room's order is the server's to choose).
async fn say_all(clients: &[Client], who: &User, room: &str, texts: &[String], parallel: usize) {
    stream::iter(texts.iter().enumerate())
        .map(|(i, text)| say(&clients[i % clients.len()], who, room, text))
        .buffer_unordered(parallel)
        .collect::<Vec<()>>()
        .await;
}

/// `count` distinct message texts.
fn numbered(prefix: &str, count: usize) -> Vec<String> {
    (1..=count).map(|n| format!("{prefix} {n}")).collect()
}

/// The room's whole history as `who` reads it, oldest first.
async fn history(client: &Client, who: &User, room: &str) -> Vec<Value> {
    let mut path = format!("/api/rooms/{room}/messages?limit=100");
    let mut messages = Vec::new();
    loop {
        let page = client.send(client.get(&path).bearer_auth(&who.token)).await;
        if page.status == 503 {
            // A dependency is busy: as a client would, try again shortly.
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        assert_eq!(page.status, 200, "{}", page.body);
        messages.extend(page.body["items"].as_array().unwrap().iter().cloned());
        match page.body["next_cursor"].as_str() {
            Some(next) => path = format!("/api/rooms/{room}/messages?limit=100&cursor={next}"),
            None => break,
        }
    }
    messages.reverse();
    messages
}

/// The messages of the room's history after the one with id `after` (all
/// of them for `None`), once every one of `posted` is in it. Holds the
/// history itself first: ordinals 1, 2, 3…, and after `after` exactly the
/// texts posted, each once.
async fn history_after(
    client: &Client,
    who: &User,
    room: &str,
    after: Option<&str>,
    posted: &[String],
) -> Vec<Value> {
    let deadline = Instant::now() + DELIVERY;
    loop {
        let all = history(client, who, room).await;
        let ordinals: Vec<i64> = all.iter().map(|m| m["ordinal"].as_i64().unwrap()).collect();
        let expected: Vec<i64> = (1..=all.len() as i64).collect();
        assert_eq!(
            ordinals, expected,
            "the room's history has a gap or a double"
        );
        let start = match after {
            Some(id) => {
                all.iter()
                    .position(|m| m["id"] == id)
                    .expect("the message seen is in the history")
                    + 1
            }
            None => 0,
        };
        let later = all[start..].to_vec();
        if later.len() < posted.len() && Instant::now() < deadline {
            // Posts answered 202 are not projected yet.
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let mut texts: Vec<&str> = later.iter().map(|m| m["text"].as_str().unwrap()).collect();
        let mut wanted: Vec<&str> = posted.iter().map(String::as_str).collect();
        texts.sort_unstable();
        wanted.sort_unstable();
        assert_eq!(
            texts, wanted,
            "the history holds exactly the messages posted"
        );
        return later;
    }
}

/// A socket of `who`, welcomed (and subscribed to its own channel).
async fn welcomed(base: &str, who: &User) -> Socket {
    let mut socket = Socket::connect(base, &who.token).await;
    let welcome = socket.expect("welcome").await;
    assert_eq!(welcome["user_id"], who.id.as_str());
    socket
}

/// Subscribes the socket to `channel`, resuming after `since` (seq, epoch)
/// if given; the `subscribed` frame. An `unavailable` answer (the gateway
/// could not read PostgreSQL in time) is followed as the contract says:
/// subscribe again. That of the own channel, subscribed on connect, is no
/// concern of these tests.
async fn subscribe(socket: &mut Socket, channel: &str, since: Option<(i64, i64)>) -> Value {
    let mut frame = json!({"op": "subscribe", "channel": channel, "ref": "resume"});
    if let Some((seq, epoch)) = since {
        frame["since"] = seq.into();
        frame["epoch"] = epoch.into();
    }
    for _ in 0..10 {
        socket.send(frame.clone()).await;
        loop {
            let answer = socket
                .next_frame(Duration::from_secs(15))
                .await
                .unwrap_or_else(|| panic!("no answer to subscribing to {channel}"));
            match answer["type"].as_str() {
                Some("subscribed") if answer["channel"] == channel => return answer,
                Some("error") if answer["code"] == "unavailable" && answer["ref"] != "resume" => {}
                Some("error") if answer["code"] == "unavailable" => break,
                Some("error" | "closed") => panic!("subscribing to {channel}: {answer}"),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{channel} stayed unavailable");
}

/// The `event` frames of `channel` the socket receives until `count` have
/// come or `within` has passed; frames of other channels are passed over.
/// The socket must stay open, subscribed and without error throughout.
async fn events_of(
    socket: &mut Socket,
    channel: &str,
    count: usize,
    within: Duration,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut events = Vec::new();
    while events.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(frame) = socket.next_frame(left).await else {
            break;
        };
        match frame["type"].as_str() {
            Some("event") if frame["channel"] == channel => events.push(frame),
            Some("closed" | "error" | "unsubscribed") => panic!(
                "after {} events of {channel} the socket got {frame}",
                events.len()
            ),
            _ => {}
        }
    }
    events
}

/// Holds what `socket` received on a room's channel to `expected` (the
/// history's messages past where it stood): `message.created` for each, in
/// the history's order, with seqs `after + 1` on, each once, in `epoch`.
fn assert_delivered(socket: &str, events: &[Value], after: i64, epoch: i64, expected: &[Value]) {
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    let wanted: Vec<i64> = (after + 1..=after + expected.len() as i64).collect();
    let ids: Vec<&Value> = events.iter().map(|e| &e["data"]["id"]).collect();
    let wanted_ids: Vec<&Value> = expected.iter().map(|m| &m["id"]).collect();
    let right_kind = events
        .iter()
        .all(|e| e["event"] == "message.created" && e["epoch"] == epoch);
    if seqs != wanted || ids != wanted_ids || !right_kind {
        panic!(
            "{socket} did not get every message once and in order:\n{}",
            diagnose(events, after, epoch, expected)
        );
    }
}

/// What went wrong between the updates received and those expected, by seq
/// and by message.
fn diagnose(events: &[Value], after: i64, epoch: i64, expected: &[Value]) -> String {
    let last = after + expected.len() as i64;
    let mut times: BTreeMap<i64, usize> = BTreeMap::new();
    for event in events {
        *times.entry(event["seq"].as_i64().unwrap()).or_default() += 1;
    }
    let missing: Vec<i64> = (after + 1..=last)
        .filter(|seq| !times.contains_key(seq))
        .collect();
    let doubled: Vec<(i64, usize)> = times
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(&seq, &n)| (seq, n))
        .collect();
    let outside: Vec<i64> = times
        .keys()
        .copied()
        .filter(|seq| !(after + 1..=last).contains(seq))
        .collect();
    let reordered: Vec<(i64, i64)> = events
        .windows(2)
        .map(|pair| {
            (
                pair[0]["seq"].as_i64().unwrap(),
                pair[1]["seq"].as_i64().unwrap(),
            )
        })
        .filter(|(a, b)| b <= a)
        .collect();
    let received: Vec<&Value> = events.iter().map(|e| &e["data"]["id"]).collect();
    let lost: Vec<String> = expected
        .iter()
        .filter(|m| !received.contains(&&m["id"]))
        .map(|m| format!("#{} {}", m["ordinal"], m["text"]))
        .collect();
    let misplaced = events
        .iter()
        .zip(expected)
        .position(|(event, message)| event["data"]["id"] != message["id"])
        .map(|i| {
            format!(
                "at index {i}: seq {} carries ordinal {}, the history has ordinal {} there",
                events[i]["seq"], events[i]["data"]["ordinal"], expected[i]["ordinal"]
            )
        });
    let foreign: Vec<String> = events
        .iter()
        .filter(|e| e["event"] != "message.created" || e["epoch"] != epoch)
        .map(|e| format!("seq {} {} epoch {}", e["seq"], e["event"], e["epoch"]))
        .collect();
    format!(
        "received {} of {} updates (seqs {}..={last})\n\
         missing seqs: {missing:?}\n\
         doubled seqs (seq, times): {doubled:?}\n\
         seqs outside the range: {outside:?}\n\
         out of order (seq, then seq): {reordered:?}\n\
         messages never received: {lost:?}\n\
         first message out of place: {misplaced:?}\n\
         other events or epochs: {foreign:?}",
        events.len(),
        expected.len(),
        after + 1,
    )
}

/// Posts one more message and holds that it is, on each socket, the very
/// next update of `channel` (seq `last + 1`: nothing late or doubled came
/// before it), and that nothing follows it.
async fn then_live(
    client: &Client,
    who: &User,
    room: &str,
    channel: &str,
    sockets: &mut [(&str, &mut Socket)],
    last: i64,
) {
    say(client, who, room, "live").await;
    for (name, socket) in sockets.iter_mut() {
        let next = events_of(socket, channel, 1, DELIVERY).await;
        assert_eq!(next.len(), 1, "{name}: the live message never came");
        assert_eq!(
            (next[0]["seq"].as_i64(), &next[0]["data"]["text"]),
            (Some(last + 1), &json!("live")),
            "{name}: the next update is the live message: {}",
            next[0]
        );
    }
    for (name, socket) in sockets.iter_mut() {
        let more = events_of(socket, channel, 1, QUIET).await;
        assert!(more.is_empty(), "{name}: more after the live one: {more:?}");
    }
}

/// Bob's socket subscribes to the room's channel, receives one message and
/// notes where it stands: the seq and epoch to resume from, and the id of
/// the message.
async fn one_message_then_note(
    client: &Client,
    alice: &User,
    room: &str,
    socket: &mut Socket,
) -> (i64, i64, String) {
    let channel = format!("room:{room}");
    let head = subscribe(socket, &channel, None).await;
    say(client, alice, room, "before").await;
    let seen = events_of(socket, &channel, 1, DELIVERY).await;
    assert_eq!(seen.len(), 1, "the first message never came");
    let seen = &seen[0];
    assert_eq!(seen["data"]["text"], "before");
    assert_eq!(seen["seq"].as_i64(), head["seq"].as_i64().map(|s| s + 1));
    (
        seen["seq"].as_i64().unwrap(),
        seen["epoch"].as_i64().unwrap(),
        seen["data"]["id"].as_str().unwrap().to_owned(),
    )
}

/// Resumes a fresh socket of `who` on `channel` from `since` and holds what
/// comes to the history: `subscribed` with `recovered: true` at
/// `since + posted`, then exactly the messages posted, then the live one.
async fn resume_and_check(
    base: &str,
    client: &Client,
    poster: &User,
    who: &User,
    room: &str,
    (since, epoch, seen): (i64, i64, String),
    posted: &[String],
) {
    let channel = format!("room:{room}");
    let mut socket = welcomed(base, who).await;
    let resumed = subscribe(&mut socket, &channel, Some((since, epoch))).await;
    let last = since + posted.len() as i64;
    assert_eq!(
        (
            resumed["recovered"].as_bool(),
            resumed["seq"].as_i64(),
            resumed["epoch"].as_i64()
        ),
        (Some(true), Some(last), Some(epoch)),
        "{resumed}"
    );
    let missed = events_of(&mut socket, &channel, posted.len(), DELIVERY).await;
    let expected = history_after(client, who, room, Some(&seen), posted).await;
    assert_delivered("the resumed socket", &missed, since, epoch, &expected);
    then_live(
        client,
        poster,
        room,
        &channel,
        &mut [("the resumed socket", &mut socket)],
        last,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_socket_that_resumes_gets_exactly_what_it_missed_in_order_then_live() {
    let world = World::new().await;
    let app = start(&world, &ALL_ROLES).await;
    let client = Client::new(&app.base);
    let alice = user(&client, "alice").await;
    let bob = user(&client, "bob").await;
    let room = public_room(&client, &alice, &[&bob]).await;

    let mut socket = welcomed(&app.base, &bob).await;
    let noted = one_message_then_note(&client, &alice, &room, &mut socket).await;
    drop(socket);

    let missed = numbered("missed", 500);
    say_all(std::slice::from_ref(&client), &alice, &room, &missed, 8).await;
    resume_and_check(&app.base, &client, &alice, &bob, &room, noted, &missed).await;

    app.stop().await;
    world.clean_up().await;
}

/// A replay hands out no text the room's history no longer shows: a
/// message deleted since it was posted comes as its tombstone, an edited one
/// with its text of now, wherever its updates are replayed from.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_shows_deleted_and_edited_messages_as_they_are_now() {
    let world = World::new().await;
    let app = start(&world, &ALL_ROLES).await;
    let client = Client::new(&app.base);
    let alice = user(&client, "alice").await;
    let carol = user(&client, "carol").await;
    let room = public_room(&client, &alice, &[]).await;
    for text in ["posted secret", "kept", "first wording"] {
        say(&client, &alice, &room, text).await;
    }
    let posted = history(&client, &alice, &room).await;
    let id = |n: usize| posted[n]["id"].as_str().unwrap().to_owned();
    let (deleted, edited) = (id(0), id(2));
    for (message, text) in [(&deleted, "edited secret"), (&edited, "second wording")] {
        let reply = client
            .send(
                client
                    .patch(&format!("/api/rooms/{room}/messages/{message}"))
                    .bearer_auth(&alice.token)
                    .json(&json!({ "text": text })),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let reply = client
        .send(
            client
                .delete(&format!("/api/rooms/{room}/messages/{deleted}"))
                .bearer_auth(&alice.token),
        )
        .await;
    assert!(matches!(reply.status, 200 | 204), "{}", reply.body);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = history(&client, &alice, &room).await;
        if now[0]["deleted"] == true && now[2]["text"] == "second wording" {
            break;
        }
        assert!(Instant::now() < deadline, "not projected: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Carol, who never joined the public room, replays all of it: from the
    // hot ring, and (the ring gone) from the outbox.
    let channel = format!("room:{room}");
    let ring = format!("{}:ring:{channel}", world.settings.redis_prefix);
    for source in ["ring", "outbox"] {
        if source == "outbox" {
            world.redis_del(&ring).await;
        }
        let mut socket = welcomed(&app.base, &carol).await;
        let subscribed = subscribe(&mut socket, &channel, Some((0, 1))).await;
        assert_eq!(subscribed["recovered"], true, "{subscribed}");
        let events = events_of(&mut socket, &channel, 6, Duration::from_secs(15)).await;
        assert_eq!(events.len(), 6, "{source}: {events:?}");
        for event in &events {
            let text = event.to_string();
            for gone in ["posted secret", "edited secret", "first wording"] {
                assert!(!text.contains(gone), "{source}: {gone:?} replayed: {event}");
            }
            let data = &event["data"];
            if data["id"] == deleted.as_str() {
                assert_eq!(data["deleted"], true, "{source}: {event}");
            }
            if data["id"] == edited.as_str() {
                assert_eq!(data["text"], "second wording", "{source}: {event}");
            }
        }
    }
    app.stop().await;
    world.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_socket_resumes_on_a_new_gateway_process_after_its_own_was_killed() {
    let world = World::new().await;
    let core = start(&world, &[Role::Api, Role::Deciders, Role::Projector]).await;
    let client = Client::new(&core.base);
    let (gateway, base) = serving(&world, "realtime").await;
    let alice = user(&client, "alice").await;
    let bob = user(&client, "bob").await;
    let room = public_room(&client, &alice, &[&bob]).await;

    let mut socket = welcomed(&base, &bob).await;
    let noted = one_message_then_note(&client, &alice, &room, &mut socket).await;
    kill(gateway).await;
    loop {
        let frame = socket
            .next_frame(Duration::from_secs(10))
            .await
            .expect("the socket of a killed gateway ends");
        if frame["type"] == "closed" {
            break;
        }
    }

    // Posted while no gateway runs at all.
    let missed = numbered("while down", 300);
    say_all(std::slice::from_ref(&client), &alice, &room, &missed, 8).await;
    let (gateway, base) = serving(&world, "realtime").await;
    resume_and_check(&base, &client, &alice, &bob, &room, noted, &missed).await;

    kill(gateway).await;
    core.stop().await;
    world.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_socket_gets_every_message_once_in_order_across_a_killed_relay() {
    const MESSAGES: usize = 200;
    /// Updates the socket receives before the relay is killed.
    const BEFORE_KILL: usize = 40;
    let world = World::new().await;
    let front = start(&world, &[Role::Api, Role::Deciders]).await;
    let client = Client::new(&front.base);
    let relay = relay_process(&world).await;
    let (gateway, base) = serving(&world, "realtime").await;
    let alice = Arc::new(user(&client, "alice").await);
    let bob = user(&client, "bob").await;
    let room = public_room(&client, &alice, &[&bob]).await;
    let channel = format!("room:{room}");

    let mut socket = welcomed(&base, &bob).await;
    let head = subscribe(&mut socket, &channel, None).await;
    let (after, epoch) = (
        head["seq"].as_i64().unwrap(),
        head["epoch"].as_i64().unwrap(),
    );

    // A steady stream: one message every 20 ms, whatever the answers take
    // (those posted while no projector runs wait for their bounded wait).
    let texts = numbered("stream", MESSAGES);
    let answered = Arc::new(AtomicUsize::new(0));
    let posting = tokio::spawn({
        let (client, alice, room, texts, answered) = (
            client.clone(),
            alice.clone(),
            room.clone(),
            texts.clone(),
            answered.clone(),
        );
        async move {
            let start = Instant::now();
            stream::iter(texts.into_iter().enumerate())
                .map(|(n, text)| {
                    let (client, alice, room, answered) = (
                        client.clone(),
                        alice.clone(),
                        room.clone(),
                        answered.clone(),
                    );
                    async move {
                        tokio::time::sleep_until(start + Duration::from_millis(20) * n as u32)
                            .await;
                        say(&client, &alice, &room, &text).await;
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<()>>()
                .await;
        }
    });

    let mut events = events_of(&mut socket, &channel, BEFORE_KILL, DELIVERY).await;
    assert_eq!(events.len(), BEFORE_KILL, "the stream never got going");
    kill(relay).await;
    let answered_at_kill = answered.load(Ordering::SeqCst);
    assert!(
        answered_at_kill < MESSAGES,
        "the relay was killed after the stream, not in it"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let relay = relay_process(&world).await;
    events.extend(events_of(&mut socket, &channel, MESSAGES - events.len(), DELIVERY).await);
    posting.await.unwrap();

    let expected = history_after(&client, &bob, &room, None, &texts).await;
    assert_delivered(
        &format!("the live socket (relay killed after {answered_at_kill} answered)"),
        &events,
        after,
        epoch,
        &expected,
    );
    then_live(
        &client,
        &alice,
        &room,
        &channel,
        &mut [("the live socket", &mut socket)],
        after + MESSAGES as i64,
    )
    .await;

    kill(relay).await;
    kill(gateway).await;
    front.stop().await;
    world.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_and_two_api_processes_deliver_everything() {
    const EACH: usize = 100;
    let world = World::new().await;
    let (api_one, one) = serving(&world, "api,deciders").await;
    let (api_two, two) = serving(&world, "api,deciders").await;
    // Each gateway with a projector and relay beside it: the one owning the
    // room's partition also has the room's updates straight from its
    // projector's commits, besides the topic; the two relays publish side
    // by side.
    let (gateway_one, first) = serving(&world, "realtime,projector").await;
    let (gateway_two, second) = serving(&world, "realtime,projector").await;
    for base in [&one, &two] {
        ready(base).await;
    }
    let clients = [Client::new(&one), Client::new(&two)];
    let alice = user(&clients[0], "alice").await;
    let bob = user(&clients[1], "bob").await;
    let room = public_room(&clients[0], &alice, &[&bob]).await;
    let channel = format!("room:{room}");

    let mut sockets = Vec::new();
    for (name, who, base) in [
        ("alice on gateway one", &alice, &first),
        ("alice on gateway two", &alice, &second),
        ("bob on gateway one", &bob, &first),
        ("bob on gateway two", &bob, &second),
    ] {
        let mut socket = welcomed(base, who).await;
        let head = subscribe(&mut socket, &channel, None).await;
        sockets.push((name, socket, head));
    }
    let after = sockets[0].2["seq"].as_i64().unwrap();
    let epoch = sockets[0].2["epoch"].as_i64().unwrap();
    for (name, _, head) in &sockets {
        assert_eq!(
            (head["seq"].as_i64(), head["epoch"].as_i64()),
            (Some(after), Some(epoch)),
            "{name}: {head}"
        );
    }

    // Both write at once, each through both API processes in turn, while
    // every socket reads.
    let (alices, bobs) = (numbered("alice", EACH), numbered("bob", EACH));
    let reversed = [clients[1].clone(), clients[0].clone()];
    let posting = async {
        tokio::join!(
            say_all(&clients, &alice, &room, &alices, 4),
            say_all(&reversed, &bob, &room, &bobs, 4),
        )
    };
    let reading = futures_util::future::join_all(
        sockets
            .iter_mut()
            .map(|(_, socket, _)| events_of(socket, &channel, 2 * EACH, DELIVERY)),
    );
    let (_, received) = tokio::join!(posting, reading);

    let posted: Vec<String> = alices.iter().chain(&bobs).cloned().collect();
    let expected = history_after(&clients[1], &bob, &room, None, &posted).await;
    for ((name, _, _), events) in sockets.iter().zip(&received) {
        assert_delivered(name, events, after, epoch, &expected);
    }
    let mut live: Vec<(&str, &mut Socket)> = sockets
        .iter_mut()
        .map(|(name, socket, _)| (*name, socket))
        .collect();
    then_live(
        &clients[1],
        &bob,
        &room,
        &channel,
        &mut live,
        after + 2 * EACH as i64,
    )
    .await;

    for child in [api_one, api_two, gateway_one, gateway_two] {
        kill(child).await;
    }
    world.clean_up().await;
}

/// A gateway in another process than the projector has each commit over
/// Redis, not only when its fetch of `tidings.updates` returns: here that
/// fetch is made to wait 20 s (the broker holds a fetch for its whole
/// wait), and every message still reaches the socket within a few seconds
/// of its answer, in order and once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_in_another_process_has_each_commit_without_waiting_for_the_topic() {
    const EACH: usize = 5;
    const WITHIN: Duration = Duration::from_secs(5);
    let world = World::new().await;
    let core = start(&world, &[Role::Api, Role::Deciders, Role::Projector]).await;
    let client = Client::new(&core.base);
    let (gateway, base) =
        serving_with(&world, "realtime", &[("TIDINGS_WS_FETCH_WAIT_MS", "20000")]).await;
    ready(&base).await;
    let alice = user(&client, "alice").await;
    let bob = user(&client, "bob").await;
    let room = public_room(&client, &alice, &[&bob]).await;
    let channel = format!("room:{room}");
    let mut socket = welcomed(&base, &bob).await;
    let head = subscribe(&mut socket, &channel, None).await;
    let (after, epoch) = (
        head["seq"].as_i64().unwrap(),
        head["epoch"].as_i64().unwrap(),
    );

    let texts = numbered("prompt", EACH);
    let mut received = Vec::new();
    for text in &texts {
        say(&client, &alice, &room, text).await;
        let event = events_of(&mut socket, &channel, 1, WITHIN).await;
        assert_eq!(
            event.len(),
            1,
            "{text:?} did not reach the other process's socket within {WITHIN:?} of its answer"
        );
        received.extend(event);
    }
    let expected = history_after(&client, &bob, &room, None, &texts).await;
    assert_delivered("bob", &received, after, epoch, &expected);

    kill(gateway).await;
    core.stop().await;
    world.clean_up().await;
}
