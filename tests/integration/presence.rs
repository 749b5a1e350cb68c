//! Presence and typing in rooms, end to end through the real API, Redis
//! pub/sub and two gateways.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tidings::Role;

use crate::support::{ChildTidings, Client, Reply, Socket, World, ALL_ROLES};

struct User {
    id: String,
    token: String,
}

async fn user(client: &Client, name: &str) -> User {
    let (id, token, position) = client.user(name).await;
    let profile = client.own_profile(&token, &position).await;
    assert_eq!(profile.status, 200, "{}", profile.body);
    User { id, token }
}

async fn post(client: &Client, who: &User, path: &str, body: Value) -> Reply {
    client
        .send(client.post(path).bearer_auth(&who.token).json(&body))
        .await
}

/// A room of `owner` with `others` in it (invited, then joined).
async fn room(client: &Client, owner: &User, is_private: bool, others: &[&User]) -> String {
    let body = json!({"name": "lobby", "description": "where we meet", "is_private": is_private});
    let reply = post(client, owner, "/api/rooms", body).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let id = reply.body["room"]["id"].as_str().unwrap().to_owned();
    for who in others {
        let invite = json!({"user_id": who.id});
        post(client, owner, &format!("/api/rooms/{id}/invites"), invite).await;
        let joined = post(client, who, &format!("/api/rooms/{id}/join"), json!({})).await;
        assert_eq!(joined.status, 200, "{}", joined.body);
    }
    id
}

async fn welcomed(base: &str, who: &User) -> Socket {
    let mut socket = Socket::connect(base, &who.token).await;
    socket.expect("welcome").await;
    socket
}

/// A socket of `who`, subscribed to `channel` (besides its own).
async fn subscribed(base: &str, who: &User, channel: &str) -> Socket {
    let mut socket = welcomed(base, who).await;
    socket
        .send(json!({"op": "subscribe", "channel": channel}))
        .await;
    loop {
        let frame = socket.expect("subscribed").await;
        if frame["channel"] == channel {
            return socket;
        }
    }
}

/// The next frame of type `kind` about `who`, or `None` within `within`.
async fn next_about(
    socket: &mut Socket,
    kind: &str,
    who: &User,
    within: Duration,
) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = socket.next_frame(left).await?;
        assert_ne!(frame["type"], "closed", "the socket stays open");
        if frame["type"] == kind && frame["user_id"] == who.id.as_str() {
            return Some(frame);
        }
    }
}

/// Asserts that no presence or typing frame reaches the socket within `within`.
async fn hears_no_signal(socket: &mut Socket, within: Duration) {
    let deadline = Instant::now() + within;
    while let Some(frame) = socket
        .next_frame(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        assert_ne!(frame["type"], "closed", "the socket stays open");
        assert!(
            frame["type"] != "presence" && frame["type"] != "typing",
            "no signal expected: {frame}"
        );
    }
}

