//! Rooms, messages, receipts and direct conversations, end to end through
//! the real API, log, projector and gateways.

use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};
use tidings::Role;

use crate::support::{Client, Reply, Socket, World, ALL_ROLES};

/// A registered user: id and token.
struct User {
    id: String,
    token: String,
}

/// Registers, and waits until the account is projected (others name it).
async fn user(client: &Client, name: &str) -> User {
    let (id, token, position) = client.user(name).await;
    let profile = client.own_profile(&token, &position).await;
    assert_eq!(profile.status, 200, "{}", profile.body);
    User { id, token }
}

/// Registers, retrying while password hashing is saturated (503
/// `overloaded`), as a client would.
async fn user_patiently(client: &Client, name: &str) -> User {
    for _ in 0..120 {
        let reply = client.register(name, &format!("{name}@example.com")).await;
        if reply.status == 201 {
            return User {
                id: reply.body["user"]["id"].as_str().unwrap().to_owned(),
                token: reply.body["token"].as_str().unwrap().to_owned(),
            };
        }
        assert_eq!(reply.body["code"], "overloaded", "{}", reply.body);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{name} could not register");
}

async fn get(client: &Client, who: &User, path: &str) -> Reply {
    client.send(client.get(path).bearer_auth(&who.token)).await
}

async fn post(client: &Client, who: &User, path: &str, body: Value) -> Reply {
    client
        .send(client.post(path).bearer_auth(&who.token).json(&body))
        .await
}

async fn patch(client: &Client, who: &User, path: &str, body: Value) -> Reply {
    client
        .send(client.patch(path).bearer_auth(&who.token).json(&body))
        .await
}

async fn put(client: &Client, who: &User, path: &str, body: Value) -> Reply {
    client
        .send(client.put(path).bearer_auth(&who.token).json(&body))
        .await
}

async fn delete(client: &Client, who: &User, path: &str) -> Reply {
    client
        .send(client.delete(path).bearer_auth(&who.token))
        .await
}

/// Creates a room and returns its id; panics unless 201.
async fn room(client: &Client, owner: &User, is_private: bool, max: Option<i64>) -> String {
    let mut body =
        json!({"name": "lobby", "description": "where we meet", "is_private": is_private});
    if let Some(max) = max {
        body["max_participants"] = max.into();
    }
    let reply = post(client, owner, "/api/rooms", body).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.body["room"]["my_role"], "owner");
    assert_eq!(reply.body["room"]["participant_count"], 1);
    reply.body["room"]["id"].as_str().unwrap().to_owned()
}

async fn join(client: &Client, who: &User, room: &str) -> Reply {
    post(client, who, &format!("/api/rooms/{room}/join"), json!({})).await
}

