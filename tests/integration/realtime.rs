use std::time::Duration;

use deadpool_redis::redis;
use serde_json::json;
use tidings_projections::outbox::{self, ChannelUpdate};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{eventually, Client, Socket, World, ALL_ROLES};

async fn connected(base: &str, token: &str, user_id: &str) -> Socket {
    let mut socket = Socket::connect(base, token).await;
    let welcome = socket.expect("welcome").await;
    assert_eq!(welcome["user_id"], user_id);
    let subscribed = socket.expect("subscribed").await;
    assert_eq!(subscribed["channel"], format!("user:{user_id}"));
    socket
}

#[tokio::test]
async fn a_profile_update_reaches_every_socket_of_its_user_and_no_other() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (alice, alice_token, _) = client.user("alice").await;
    let (bob, bob_token, _) = client.user("bob").await;
    let mut tab_one = connected(&app.base, &alice_token, &alice).await;
    let mut tab_two = connected(&app.base, &alice_token, &alice).await;
    let mut bobs = connected(&app.base, &bob_token, &bob).await;

    let reply = client
        .send(
            client
                .patch("/api/profile")
                .bearer_auth(&alice_token)
                .json(&json!({"display_name": "Alice Live"})),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    for tab in [&mut tab_one, &mut tab_two] {
        let event = tab.expect("event").await;
        assert_eq!(event["channel"], format!("user:{alice}"));
        assert_eq!(event["event"], "profile.updated");
        assert_eq!(event["seq"], 1);
        assert_eq!(event["data"]["display_name"], "Alice Live");
    }
    assert_eq!(
        bobs.next_frame(Duration::from_secs(2)).await,
        None,
        "bob saw alice's update"
    );

    // A client that was away resumes with `since` and gets what it missed.
    let reply = client
        .send(
            client
                .patch("/api/profile")
                .bearer_auth(&alice_token)
                .json(&json!({"bio": "second"})),
        )
        .await;
    assert_eq!(reply.status, 200);
    let mut later = connected(&app.base, &alice_token, &alice).await;
    later
        .send(json!({"op": "subscribe", "channel": format!("user:{alice}"), "since": 0}))
        .await;
    let subscribed = later.expect("subscribed").await;
    assert_eq!(
        (
            subscribed["recovered"].as_bool(),
            subscribed["seq"].as_i64()
        ),
        (Some(true), Some(2))
    );
    let first = later.expect("event").await;
    let second = later.expect("event").await;
    assert_eq!(
        (first["seq"].as_i64(), second["seq"].as_i64()),
        (Some(1), Some(2))
    );
    assert_eq!(second["data"]["bio"], "second");
    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn the_gateway_keeps_out_the_unauthorized_and_other_users_channels() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (alice, token, _) = client.user("alice").await;
    let (bob, _, _) = client.user("bob").await;

    let mut stranger = Socket::connect(&app.base, "not-a-token").await;
    let error = stranger.expect("error").await;
    assert_eq!(error["code"], "invalid_token");
    assert_eq!(stranger.expect("closed").await["code"], 4001);

    let mut socket = connected(&app.base, &token, &alice).await;
    for (frame, code) in [
        (
            json!({"op": "subscribe", "channel": format!("user:{bob}"), "ref": "r1"}),
            "forbidden",
        ),
        (
            json!({"op": "subscribe", "channel": "nowhere:1"}),
            "unknown_channel",
        ),
        (json!({"op": "dance"}), "bad_frame"),
    ] {
        socket.send(frame).await;
        let error = socket.expect("error").await;
        assert_eq!(error["code"], code, "{error}");
    }
    socket.send(json!({"op": "ping"})).await;
    socket.expect("pong").await;
    app.stop().await;
    world.clean_up().await;
}

type RawSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket without the checks of [`Socket`], for what happens below the
/// frames: close handshakes, dropped connections, clients that stop reading.
async fn raw_socket(base: &str, token: &str) -> RawSocket {
    let url = format!("{}/ws?token={token}", base.replacen("http://", "ws://", 1));
    let (mut stream, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("WebSocket connects");
    for kind in ["welcome", "subscribed"] {
        let frame = raw_next(&mut stream, Duration::from_secs(10)).await;
        assert!(
            matches!(&frame, Some(Ok(Message::Text(t))) if t.contains(&format!("\"type\":\"{kind}\""))),
            "{frame:?}"
        );
    }
    stream
}

async fn raw_next(
    stream: &mut RawSocket,
    within: Duration,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    use futures_util::StreamExt;
    tokio::time::timeout(within, stream.next())
        .await
        .ok()
        .flatten()
}

async fn closes(client: &Client, code: &str) -> f64 {
    let text = crate::operations::metrics(client).await;
    crate::operations::sample(&text, "tidings_ws_closes_total", &[("code", code)]).unwrap_or(0.0)
}

#[tokio::test]
async fn a_close_frame_is_answered_with_a_close_frame_at_once() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (_, token, _) = client.user("alice").await;
    let mut socket = raw_socket(&app.base, &token).await;
    let started = std::time::Instant::now();
    socket
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await
        .unwrap();
    // The server's first heartbeat may come first.
    let answer = loop {
        match raw_next(&mut socket, Duration::from_secs(5)).await {
            Some(Ok(Message::Ping(_))) => continue,
            other => break other,
        }
    };
    let took = started.elapsed();
    match answer {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("no Close frame in answer: {other:?} after {took:?}"),
    }
    assert!(took < Duration::from_millis(300), "answered after {took:?}");
    eventually(
        Duration::from_secs(5),
        "the close counted as the client's",
        || async { closes(&client, "client").await == 1.0 },
    )
    .await;
    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn a_connection_dropped_without_a_close_frame_counts_as_a_client_close() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (_, token, _) = client.user("alice").await;
    for _ in 0..3 {
        // Dropped: the TCP connection ends with no Close frame.
        drop(raw_socket(&app.base, &token).await);
    }
    eventually(Duration::from_secs(10), "three client closes", || async {
        closes(&client, "client").await == 3.0
    })
    .await;
    assert_eq!(
        closes(&client, "4400").await,
        0.0,
        "counted as protocol errors"
    );
    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed() {
    use futures_util::SinkExt;
    let world = World::new().await;
    // The client floods on purpose, to back the server's writes up: no
    // frame rate limit may end it first.
    let mut settings = world.settings.clone();
    settings.ws_frames_per_second = 1_000_000;
    let app = world.start_with(settings, &ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (_, token, _) = client.user("alice").await;
    let (bob, _, _) = client.user("bob").await;
    // A small receive buffer, so the server's writes back up soon.
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let address = app.base.trim_start_matches("http://").parse().unwrap();
    let tcp = tcp.connect(address).await.unwrap();
    let url = format!(
        "{}/ws?token={token}",
        app.base.replacen("http://", "ws://", 1)
    );
    let (mut socket, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
            .await
            .unwrap();
    // Each of these is answered by an error frame that echoes the 15 kB `ref`;
    // the client reads none of them, until its own writes stall too.
    let frame =
        json!({"op": "subscribe", "channel": format!("user:{bob}"), "ref": "r".repeat(15_000)});
    let mut sent = 0;
    for _ in 0..5_000 {
        let send = socket.send(Message::text(frame.to_string()));
        match tokio::time::timeout(Duration::from_millis(500), send).await {
            Ok(result) => result.unwrap(),
            Err(_) => break,
        }
        sent += 1;
    }
    assert!(sent < 5_000, "the server never stopped taking frames");
    // The answers past its queue's budget (256 KiB) end the session.
    eventually(
        Duration::from_secs(15),
        "the stalled socket closed as too slow",
        || async { closes(&client, "4009").await == 1.0 },
    )
    .await;
    // What the connection had taken before the server gave up can still be
    // read (the rest of the queue is let go); then the connection ends.
    let mut ended = false;
    for _ in 0..20_000 {
        match raw_next(&mut socket, Duration::from_secs(5)).await {
            Some(Ok(Message::Text(_))) => continue,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                ended = true;
                break;
            }
            Some(Ok(_)) => continue,
        }
    }
    assert!(ended, "the socket is still open");
    app.stop().await;
    world.clean_up().await;
}

/// One client stops reading while another of the same channel reads: the
/// stalled one fills its own queue and is closed with 4009; the other gets
/// every update, in order, as if nothing happened.
#[tokio::test]
async fn a_stalled_client_is_closed_with_4009_and_a_healthy_one_misses_nothing() {
    let world = World::new().await;
    let mut settings = world.settings.clone();
    settings.ws_queue_bytes = 8 * 1024;
    let app = world.start_with(settings, &ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (alice, token, _) = client.user("alice").await;
    let mut healthy = connected(&app.base, &token, &alice).await;
    // A small receive buffer, so the server's writes back up soon.
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let tcp = tcp
        .connect(app.base.trim_start_matches("http://").parse().unwrap())
        .await
        .unwrap();
    let url = format!(
        "{}/ws?token={token}",
        app.base.replacen("http://", "ws://", 1)
    );
    let (mut stalled, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
            .await
            .unwrap();
    // Writes until the stalled socket is closed: its queue (8 KiB here),
    // what the kernel holds unsent (16 KiB), the dispatcher's buffer and the
    // client's receive buffer take about a hundred of them.
    const MAX_WRITES: i64 = 1_000;
    let mut seq = 0;
    for n in 0..MAX_WRITES {
        if n % 50 == 0 && closes(&client, "4009").await == 1.0 {
            break;
        }
        let bio = format!("{n:04}{}", "b".repeat(450));
        let reply = client
            .send(
                client
                    .patch("/api/profile")
                    .bearer_auth(&token)
                    .json(&json!({ "bio": bio })),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        // The healthy socket keeps up, write by write.
        let event = healthy.expect("event").await;
        seq += 1;
        assert_eq!(event["seq"], seq, "{event}");
        assert_eq!(event["data"]["bio"], bio);
    }
    assert_eq!(
        closes(&client, "4009").await,
        1.0,
        "the stalled socket was not closed as too slow"
    );
    // Read now, the stalled socket ends with the close: 4009.
    let mut code = None;
    while let Some(Ok(message)) = raw_next(&mut stalled, Duration::from_secs(5)).await {
        if let Message::Close(frame) = message {
            code = frame.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(code, Some(4009));
    assert_eq!(
        healthy.next_frame(Duration::from_millis(500)).await,
        None,
        "the healthy socket got more than the writes"
    );
    app.stop().await;
    world.clean_up().await;
}

/// A client that resumes over more than its queue holds gets the whole
/// backlog, not 4009: the replay waits for the client to take what waits
/// before it queues more.
#[tokio::test]
async fn a_resume_over_more_than_the_queue_holds_goes_at_the_clients_pace() {
    let world = World::new().await;
    let mut settings = world.settings.clone();
    settings.ws_queue_bytes = 8 * 1024;
    let app = world.start_with(settings, &ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (alice, token, _) = client.user("alice").await;
    // Frames of about 650 bytes: six times what the queue holds.
    const WRITES: i64 = 80;
    let bio = |n: i64| format!("{n:04}{}", "b".repeat(490));
    for n in 1..=WRITES {
        let reply = client
            .send(
                client
                    .patch("/api/profile")
                    .bearer_auth(&token)
                    .json(&json!({ "bio": bio(n) })),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let mut socket = connected(&app.base, &token, &alice).await;
    socket
        .send(json!({"op": "subscribe", "channel": format!("user:{alice}"), "since": 0}))
        .await;
    let subscribed = socket.expect("subscribed").await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    for seq in 1..=WRITES {
        let event = socket.expect("event").await;
        assert_eq!(event["seq"], seq, "{event}");
        assert_eq!(event["data"]["bio"], bio(seq), "{event}");
    }
    assert_eq!(closes(&client, "4009").await, 0.0);
    app.stop().await;
    world.clean_up().await;
}

async fn replays(client: &Client, source: &str) -> f64 {
    let text = crate::operations::metrics(client).await;
    crate::operations::sample(&text, "tidings_ws_replays_total", &[("source", source)])
        .unwrap_or(0.0)
}

/// A resuming client is served from the hot ring (Redis) when it holds
/// every update asked for, and from the outbox when it lacks one; either way
/// the client gets exactly what it missed, and its `subscribed` carries the
/// position to read REST state "as of".
#[tokio::test]
async fn a_resume_reads_the_hot_ring_and_the_outbox_where_the_ring_has_a_hole() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (alice, token, _) = client.user("alice").await;
    let mut socket = connected(&app.base, &token, &alice).await;
    for n in 1..=5 {
        let reply = client
            .send(
                client
                    .patch("/api/profile")
                    .bearer_auth(&token)
                    .json(&json!({ "bio": format!("bio {n}") })),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(socket.expect("event").await["seq"], n);
    }
    let ring = format!("{}:ring:user:{alice}", world.settings.redis_prefix);
    eventually(
        Duration::from_secs(5),
        "the ring holds the five",
        || async { world.redis_zcard(&ring).await == 5 },
    )
    .await;
    let resumed = |expected_from: &'static str| {
        let (base, token, alice) = (app.base.clone(), token.clone(), alice.clone());
        async move {
            let mut socket = connected(&base, &token, &alice).await;
            socket
                .send(json!({"op": "subscribe", "channel": format!("user:{alice}"), "since": 2}))
                .await;
            let subscribed = socket.expect("subscribed").await;
            assert_eq!(subscribed["recovered"], true, "{subscribed}");
            // A REST read "as of" the subscription shows everything up to
            // its seq.
            let position = subscribed["position"].as_str().unwrap().to_owned();
            assert!(!position.is_empty(), "{subscribed}");
            let profile = Client::new(&base).own_profile(&token, &position).await;
            assert_eq!(profile.body["bio"], "bio 5", "{}", profile.body);
            for seq in 3..=5 {
                let event = socket.expect("event").await;
                assert_eq!(event["seq"], seq, "{expected_from}: {event}");
                assert_eq!(event["data"]["bio"], format!("bio {seq}"), "{event}");
            }
            assert_eq!(
                socket.next_frame(Duration::from_millis(500)).await,
                None,
                "{expected_from}: more than the three missed"
            );
        }
    };
    let ring_before = replays(&client, "ring").await;
    let outbox_before = replays(&client, "outbox").await;
    resumed("ring").await;
    assert_eq!(replays(&client, "ring").await, ring_before + 1.0);
    assert_eq!(replays(&client, "outbox").await, outbox_before);
    // A hole in the ring (seq 4 gone): the outbox serves the resume.
    let redis = redis::Client::open(world.settings.redis_url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let removed: i64 = redis::cmd("ZREMRANGEBYSCORE")
        .arg(&ring)
        .arg(4)
        .arg(4)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    resumed("outbox").await;
    assert_eq!(replays(&client, "ring").await, ring_before + 1.0);
    assert_eq!(replays(&client, "outbox").await, outbox_before + 1.0);
    drop(socket);
    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn a_repeated_subscribe_does_not_resend() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (alice, token, _) = client.user("alice").await;
    let mut socket = connected(&app.base, &token, &alice).await;
    let reply = client
        .send(
            client
                .patch("/api/profile")
                .bearer_auth(&token)
                .json(&json!({"bio": "once"})),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(socket.expect("event").await["seq"], 1);
    for _ in 0..2 {
        socket
            .send(json!({"op": "subscribe", "channel": format!("user:{alice}"), "since": 0}))
            .await;
        let subscribed = socket.expect("subscribed").await;
        assert_eq!(subscribed["recovered"], true, "{subscribed}");
    }
    assert_eq!(
        socket.next_frame(Duration::from_secs(2)).await,
        None,
        "an update was sent twice"
    );
    // Unsubscribed first, a subscribe with `since` replays.
    socket
        .send(json!({"op": "unsubscribe", "channel": format!("user:{alice}")}))
        .await;
    socket
        .send(json!({"op": "subscribe", "channel": format!("user:{alice}"), "since": 0}))
        .await;
    socket.expect("subscribed").await;
    assert_eq!(socket.expect("event").await["seq"], 1);
    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn a_catch_up_that_cannot_read_the_outbox_says_so() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (alice, token, _) = client.user("alice").await;
    let reply = client
        .send(
            client
                .patch("/api/profile")
                .bearer_auth(&token)
                .json(&json!({"bio": "missed"})),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let db = world.db().await;
    // Projected and relayed: nothing writes the outbox while it is broken.
    eventually(Duration::from_secs(10), "the update relayed", || async {
        outbox::backlog(&db).await.unwrap() == 0
    })
    .await;
    let mut socket = connected(&app.base, &token, &alice).await;
    // Nor is it in the hot ring (Redis), which is read first.
    let redis = redis::Client::open(world.settings.redis_url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let ring = format!("{}:ring:user:{alice}", world.settings.redis_prefix);
    let removed: i64 = redis::cmd("DEL")
        .arg(&ring)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(removed, 1, "the ring held the update");
    // The channel's head still reads; its updates do not.
    sqlx::query("ALTER TABLE channel_outbox RENAME COLUMN data TO data_away")
        .execute(&db)
        .await
        .unwrap();
    let subscribe =
        json!({"op": "subscribe", "channel": format!("user:{alice}"), "since": 0, "ref": "s1"});
    socket.send(subscribe.clone()).await;
    socket.expect("subscribed").await;
    let error = socket
        .next_frame(Duration::from_secs(5))
        .await
        .expect("the failed catch-up is reported");
    assert_eq!(
        (
            error["type"].as_str(),
            error["code"].as_str(),
            error["ref"].as_str()
        ),
        (Some("error"), Some("unavailable"), Some("s1")),
        "{error}"
    );
    sqlx::query("ALTER TABLE channel_outbox RENAME COLUMN data_away TO data")
        .execute(&db)
        .await
        .unwrap();
    // Subscribing again gets what the failed catch-up could not send.
    socket.send(subscribe).await;
    assert_eq!(socket.expect("subscribed").await["recovered"], true);
    let event = socket.expect("event").await;
    assert_eq!(
        (event["seq"].as_i64(), event["data"]["bio"].as_str()),
        (Some(1), Some("missed"))
    );
    app.stop().await;
    world.clean_up().await;
}

/// A user channel of a test-made user, named `user:a` or `user:b`.
fn channel(name: &str) -> tidings_schemas::Channel {
    let n = if name.ends_with('a') { 0xa } else { 0xb };
    tidings_schemas::Channel::User(uuid::Uuid::from_u128(n))
}

#[tokio::test]
async fn the_outbox_keeps_the_last_updates_of_each_channel_and_resume_says_what_is_gone() {
    let world = World::new().await;
    let db = world.db().await;
    let mut tx = db.begin().await.unwrap();
    let updates: Vec<ChannelUpdate> = (1..=5)
        .map(|n| ChannelUpdate::new(channel("user:a"), "profile.updated", json!({"n": n})))
        .chain([ChannelUpdate::new(
            channel("user:b"),
            "profile.updated",
            json!({}),
        )])
        .collect();
    outbox::append(&mut tx, &updates).await.unwrap();
    tx.commit().await.unwrap();
    let retention = outbox::Retention {
        per_channel: 2,
        max_age: Duration::from_secs(3600),
    };
    // Nothing is pruned before it is delivered.
    assert_eq!(outbox::prune(&db, retention).await.unwrap(), 0);
    // The relay's position past the rows of `user:a` (written first).
    sqlx::query(
        "UPDATE outbox_relay SET (tx, id) = (SELECT tx, id FROM channel_outbox
           WHERE channel = 'user:00000000-0000-0000-0000-00000000000a' ORDER BY tx DESC, id DESC LIMIT 1)",
    )
    .execute(&db)
    .await
    .unwrap();
    assert_eq!(outbox::prune(&db, retention).await.unwrap(), 3);
    let kept: Vec<i64> = outbox::since(&db, "user:00000000-0000-0000-0000-00000000000a", 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|u| u.seq)
        .collect();
    assert_eq!(kept, [4, 5]);
    let head = outbox::head(&db, "user:00000000-0000-0000-0000-00000000000a")
        .await
        .unwrap();
    assert_eq!((head.seq, head.oldest_kept), (5, 4));
    assert!(head.can_resume(3) && !head.can_resume(2));
    // Past the age limit, delivered rows go whatever their number.
    sqlx::query(
        "UPDATE channel_outbox SET created_at = now() - interval '2 hours' WHERE channel = 'user:00000000-0000-0000-0000-00000000000a'",
    )
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(outbox::prune(&db, retention).await.unwrap(), 2);
    let head = outbox::head(&db, "user:00000000-0000-0000-0000-00000000000a")
        .await
        .unwrap();
    assert_eq!((head.seq, head.oldest_kept), (5, 6));
    assert!(
        head.can_resume(5),
        "a client that has everything is up to date"
    );

    // Through the gateway: a `since` older than what is kept is not
    // recovered; the client starts from the head.
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (alice, token, _) = client.user("alice").await;
    for bio in ["one", "two", "three"] {
        let reply = client
            .send(
                client
                    .patch("/api/profile")
                    .bearer_auth(&token)
                    .json(&json!({"bio": bio})),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let channel = format!("user:{alice}");
    eventually(Duration::from_secs(10), "the updates relayed", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM channel_outbox o, outbox_relay r
             WHERE o.channel = $1 AND (o.tx, o.id) <= (r.tx, r.id)",
        )
        .bind(&channel)
        .fetch_one(&db)
        .await
        .unwrap()
            == 3
    })
    .await;
    outbox::prune(&db, retention).await.unwrap();
    let mut socket = connected(&app.base, &token, &alice).await;
    socket
        .send(json!({"op": "subscribe", "channel": channel, "since": 0}))
        .await;
    let subscribed = socket.expect("subscribed").await;
    assert_eq!(
        (
            subscribed["seq"].as_i64(),
            subscribed["recovered"].as_bool()
        ),
        (Some(3), Some(false))
    );
    socket
        .send(json!({"op": "unsubscribe", "channel": channel}))
        .await;
    socket
        .send(json!({"op": "subscribe", "channel": channel, "since": 1}))
        .await;
    let subscribed = socket.expect("subscribed").await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    let (second, third) = (socket.expect("event").await, socket.expect("event").await);
    assert_eq!(
        (second["seq"].as_i64(), third["seq"].as_i64()),
        (Some(2), Some(3))
    );
    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn the_relay_publishes_each_update_once_and_marks_it() {
    let world = World::new().await;
    let db = world.db().await;
    let mut tx = db.begin().await.unwrap();
    let updates: Vec<ChannelUpdate> = ["user:a", "user:b", "user:a", "user:a", "user:b"]
        .iter()
        .map(|channel| ChannelUpdate::new(self::channel(channel), "profile.updated", json!({})))
        .collect();
    outbox::append(&mut tx, &updates).await.unwrap();
    tx.commit().await.unwrap();
    let unpublished = || async { outbox::backlog(&db).await.unwrap() };
    let updates_topic = world.settings.kafka().topics().updates;
    for round in 0..2 {
        let stop = tokio_util::sync::CancellationToken::new();
        let relay = tokio::spawn(outbox::relay(
            db.clone(),
            world.settings.kafka(),
            outbox::Retention::default(),
            stop.clone(),
        ));
        eventually(Duration::from_secs(10), "every row published", || async {
            unpublished().await == 0
        })
        .await;
        // A second relay (a restart) finds nothing left to publish.
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.cancel();
        relay.await.unwrap().unwrap();
        assert_eq!(world.count(&updates_topic), 5, "round {round}");
    }
    world.clean_up().await;
}

#[tokio::test]
async fn the_relay_passes_over_no_row_of_a_transaction_that_commits_after_a_later_one() {
    let world = World::new().await;
    let db = world.db().await;
    let append = |channel: &'static str, n: usize| {
        let updates: Vec<ChannelUpdate> = (0..n)
            .map(|n| ChannelUpdate::new(self::channel(channel), "profile.updated", json!({"n": n})))
            .collect();
        updates
    };
    // The first transaction takes its id, then waits; the second commits
    // meanwhile.
    let mut first = db.begin().await.unwrap();
    outbox::append(&mut first, &append("user:a", 3))
        .await
        .unwrap();
    let mut second = db.begin().await.unwrap();
    outbox::append(&mut second, &append("user:b", 2))
        .await
        .unwrap();
    second.commit().await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let relay = tokio::spawn(outbox::relay(
        world.db().await,
        world.settings.kafka(),
        outbox::Retention::default(),
        stop.clone(),
    ));
    let updates_topic = world.settings.kafka().topics().updates;
    // The second's rows wait behind the first, which may still write rows
    // that come before them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(world.count(&updates_topic), 0);
    assert_eq!(outbox::backlog(&db).await.unwrap(), 2);
    first.commit().await.unwrap();
    eventually(Duration::from_secs(10), "every row published", || async {
        outbox::backlog(&db).await.unwrap() == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    relay.await.unwrap().unwrap();
    assert_eq!(world.count(&updates_topic), 5);
    world.clean_up().await;
}

#[tokio::test]
async fn a_socket_that_floods_or_garbles_is_closed_and_holds_at_most_a_hundred_channels() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (alice, token, _) = client.user("alice").await;

    // Twenty frames a second, 120 at once: a flood is closed with 4008.
    let mut flood = connected(&app.base, &token, &alice).await;
    for _ in 0..300 {
        flood.send(json!({"op": "ping"})).await;
    }
    let closed = flood.expect("closed").await;
    assert_eq!(closed["code"], 4008, "{closed}");
    // Paced under the limit, more than the burst is answered in full.
    let mut paced = connected(&app.base, &token, &alice).await;
    for _ in 0..150 {
        paced.send(json!({"op": "ping"})).await;
        tokio::time::sleep(Duration::from_millis(55)).await;
    }
    for _ in 0..150 {
        paced.expect("pong").await;
    }

    // Ten malformed frames are answered; the eleventh closes with 4400.
    let mut garbled = connected(&app.base, &token, &alice).await;
    for n in 0..10 {
        garbled.send(json!({"op": "dance", "n": n})).await;
        assert_eq!(garbled.expect("error").await["code"], "bad_frame");
    }
    garbled.send(json!({"op": "dance"})).await;
    let closed = garbled.expect("closed").await;
    assert_eq!(closed["code"], 4400, "{closed}");
    assert!(closes(&client, "4008").await >= 1.0);

    // A hundred subscriptions, the own channel among them.
    let mut posts = Vec::new();
    for n in 0..100 {
        let reply = client
            .send(
                client
                    .post("/api/posts")
                    .bearer_auth(&token)
                    .json(&json!({"text": format!("post {n}")})),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        posts.push(reply.body["post"]["id"].as_str().unwrap().to_owned());
    }
    // All at once, as a client that comes back does: within the burst.
    let mut many = connected(&app.base, &token, &alice).await;
    for post in &posts[..99] {
        many.send(json!({"op": "subscribe", "channel": format!("post:{post}")}))
            .await;
    }
    for _ in &posts[..99] {
        many.expect("subscribed").await;
    }
    let last = format!("post:{}", posts[99]);
    many.send(json!({"op": "subscribe", "channel": last, "ref": "full"}))
        .await;
    let refused = many.expect("error").await;
    assert_eq!(refused["code"], "too_many_subscriptions", "{refused}");
    assert_eq!(refused["ref"], "full");
    many.send(json!({"op": "unsubscribe", "channel": format!("post:{}", posts[0])}))
        .await;
    many.send(json!({"op": "subscribe", "channel": last})).await;
    assert_eq!(many.expect("subscribed").await["channel"], last.as_str());

    app.stop().await;
    world.clean_up().await;
}
