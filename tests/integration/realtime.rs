use std::time::Duration;

use serde_json::json;

use crate::support::{Client, Socket, World, ALL_ROLES};

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
