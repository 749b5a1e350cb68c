//! Subscriptions that end on the server's side: a followers-only post's
//! channel when its reader stops following the author, and a post's
//! channel when the post is deleted. Through a real WebSocket.

use std::time::Duration;

use serde_json::{json, Value};

use tidings::Role;

use crate::support::{Client, Socket, World, ALL_ROLES};

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

/// `PUT` or `DELETE` on a path as `who`; panics unless 2xx.
async fn write(client: &Client, who: &User, method: &str, path: &str) -> Value {
    let request = match method {
        "PUT" => client.put(path),
        "DELETE" => client.delete(path),
        _ => unreachable!("PUT or DELETE"),
    };
    let reply = client.send(request.bearer_auth(&who.token)).await;
    assert!(
        (200..300).contains(&reply.status),
        "{method} {path}: {} {}",
        reply.status,
        reply.body
    );
    reply.body
}

async fn posted(client: &Client, who: &User, text: &str, visibility: &str) -> String {
    let reply = client
        .send(
            client
                .post("/api/posts")
                .bearer_auth(&who.token)
                .json(&json!({"text": text, "visibility": visibility})),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body["post"]["id"].as_str().unwrap().to_owned()
}

/// Connects and subscribes to each channel, waiting for each `subscribed`.
async fn subscribed(base: &str, who: &User, channels: &[&str]) -> Socket {
    let mut socket = Socket::connect(base, &who.token).await;
    socket.expect("welcome").await;
    for channel in channels {
        socket
            .send(json!({"op": "subscribe", "channel": channel}))
            .await;
        while socket.expect("subscribed").await["channel"] != *channel {}
    }
    socket
}

/// The like count of the next `post.counts` of `channel`, past other frames.
async fn next_counts(socket: &mut Socket, channel: &str) -> i64 {
    loop {
        let frame = socket.expect("event").await;
        if frame["channel"] == channel && frame["event"] == "post.counts" {
            return frame["data"]["like_count"].as_i64().unwrap();
        }
    }
}

/// Every frame that comes within `within`.
async fn frames_within(socket: &mut Socket, within: Duration) -> Vec<Value> {
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match socket.next_frame(left).await {
            Some(frame) => frames.push(frame),
            None => return frames,
        }
    }
}