#[tokio::test]
async fn a_participant_is_online_from_the_first_socket_to_the_last_on_any_gateway() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    // A second gateway in a process of its own: presence goes between the
    // two through Redis only.
    let (child, base) = gateway_process(&world).await;
    let other = Gateway { base };
    let client = Client::new(&app.base);
    // A gateway without the API still answers health, readiness and metrics.
    let gateway = Client::new(&other.base);
    for path in ["/health", "/ready", "/metrics"] {
        let reply = gateway.send(gateway.get(path)).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    }
    let alice = user(&client, "alice").await;
    let bob = user(&client, "bob").await;
    let carol = user(&client, "carol").await;
    let id = room(&client, &alice, true, &[&bob]).await;
    let channel = format!("room:{id}");

    // Bob watches the room on the second gateway; carol is not in it.
    let mut bobs = subscribed(&other.base, &bob, &channel).await;
    let mut carols = welcomed(&app.base, &carol).await;
    carols
        .send(json!({"op": "subscribe", "channel": channel}))
        .await;
    assert_eq!(carols.expect("error").await["code"], "unknown_channel");

    let wait = Duration::from_secs(10);
    let first = welcomed(&app.base, &alice).await;
    let online = next_about(&mut bobs, "presence", &alice, wait)
        .await
        .expect("alice comes online");
    assert_eq!(online["status"], "online");
    assert_eq!(online["channel"], channel.as_str());

    let second = welcomed(&other.base, &alice).await;
    let quiet = Duration::from_millis(1500);
    assert!(
        next_about(&mut bobs, "presence", &alice, quiet)
            .await
            .is_none(),
        "a second socket changes nothing"
    );
    drop(first);
    assert!(
        next_about(&mut bobs, "presence", &alice, quiet)
            .await
            .is_none(),
        "online while a socket is open"
    );
    drop(second);
    let offline = next_about(&mut bobs, "presence", &alice, wait)
        .await
        .expect("alice goes offline with her last socket");
    assert_eq!(offline["status"], "offline");

    // Subscribing tells who is online already.
    let _back = welcomed(&other.base, &alice).await;
    let again = next_about(&mut bobs, "presence", &alice, wait)
        .await
        .unwrap();
    assert_eq!(again["status"], "online");
    let mut late = subscribed(&app.base, &bob, &channel).await;
    let now = next_about(&mut late, "presence", &alice, wait)
        .await
        .expect("the current presence on subscribing");
    assert_eq!(now["status"], "online");

    hears_no_signal(&mut carols, Duration::from_secs(1)).await;
    tokio::task::spawn_blocking(move || child.terminate(Duration::from_secs(20)))
        .await
        .unwrap();
    app.stop().await;
    world.clean_up().await;
}

/// A gateway (and API) in a process of its own, and where it listens, once
/// it is up.
/// Someone already online who joins a room is announced online on its
/// channel to those watching it (their presence went out before they were a
/// participant).
#[tokio::test]
async fn an_online_user_who_joins_a_room_is_announced_online_there() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let alice = user(&client, "alice").await;
    let bob = user(&client, "bob").await;
    let id = room(&client, &alice, false, &[]).await;
    let channel = format!("room:{id}");
    let mut alices = subscribed(&app.base, &alice, &channel).await;
    let _bobs = welcomed(&app.base, &bob).await;
    let wait = Duration::from_secs(10);
    assert!(
        next_about(&mut alices, "presence", &bob, Duration::from_secs(1))
            .await
            .is_none(),
        "bob is not in the room yet"
    );
    let joined = post(&client, &bob, &format!("/api/rooms/{id}/join"), json!({})).await;
    assert_eq!(joined.status, 200, "{}", joined.body);
    let online = next_about(&mut alices, "presence", &bob, wait)
        .await
        .expect("bob, online, is announced when he joins");
    assert_eq!(online["status"], "online");
    assert_eq!(online["channel"], channel.as_str());
    app.stop().await;
    world.clean_up().await;
}

async fn gateway_process(world: &World) -> (ChildTidings, String) {
    let child = world.spawn("api,realtime", &[]);
    tokio::task::spawn_blocking(move || {
        let base = child.base_url();
        (child, base)
    })
    .await
    .unwrap()
}

/// Where a spawned gateway listens.
struct Gateway {
    base: String,
}

