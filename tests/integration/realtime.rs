use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::{Client, World, ALL_ROLES};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(base: &str, token: &str) -> Socket {
    let url = format!("{}/ws?token={token}", base.replace("http://", "ws://"));
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("WebSocket connects");
    socket
}

/// The next JSON frame, or `None` if none comes within `within`.
async fn next_frame(socket: &mut Socket, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return Some(serde_json::from_str(&text).unwrap()),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return Some(json!({"type": "closed", "code": frame.map(|f| u16::from(f.code))}))
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => return Some(json!({"type": "closed"})),
            Err(_) => return None,
        }
    }
}

/// Reads frames until one of `kind` arrives.
async fn expect(socket: &mut Socket, kind: &str) -> Value {
    loop {
        let frame = next_frame(socket, Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("no {kind} frame"));
        if frame["type"] == kind {
            return frame;
        }
    }
}

async fn connected(base: &str, token: &str, user_id: &str) -> Socket {
    let mut socket = connect(base, token).await;
    let welcome = expect(&mut socket, "welcome").await;
    assert_eq!(welcome["user_id"], user_id);
    let subscribed = expect(&mut socket, "subscribed").await;
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
        let event = expect(tab, "event").await;
        assert_eq!(event["channel"], format!("user:{alice}"));
        assert_eq!(event["event"], "profile.updated");
        assert_eq!(event["seq"], 1);
        assert_eq!(event["data"]["display_name"], "Alice Live");
    }
    assert_eq!(
        next_frame(&mut bobs, Duration::from_secs(2)).await,
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
        .send(Message::text(
            json!({"op": "subscribe", "channel": format!("user:{alice}"), "since": 0}).to_string(),
        ))
        .await
        .unwrap();
    let subscribed = expect(&mut later, "subscribed").await;
    assert_eq!(
        (
            subscribed["recovered"].as_bool(),
            subscribed["seq"].as_i64()
        ),
        (Some(true), Some(2))
    );
    let first = expect(&mut later, "event").await;
    let second = expect(&mut later, "event").await;
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

    let mut stranger = connect(&app.base, "not-a-token").await;
    let error = expect(&mut stranger, "error").await;
    assert_eq!(error["code"], "invalid_token");
    assert_eq!(expect(&mut stranger, "closed").await["code"], 4001);

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
        socket.send(Message::text(frame.to_string())).await.unwrap();
        let error = expect(&mut socket, "error").await;
        assert_eq!(error["code"], code, "{error}");
    }
    socket
        .send(Message::text(json!({"op": "ping"}).to_string()))
        .await
        .unwrap();
    expect(&mut socket, "pong").await;
    app.stop().await;
    world.clean_up().await;
}