#[tokio::test]
async fn unfollowing_ends_subscriptions_to_followers_only_posts_of_that_author_only() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let alice = user(&client, "alice").await;
    let bob = user(&client, "bob").await;
    let carol = user(&client, "carol").await;
    let follow = |whom: &User| format!("/api/users/{}/follow", whom.id);
    write(&client, &bob, "PUT", &follow(&alice)).await;
    write(&client, &bob, "PUT", &follow(&carol)).await;
    let secret = posted(&client, &alice, "followers only", "followers").await;
    let open = posted(&client, &alice, "for everyone", "public").await;
    let carols = posted(&client, &carol, "carol's followers only", "followers").await;
    let (secret_channel, open_channel, carols_channel) = (
        format!("post:{secret}"),
        format!("post:{open}"),
        format!("post:{carols}"),
    );
    let mut bobs = subscribed(
        &app.base,
        &bob,
        &[&secret_channel, &open_channel, &carols_channel],
    )
    .await;

    // While following, bob gets the counts.
    write(&client, &alice, "PUT", &format!("/api/posts/{secret}/like")).await;
    assert_eq!(next_counts(&mut bobs, &secret_channel).await, 1);

    write(&client, &bob, "DELETE", &follow(&alice)).await;
    let ended = bobs.expect("unsubscribed").await;
    assert_eq!(
        ended,
        json!({"type": "unsubscribed", "channel": secret_channel, "reason": "forbidden"})
    );

    // A later change of the followers-only post's counts does not reach
    // bob; likes of the public post and of carol's post (still followed) do.
    write(
        &client,
        &alice,
        "DELETE",
        &format!("/api/posts/{secret}/like"),
    )
    .await;
    write(&client, &carol, "PUT", &format!("/api/posts/{open}/like")).await;
    write(&client, &carol, "PUT", &format!("/api/posts/{carols}/like")).await;
    let frames = frames_within(&mut bobs, Duration::from_secs(3)).await;
    let on = |channel: &str| {
        frames
            .iter()
            .filter(|f| f["type"] == "event" && f["channel"] == channel)
            .count()
    };
    assert_eq!(on(&secret_channel), 0, "revoked: {frames:?}");
    assert_eq!(on(&open_channel), 1, "a public post survives: {frames:?}");
    assert_eq!(on(&carols_channel), 1, "another author's post: {frames:?}");
    assert!(
        !frames.iter().any(|f| f["type"] == "unsubscribed"),
        "nothing else ended: {frames:?}"
    );

    // Subscribing again is refused, as for any post one may not see.
    bobs.send(json!({"op": "subscribe", "channel": secret_channel}))
        .await;
    assert_eq!(bobs.expect("error").await["code"], "unknown_channel");

    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn a_gateway_without_the_projector_ends_the_subscription_from_the_topic() {
    let world = World::new().await;
    let back = world
        .start(&[Role::Api, Role::Deciders, Role::Projector])
        .await;
    // Its own application: no shortcut from the projector reaches it, only
    // `<prefix>.updates`.
    let gateway = world.start(&[Role::Realtime]).await;
    let client = Client::new(&back.base);
    let alice = user(&client, "alice").await;
    let bob = user(&client, "bob").await;
    let follow = format!("/api/users/{}/follow", alice.id);
    write(&client, &bob, "PUT", &follow).await;
    let secret = posted(&client, &alice, "followers only", "followers").await;
    let channel = format!("post:{secret}");
    let mut bobs = subscribed(&gateway.base, &bob, &[&channel]).await;
    write(&client, &alice, "PUT", &format!("/api/posts/{secret}/like")).await;
    assert_eq!(next_counts(&mut bobs, &channel).await, 1);

    write(&client, &bob, "DELETE", &follow).await;
    let ended = bobs.expect("unsubscribed").await;
    assert_eq!(ended["channel"], channel.as_str());
    assert_eq!(ended["reason"], "forbidden");
    write(
        &client,
        &alice,
        "DELETE",
        &format!("/api/posts/{secret}/like"),
    )
    .await;
    let frames = frames_within(&mut bobs, Duration::from_secs(3)).await;
    assert!(
        !frames
            .iter()
            .any(|f| f["type"] == "event" && f["channel"] == channel.as_str()),
        "nothing more of {channel}: {frames:?}"
    );

    gateway.stop().await;
    back.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn the_revocation_reaches_a_session_that_unsubscribed_its_own_channel() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let alice = user(&client, "alice").await;
    let bob = user(&client, "bob").await;
    let follow = format!("/api/users/{}/follow", alice.id);
    write(&client, &bob, "PUT", &follow).await;
    let secret = posted(&client, &alice, "followers only", "followers").await;
    let channel = format!("post:{secret}");
    let mut bobs = subscribed(&app.base, &bob, &[&channel]).await;
    bobs.send(json!({"op": "unsubscribe", "channel": format!("user:{}", bob.id)}))
        .await;

    write(&client, &bob, "DELETE", &follow).await;
    let ended = bobs.expect("unsubscribed").await;
    assert_eq!(ended["channel"], channel.as_str());
    assert_eq!(ended["reason"], "forbidden");
    write(&client, &alice, "PUT", &format!("/api/posts/{secret}/like")).await;
    let frames = frames_within(&mut bobs, Duration::from_secs(3)).await;
    assert!(
        !frames.iter().any(|f| f["type"] == "event"),
        "nothing more: {frames:?}"
    );

    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn a_deleted_post_ends_its_subscriptions() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let alice = user(&client, "alice").await;
    let bob = user(&client, "bob").await;
    let post = posted(&client, &alice, "soon gone", "public").await;
    let channel = format!("post:{post}");
    let mut alices = subscribed(&app.base, &alice, &[&channel]).await;
    let mut bobs = subscribed(&app.base, &bob, &[&channel]).await;

    write(&client, &alice, "DELETE", &format!("/api/posts/{post}")).await;
    for socket in [&mut alices, &mut bobs] {
        let ended = socket.expect("unsubscribed").await;
        assert_eq!(
            ended,
            json!({"type": "unsubscribed", "channel": channel, "reason": "deleted"})
        );
    }
    // Subscribing again is refused: the post is gone.
    bobs.send(json!({"op": "subscribe", "channel": channel}))
        .await;
    assert_eq!(bobs.expect("error").await["code"], "unknown_channel");

    app.stop().await;
    world.clean_up().await;
}