#[tokio::test]
async fn typing_reaches_the_other_participants_on_every_gateway_and_lapses() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let other = world.start(&[Role::Realtime]).await;
    let client = Client::new(&app.base);
    let alice = user(&client, "alice").await;
    let bob = user(&client, "bob").await;
    let carol = user(&client, "carol").await;
    let id = room(&client, &alice, true, &[&bob]).await;
    let public = room(&client, &alice, false, &[]).await;
    let channel = format!("room:{id}");

    let mut bobs = subscribed(&other.base, &bob, &channel).await;
    let mut alices = subscribed(&app.base, &alice, &channel).await;
    // Not subscribed to the public room: its subscribers do hear the
    // presence of its participants.
    let mut carols = welcomed(&app.base, &carol).await;
    let events = world.events().len();

    alices
        .send(json!({"op": "typing", "channel": channel, "is_typing": true}))
        .await;
    let started = Instant::now();
    // Repeats within a second are dropped.
    for _ in 0..3 {
        alices
            .send(json!({"op": "typing", "channel": channel, "is_typing": true}))
            .await;
    }
    let typing = next_about(&mut bobs, "typing", &alice, Duration::from_secs(10))
        .await
        .expect("bob sees alice typing on the other gateway");
    assert_eq!(typing["is_typing"], true);
    assert_eq!(typing["channel"], channel.as_str());
    // Nothing more until it lapses by itself, about five seconds on.
    let lapsed = next_about(&mut bobs, "typing", &alice, Duration::from_secs(10))
        .await
        .expect("the server says alice stopped");
    assert_eq!(lapsed["is_typing"], false, "the repeats were dropped");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(4500) && after < Duration::from_secs(9),
        "lapsed after {after:?}"
    );
    // The sender hears nothing of her own typing.
    assert!(
        next_about(&mut alices, "typing", &alice, Duration::from_millis(500))
            .await
            .is_none()
    );

    // A stop right after a start goes through.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    alices
        .send(json!({"op": "typing", "channel": channel, "is_typing": true}))
        .await;
    alices
        .send(json!({"op": "typing", "channel": channel, "is_typing": false}))
        .await;
    let wait = Duration::from_secs(5);
    let on = next_about(&mut bobs, "typing", &alice, wait).await.unwrap();
    let off = next_about(&mut bobs, "typing", &alice, wait).await.unwrap();
    assert_eq!(
        (&on["is_typing"], &off["is_typing"]),
        (&json!(true), &json!(false))
    );

    // Only a participant types, and only in a room.
    for (typed, code) in [
        (channel.clone(), "unknown_channel"),
        (format!("room:{public}"), "forbidden"),
        (format!("user:{}", alice.id), "unknown_channel"),
    ] {
        carols
            .send(json!({"op": "typing", "channel": typed, "is_typing": true}))
            .await;
        assert_eq!(carols.expect("error").await["code"], code, "{typed}");
    }
    hears_no_signal(&mut carols, Duration::from_secs(1)).await;
    hears_no_signal(&mut bobs, Duration::from_secs(1)).await;
    assert_eq!(world.events().len(), events, "typing is never logged");

    other.stop().await;
    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn a_killed_gateways_users_go_offline_within_the_expiry() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let (child, base) = gateway_process(&world).await;
    let client = Client::new(&app.base);
    let alice = user(&client, "alice").await;
    let bob = user(&client, "bob").await;
    let id = room(&client, &alice, true, &[&bob]).await;
    let channel = format!("room:{id}");
    let mut bobs = subscribed(&app.base, &bob, &channel).await;

    // Alice's only socket is on the gateway that dies without a word.
    let alices = welcomed(&base, &alice).await;
    let online = next_about(&mut bobs, "presence", &alice, Duration::from_secs(10))
        .await
        .expect("alice comes online");
    assert_eq!(online["status"], "online");
    tokio::task::spawn_blocking(move || child.kill())
        .await
        .unwrap();
    let killed = Instant::now();
    // Her sessions lapse (TTL) and the next sweep of the surviving gateway
    // announces it.
    let within = tidings_realtime::presence::TTL
        + tidings_realtime::presence::SWEEP_EVERY
        + Duration::from_secs(10);
    let offline = next_about(&mut bobs, "presence", &alice, within)
        .await
        .expect("alice goes offline after her gateway died");
    assert_eq!(offline["status"], "offline");
    assert!(
        killed.elapsed() >= Duration::from_secs(5),
        "offline by expiry, not by a goodbye: {:?}",
        killed.elapsed()
    );
    drop(alices);
    app.stop().await;
    world.clean_up().await;
}