/// Posts a message and returns its id; panics unless 201.
async fn say(client: &Client, who: &User, room: &str, text: &str) -> String {
    let reply = post(
        client,
        who,
        &format!("/api/rooms/{room}/messages"),
        json!({"text": text}),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert!(reply.body["position"].is_string());
    reply.body["message"]["id"].as_str().unwrap().to_owned()
}

/// The next event frame of `channel` named `event`, past any other.
async fn expect_event(socket: &mut Socket, channel: &str, event: &str) -> Value {
    loop {
        let frame = socket.expect("event").await;
        if frame["channel"] == channel && frame["event"] == event {
            return frame;
        }
    }
}

/// A socket of `who`, welcomed, subscribed to `channel` (besides its own).
async fn subscribed(base: &str, who: &User, channel: &str) -> Socket {
    let mut socket = Socket::connect(base, &who.token).await;
    socket.expect("welcome").await;
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

/// Asserts that no event about `text` (a message's) reaches the socket
/// within two seconds.
async fn receives_nothing_of(socket: &mut Socket, text: &str) {
    while let Some(frame) = socket.next_frame(Duration::from_secs(2)).await {
        assert_ne!(frame["type"], "closed", "the socket stays open");
        assert_ne!(
            frame["data"]["text"], text,
            "a departed participant receives nothing of the room: {frame}"
        );
    }
}

#[tokio::test]
async fn two_hundred_joining_a_room_of_fifty_at_once_fill_it_exactly() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let owner = user(&client, "owner").await;
    let id = room(&client, &owner, false, Some(50)).await;
    let joiners: Vec<User> = stream::iter(0..200)
        .map(|i| {
            let client = &client;
            async move { user_patiently(client, &format!("joiner{i}")).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;

    let replies =
        futures_util::future::join_all(joiners.iter().map(|who| join(&client, who, &id))).await;
    let joined = replies
        .iter()
        .filter(|r| matches!(r.status, 200 | 202))
        .count();
    let full = replies
        .iter()
        .filter(|r| r.status == 409 && r.body["code"] == "room_full")
        .count();
    // The owner is one of the fifty participants.
    assert_eq!((joined, full), (49, 151), "every other answer: {:?}", {
        replies
            .iter()
            .filter(|r| !matches!(r.status, 200 | 202 | 409))
            .map(|r| r.body.to_string())
            .collect::<Vec<_>>()
    });
    // Read once the read models have every accepted join.
    let mut read = get(&client, &owner, &format!("/api/rooms/{id}")).await;
    for position in replies.iter().filter_map(|r| r.headers.get("x-position")) {
        read = client
            .send(
                client
                    .get(&format!("/api/rooms/{id}"))
                    .bearer_auth(&owner.token)
                    .header("X-Min-Position", position.to_str().unwrap()),
            )
            .await;
        assert_eq!(read.status, 200, "{}", read.body);
    }
    assert_eq!(read.body["participant_count"], 50, "{}", read.body);
    assert_eq!(read.body["participants"].as_array().unwrap().len(), 50);
    let joins = world
        .events()
        .iter()
        .filter(|(_, _, e)| e.event_type == "room.joined")
        .count();
    assert_eq!(joins, 49);

    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn a_private_room_is_not_found_by_outsiders_anywhere_until_they_are_invited() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let alice = user(&client, "alice").await;
    let bob = user(&client, "bob").await;
    let id = room(&client, &alice, true, None).await;
    let message = say(&client, &alice, &id, "secret").await;

    let room = format!("/api/rooms/{id}");
    let attempts = [
        get(&client, &bob, &room).await,
        get(&client, &bob, &format!("{room}/preview")).await,
        get(&client, &bob, &format!("{room}/messages")).await,
        post(
            &client,
            &bob,
            &format!("{room}/messages"),
            json!({"text": "hi"}),
        )
        .await,
        join(&client, &bob, &id).await,
        post(&client, &bob, &format!("{room}/leave"), json!({})).await,
        post(
            &client,
            &bob,
            &format!("{room}/invites"),
            json!({"user_id": bob.id}),
        )
        .await,
        patch(&client, &bob, &room, json!({"name": "mine"})).await,
        post(
            &client,
            &bob,
            &format!("{room}/read"),
            json!({"message_id": message}),
        )
        .await,
        delete(&client, &bob, &format!("{room}/messages/{message}")).await,
    ];
    for reply in attempts {
        assert_eq!(reply.status, 404, "{}", reply.body);
    }
    // Even its owner gets no preview of it: previews are of public rooms.
    assert_eq!(
        get(&client, &alice, &format!("{room}/preview"))
            .await
            .status,
        404
    );
    let listed = get(&client, &bob, "/api/rooms/public").await;
    assert_eq!(listed.body["items"], json!([]));
    assert_eq!(listed.headers["x-total-count"], "0");
    assert_eq!(listed.headers["x-total-rooms"], "1");
    assert_eq!(
        get(&client, &bob, "/api/rooms").await.body["items"],
        json!([])
    );
    let mut bobs = Socket::connect(&app.base, &bob.token).await;
    bobs.expect("welcome").await;
    bobs.send(json!({"op": "subscribe", "channel": format!("room:{id}")}))
        .await;
    let refused = bobs.expect("error").await;
    assert_eq!(refused["code"], "unknown_channel", "{refused}");

    let invited = post(
        &client,
        &alice,
        &format!("{room}/invites"),
        json!({"user_id": bob.id}),
    )
    .await;
    assert_eq!(invited.status, 201, "{}", invited.body);
    let told = expect_event(&mut bobs, &format!("user:{}", bob.id), "room.invited").await;
    assert_eq!(told["data"]["room_id"], id.as_str());
    let joined = join(&client, &bob, &id).await;
    assert_eq!(joined.status, 200, "{}", joined.body);
    assert_eq!(joined.body["room"]["my_role"], "member");
    let history = get(&client, &bob, &format!("{room}/messages")).await;
    assert_eq!(history.body["items"][0]["text"], "secret");
    let mine = get(&client, &bob, "/api/rooms").await;
    assert_eq!(mine.body["items"][0]["id"], id.as_str());

    // A public room turned private: an outsider watching it is told the
    // channel ended, and hears nothing more of it.
    let carol = user(&client, "carol").await;
    let open = self::room(&client, &alice, false, None).await;
    let channel = format!("room:{open}");
    let mut carols = subscribed(&app.base, &carol, &channel).await;
    let hidden = patch(
        &client,
        &alice,
        &format!("/api/rooms/{open}"),
        json!({"is_private": true}),
    )
    .await;
    assert_eq!(hidden.status, 200, "{}", hidden.body);
    let ended = carols.expect("unsubscribed").await;
    assert_eq!(ended["channel"], channel.as_str(), "{ended}");
    assert_eq!(ended["reason"], "forbidden");
    say(&client, &alice, &open, "members only now").await;
    receives_nothing_of(&mut carols, "members only now").await;

    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn the_owner_promotes_admins_moderate_and_ownership_is_handed_over() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let alice = user(&client, "alice").await;
    let bob = user(&client, "bob").await;
    let carol = user(&client, "carol").await;
    let id = room(&client, &alice, false, None).await;
    let room = format!("/api/rooms/{id}");
    for who in [&bob, &carol] {
        assert_eq!(join(&client, who, &id).await.status, 200);
    }
    let role = |user: &User| format!("{room}/members/{}/role", user.id);
    let member = |user: &User| format!("{room}/members/{}", user.id);

    let refused = patch(&client, &bob, &room, json!({"name": "bob's"})).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.body["code"], "not_room_admin");
    let refused = put(&client, &bob, &role(&carol), json!({"role": "admin"})).await;
    assert_eq!(refused.body["code"], "not_room_owner", "{}", refused.body);
    let promoted = put(&client, &alice, &role(&bob), json!({"role": "admin"})).await;
    assert_eq!(promoted.status, 200, "{}", promoted.body);

    let renamed = patch(
        &client,
        &bob,
        &room,
        json!({"name": "renamed", "settings": {"slow_mode": 5, "huge": f64::MAX, "tiny": 5e-324}}),
    )
    .await;
    assert_eq!(renamed.status, 200, "{}", renamed.body);
    assert_eq!(renamed.body["room"]["name"], "renamed");
    assert_eq!(renamed.body["room"]["description"], "where we meet");
    // Read back as written, however large or small a number.
    assert_eq!(
        renamed.body["room"]["settings"],
        json!({"slow_mode": 5, "huge": f64::MAX, "tiny": 5e-324})
    );

    // An admin deletes a member's message; a member deletes no one else's.
    let carols = say(&client, &carol, &id, "spam").await;
    let alices = say(&client, &alice, &id, "welcome").await;
    let refused = delete(&client, &carol, &format!("{room}/messages/{alices}")).await;
    assert_eq!(
        refused.body["code"], "not_message_author",
        "{}",
        refused.body
    );
    let deleted = delete(&client, &bob, &format!("{room}/messages/{carols}")).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(deleted.body["message"]["deleted"], true);

    let refused = delete(&client, &carol, &member(&bob)).await;
    assert_eq!(refused.body["code"], "not_room_admin", "{}", refused.body);
    let refused = delete(&client, &bob, &member(&alice)).await;
    assert_eq!(
        refused.body["code"], "cannot_remove_owner",
        "{}",
        refused.body
    );
    let removed = delete(&client, &bob, &member(&carol)).await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    let refused = post(
        &client,
        &carol,
        &format!("{room}/messages"),
        json!({"text": "hi"}),
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.body["code"], "not_participant");

    let refused = post(&client, &alice, &format!("{room}/leave"), json!({})).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(refused.body["code"], "owner_must_transfer");
    let transferred = post(
        &client,
        &alice,
        &format!("{room}/transfer"),
        json!({"user_id": bob.id}),
    )
    .await;
    assert_eq!(transferred.status, 200, "{}", transferred.body);
    let left = post(&client, &alice, &format!("{room}/leave"), json!({})).await;
    assert_eq!(left.status, 200, "{}", left.body);
    let position = left.headers["x-position"].to_str().unwrap();
    let read = client
        .send(
            client
                .get(&room)
                .bearer_auth(&bob.token)
                .header("X-Min-Position", position),
        )
        .await;
    assert_eq!(read.body["owner_id"], bob.id.as_str(), "{}", read.body);
    assert_eq!(read.body["my_role"], "owner");
    assert_eq!(read.body["participant_count"], 1);

    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn a_removed_participants_sockets_stop_receiving_the_room_on_every_gateway() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    // A second gateway, fed by tidings.updates alone.
    let other = world.start(&[Role::Realtime]).await;
    let client = Client::new(&app.base);
    let alice = user(&client, "alice").await;
    let bob = user(&client, "bob").await;
    let id = room(&client, &alice, true, None).await;
    post(
        &client,
        &alice,
        &format!("/api/rooms/{id}/invites"),
        json!({"user_id": bob.id}),
    )
    .await;
    assert_eq!(join(&client, &bob, &id).await.status, 200);
    let channel = format!("room:{id}");
    let own = format!("user:{}", bob.id);
    let mut here = subscribed(&app.base, &bob, &channel).await;
    let mut there = subscribed(&other.base, &bob, &channel).await;

    say(&client, &alice, &id, "before").await;
    for socket in [&mut here, &mut there] {
        let on_room = expect_event(socket, &channel, "message.created").await;
        assert_eq!(on_room["data"]["text"], "before");
    }
    // Each socket also has it on the user's own channel (any order).
    let mut fresh = subscribed(&other.base, &bob, &channel).await;
    say(&client, &alice, &id, "again").await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let frame = fresh.expect("event").await;
        if frame["event"] == "message.created" && frame["data"]["text"] == "again" {
            seen.push(frame["channel"].as_str().unwrap().to_owned());
        }
    }
    seen.sort();
    assert_eq!(seen, [channel.clone(), own.clone()]);

    let removed = delete(
        &client,
        &alice,
        &format!("/api/rooms/{id}/members/{}", bob.id),
    )
    .await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    // Told on the room's channel or the own one, whichever the gateway
    // passes on first: either ends the subscription to the room.
    for socket in [&mut here, &mut there, &mut fresh] {
        loop {
            let frame = socket.expect("event").await;
            if frame["event"] == "room.member_removed" {
                assert!(frame["channel"] == channel || frame["channel"] == own);
                assert_eq!(frame["data"]["user_id"], bob.id.as_str());
                break;
            }
        }
        // And told that the room's channel ended, as a post's would.
        let ended = socket.expect("unsubscribed").await;
        assert_eq!(ended["channel"], channel.as_str(), "{ended}");
        assert_eq!(ended["reason"], "forbidden");
    }
    say(&client, &alice, &id, "after").await;
    for socket in [&mut here, &mut there, &mut fresh] {
        receives_nothing_of(socket, "after").await;
    }
    here.send(json!({"op": "subscribe", "channel": channel}))
        .await;
    assert_eq!(here.expect("error").await["code"], "unknown_channel");

    other.stop().await;
    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn messages_are_edited_and_deleted_to_a_tombstone_and_paged_newest_first() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let alice = user(&client, "alice").await;
    let bob = user(&client, "bob").await;
    let id = room(&client, &alice, false, None).await;
    assert_eq!(join(&client, &bob, &id).await.status, 200);
    let room = format!("/api/rooms/{id}");
    let mut bobs = subscribed(&app.base, &bob, &format!("room:{id}")).await;
    let mut sent = Vec::new();
    for n in 1..=5 {
        sent.push(say(&client, &alice, &id, &format!("message {n}")).await);
    }

    let edit = format!("{room}/messages/{}", sent[1]);
    let refused = patch(&client, &bob, &edit, json!({"text": "not mine"})).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.body["code"], "not_message_author");
    let edited = patch(&client, &alice, &edit, json!({"text": "  edited  "})).await;
    assert_eq!(edited.status, 200, "{}", edited.body);
    assert_eq!(edited.body["message"]["text"], "edited");
    assert!(edited.body["message"]["edited_at"].is_string());
    let pushed = expect_event(&mut bobs, &format!("room:{id}"), "message.edited").await;
    assert_eq!(pushed["data"]["text"], "edited");

    let gone = format!("{room}/messages/{}", sent[2]);
    let deleted = delete(&client, &alice, &gone).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    let pushed = expect_event(&mut bobs, &format!("room:{id}"), "message.deleted").await;
    assert_eq!(pushed["data"]["id"], sent[2].as_str());
    assert_eq!(pushed["data"]["text"], Value::Null);
    let again = delete(&client, &alice, &gone).await;
    assert_eq!(
        again.status, 200,
        "deleting again is harmless: {}",
        again.body
    );
    let refused = patch(&client, &alice, &gone, json!({"text": "back"})).await;
    assert_eq!(
        refused.body["code"], "message_not_found",
        "{}",
        refused.body
    );

    let mut pages = Vec::new();
    let mut path = format!("{room}/messages?limit=2");
    loop {
        let page = get(&client, &bob, &path).await;
        assert_eq!(page.status, 200, "{}", page.body);
        pages.extend(page.body["items"].as_array().unwrap().clone());
        match page.body["next_cursor"].as_str() {
            // `cursor`, as every list takes it, and `before`, turn about.
            Some(next) if pages.len() % 4 == 2 => {
                path = format!("{room}/messages?limit=2&cursor={next}")
            }
            Some(before) => path = format!("{room}/messages?limit=2&before={before}"),
            None => break,
        }
    }
    let ids: Vec<&str> = pages.iter().map(|m| m["id"].as_str().unwrap()).collect();
    let newest_first: Vec<&str> = sent.iter().rev().map(String::as_str).collect();
    assert_eq!(ids, newest_first);
    let tombstone = &pages[2];
    assert_eq!(tombstone["deleted"], true);
    assert_eq!(tombstone["text"], Value::Null);
    assert_eq!(pages[3]["text"], "edited");
    let bad = get(
        &client,
        &bob,
        &format!("{room}/messages?before=00000000-0000-0000-0000-000000000001"),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let garbage = get(&client, &bob, &format!("{room}/messages?cursor=zzz")).await;
    assert_eq!(
        (garbage.status, &garbage.body["code"]),
        (400, &json!("invalid_query"))
    );

    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn reading_moves_unread_counts_and_the_receipt_reaches_the_others_live() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let alice = user(&client, "alice").await;
    let bob = user(&client, "bob").await;
    let id = room(&client, &alice, false, None).await;
    assert_eq!(join(&client, &bob, &id).await.status, 200);
    let mut alices = Socket::connect(&app.base, &alice.token).await;
    alices.expect("welcome").await;
    let mut sent = Vec::new();
    for n in 1..=3 {
        sent.push(say(&client, &alice, &id, &format!("message {n}")).await);
    }

    let unread = |reply: &Reply| reply.body["items"][0]["unread_count"].clone();
    assert_eq!(unread(&get(&client, &bob, "/api/rooms").await), 3);
    assert_eq!(
        unread(&get(&client, &alice, "/api/rooms").await),
        0,
        "one's own messages are read"
    );
    let read = post(
        &client,
        &bob,
        &format!("/api/rooms/{id}/read"),
        json!({"message_id": sent[1]}),
    )
    .await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.body["unread_count"], 1);
    let receipt = read.body["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["user_id"] == bob.id.as_str())
        .unwrap();
    assert_eq!(receipt["last_read_message_id"], sent[1].as_str());
    let pushed = expect_event(&mut alices, &format!("user:{}", alice.id), "room.read").await;
    assert_eq!(pushed["data"]["user_id"], bob.id.as_str());
    assert_eq!(pushed["data"]["message_id"], sent[1].as_str());
    assert_eq!(unread(&get(&client, &bob, "/api/rooms").await), 1);

    // Reading an older message again changes nothing and appends nothing.
    let before = world.events().len();
    let older = post(
        &client,
        &bob,
        &format!("/api/rooms/{id}/read"),
        json!({"message_id": sent[0]}),
    )
    .await;
    assert_eq!(older.status, 200, "{}", older.body);
    assert_eq!(older.body["unread_count"], 1);
    assert_eq!(world.events().len(), before);

    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn two_users_writing_to_each_other_first_at_once_share_one_conversation() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let alice = user(&client, "alice").await;
    let bob = user(&client, "bob").await;
    let mut bobs = Socket::connect(&app.base, &bob.token).await;
    bobs.expect("welcome").await;

    let (path_to_bob, path_to_alice) = (
        format!("/api/dm/{}/messages", bob.id),
        format!("/api/dm/{}/messages", alice.id),
    );
    let (to_bob, to_alice) = tokio::join!(
        post(&client, &alice, &path_to_bob, json!({"text": "hi bob"})),
        post(&client, &bob, &path_to_alice, json!({"text": "hi alice"})),
    );
    assert_eq!(to_bob.status, 201, "{}", to_bob.body);
    assert_eq!(to_alice.status, 201, "{}", to_alice.body);
    let room = to_bob.body["message"]["room_id"].as_str().unwrap();
    assert_eq!(to_alice.body["message"]["room_id"], room);
    let pushed = loop {
        let frame = expect_event(&mut bobs, &format!("user:{}", bob.id), "message.created").await;
        if frame["data"]["text"] == "hi bob" {
            break frame;
        }
    };
    assert_eq!(pushed["data"]["room_id"], room);

    for (who, with) in [(&alice, &bob), (&bob, &alice)] {
        let history = get(&client, who, &format!("/api/dm/{}/messages", with.id)).await;
        assert_eq!(history.status, 200, "{}", history.body);
        assert_eq!(history.body["items"].as_array().unwrap().len(), 2);
        let mine = get(&client, who, "/api/rooms").await;
        assert_eq!(mine.body["items"][0]["kind"], "direct");
    }
    let opened = world
        .events()
        .iter()
        .filter(|(_, _, e)| e.event_type == "room.created")
        .count();
    assert_eq!(opened, 1, "one conversation per pair");
    let eve = user(&client, "eve").await;
    let outsider = get(&client, &eve, &format!("/api/rooms/{room}")).await;
    assert_eq!(outsider.status, 404, "{}", outsider.body);

    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn bad_room_input_gets_a_problem_and_appends_nothing() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let alice = user(&client, "alice").await;
    let bob = user(&client, "bob").await;
    let open = room(&client, &alice, false, Some(10)).await;
    let message = say(&client, &alice, &open, "mine").await;
    let nobody = "00000000-0000-0000-0000-000000000001";
    let before = world.events().len();

    let room = format!("/api/rooms/{open}");
    let messages = format!("{room}/messages");
    let cases = [
        (
            post(&client, &bob, &messages, json!({"text": "not in"})).await,
            403,
            "not_participant",
        ),
        (
            patch(
                &client,
                &bob,
                &format!("{messages}/{message}"),
                json!({"text": "not mine"}),
            )
            .await,
            403,
            "not_participant",
        ),
        (
            post(
                &client,
                &alice,
                &format!("{room}/invites"),
                json!({"user_id": bob.id}),
            )
            .await,
            422,
            "room_is_public",
        ),
        (
            join(&client, &alice, &open).await,
            409,
            "already_participant",
        ),
        (
            post(&client, &alice, &messages, json!({"text": ""})).await,
            422,
            "validation_failed",
        ),
        (
            post(&client, &alice, &messages, json!({"text": " \n "})).await,
            422,
            "validation_failed",
        ),
        (
            post(
                &client,
                &alice,
                &messages,
                json!({"text": "x".repeat(5001)}),
            )
            .await,
            422,
            "validation_failed",
        ),
        (
            post(
                &client,
                &alice,
                &messages,
                json!({"text": "hi", "media_ids": [nobody]}),
            )
            .await,
            422,
            "validation_failed",
        ),
        (
            put(
                &client,
                &alice,
                &format!("{room}/members/{}/role", bob.id),
                json!({"role": "owner"}),
            )
            .await,
            422,
            "validation_failed",
        ),
        (
            put(
                &client,
                &alice,
                &format!("{room}/members/{}/role", bob.id),
                json!({"role": "admin"}),
            )
            .await,
            404,
            "member_not_found",
        ),
        (
            patch(&client, &alice, &room, json!({"max_participants": 0})).await,
            422,
            "validation_failed",
        ),
        (
            post(
                &client,
                &alice,
                "/api/rooms",
                json!({"name": " ", "is_private": false}),
            )
            .await,
            422,
            "validation_failed",
        ),
        (
            post(&client, &alice, "/api/rooms", json!({"name": "no flag"})).await,
            422,
            "validation_failed",
        ),
        (
            post(
                &client,
                &alice,
                &format!("/api/rooms/{nobody}/join"),
                json!({}),
            )
            .await,
            404,
            "room_not_found",
        ),
        (
            post(
                &client,
                &alice,
                &format!("/api/dm/{nobody}/messages"),
                json!({"text": "hi"}),
            )
            .await,
            404,
            "not_found",
        ),
        (
            post(
                &client,
                &alice,
                &format!("/api/dm/{}/messages", alice.id),
                json!({"text": "me"}),
            )
            .await,
            422,
            "cannot_message_self",
        ),
        (
            post(&client, &alice, &format!("{room}/leave"), json!({})).await,
            409,
            "owner_must_transfer",
        ),
    ];
    for (reply, status, code) in cases {
        assert_eq!(reply.status, status, "{}", reply.body);
        assert_eq!(reply.body["code"], code, "{}", reply.body);
        assert_eq!(
            reply.headers["content-type"], "application/problem+json",
            "{}",
            reply.body
        );
    }
    // Joined, bob still edits no one else's message.
    assert_eq!(join(&client, &bob, &open).await.status, 200);
    let joined = world.events().len();
    let refused = patch(
        &client,
        &bob,
        &format!("{messages}/{message}"),
        json!({"text": "not mine"}),
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.body["code"], "not_message_author");
    assert_eq!(joined, before + 1, "only the join was appended");
    assert_eq!(world.events().len(), joined, "nothing more was appended");

    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn history_pages_have_no_gap_and_no_duplicate_while_messages_arrive() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let alice = user(&client, "alice").await;
    let bob = user(&client, "bob").await;
    let id = room(&client, &alice, false, None).await;
    assert_eq!(join(&client, &bob, &id).await.status, 200);
    for n in 1..=30 {
        say(&client, &alice, &id, &format!("early {n}")).await;
    }

    // Alice keeps writing while Bob pages back from the newest.
    let writer = {
        let (client, id) = (client.clone(), id.clone());
        tokio::spawn(async move {
            for n in 1..=40 {
                say(&client, &alice, &id, &format!("late {n}")).await;
            }
        })
    };
    let mut path = format!("/api/rooms/{id}/messages?limit=7");
    let mut ordinals: Vec<i64> = Vec::new();
    loop {
        let page = get(&client, &bob, &path).await;
        assert_eq!(page.status, 200, "{}", page.body);
        ordinals.extend(
            page.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["ordinal"].as_i64().unwrap()),
        );
        match page.body["next_cursor"].as_str() {
            Some(next) => path = format!("/api/rooms/{id}/messages?limit=7&cursor={next}"),
            None => break,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writer.await.unwrap();
    let newest = ordinals[0];
    assert!(newest >= 30, "{ordinals:?}");
    let expected: Vec<i64> = (1..=newest).rev().collect();
    assert_eq!(ordinals, expected, "every message once, newest first");

    app.stop().await;
    world.clean_up().await;
}
