//! Media end to end: uploads sniffed, measured, stored in a directory of
//! the test's own and served with validators and ranges; posts that show
//! their author's media; the sweeper that deletes what no post took.

use std::io::Cursor;
use std::time::Duration;

use image::ImageFormat;
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

use crate::support::{eventually, Client, Reply, Socket, World, ALL_ROLES};

/// A real image of `width`×`height` in `format`, made here.
fn picture(format: ImageFormat, width: u32, height: u32) -> Vec<u8> {
    let pixels = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(pixels)
        .write_to(&mut out, format)
        .unwrap();
    out.into_inner()
}

/// A PNG of pixels that do not compress: larger than most bodies.
fn noise(width: u32, height: u32) -> Vec<u8> {
    let mut seed = 0x2545_f491_u32;
    let pixels = image::RgbImage::from_fn(width, height, |_, _| {
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed >> 24) as u8
        };
        image::Rgb([next(), next(), next()])
    });
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(pixels)
        .write_to(&mut out, ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

/// The smallest MP4 a player opens the box structure of: an `ftyp` box
/// (brand isom) and an empty `mdat`.
fn mp4() -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&[0, 0, 0, 0x18]);
    bytes.extend_from_slice(b"ftypisom");
    bytes.extend_from_slice(&[0, 0, 2, 0]);
    bytes.extend_from_slice(b"isommp41");
    bytes.extend_from_slice(&[0, 0, 0, 8]);
    bytes.extend_from_slice(b"mdat");
    bytes
}

async fn upload(client: &Client, token: &str, bytes: Vec<u8>, name: &str, mime: &str) -> Reply {
    let part = Part::bytes(bytes)
        .file_name(name.to_owned())
        .mime_str(mime)
        .unwrap();
    client
        .send(
            client
                .post("/api/media")
                .bearer_auth(token)
                .multipart(Form::new().part("file", part)),
        )
        .await
}

/// Uploads and returns the item; panics unless 201.
async fn uploaded(client: &Client, token: &str, bytes: Vec<u8>, name: &str, mime: &str) -> Value {
    let reply = upload(client, token, bytes, name, mime).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body
}

async fn post(client: &Client, token: &str, media_ids: Value) -> Reply {
    client
        .send(
            client
                .post("/api/posts")
                .bearer_auth(token)
                .json(&json!({"text": "look", "media_ids": media_ids})),
        )
        .await
}

fn event_count(world: &World, event_type: &str) -> usize {
    world
        .events()
        .iter()
        .filter(|(_, _, e)| e.event_type == event_type)
        .count()
}

#[tokio::test]
async fn each_type_is_sniffed_measured_stored_and_served() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (_, token, _) = client.user("mia").await;

    // A PNG that says it is a JPEG, by name and part type: a PNG it is.
    let png = picture(ImageFormat::Png, 640, 480);
    let item = uploaded(&client, &token, png.clone(), "holiday.jpg", "image/jpeg").await;
    assert_eq!(item["content_type"], "image/png");
    assert_eq!(
        (item["width"].as_i64(), item["height"].as_i64()),
        (Some(640), Some(480))
    );
    assert_eq!(item["size"].as_u64(), Some(png.len() as u64));
    let id = item["id"].as_str().unwrap().to_owned();
    assert_eq!(item["url"], format!("/media/{id}"));
    assert_eq!(item["thumbnail_url"], format!("/media/{id}/thumbnail"));

    for (format, content_type) in [
        (ImageFormat::Jpeg, "image/jpeg"),
        (ImageFormat::Gif, "image/gif"),
        (ImageFormat::WebP, "image/webp"),
    ] {
        let item = uploaded(
            &client,
            &token,
            picture(format, 40, 30),
            "file.bin",
            "application/octet-stream",
        )
        .await;
        assert_eq!(item["content_type"], content_type);
        assert_eq!(
            (item["width"].as_i64(), item["height"].as_i64()),
            (Some(40), Some(30))
        );
        assert!(item["thumbnail_url"].is_string(), "{item}");
        // Smaller than a thumbnail: never scaled up.
        let thumbnail = client
            .get(item["thumbnail_url"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        let small = image::load_from_memory(&thumbnail.bytes().await.unwrap()).unwrap();
        assert_eq!((small.width(), small.height()), (40, 30));
    }
    let video = uploaded(&client, &token, mp4(), "clip.png", "image/png").await;

    // An Idempotency-Key is checked on an upload but does not cap it at the
    // size of the JSON bodies it fingerprints (64 KiB).
    let noisy = noise(200, 200);
    assert!(noisy.len() > 100 * 1024, "{}", noisy.len());
    let part = Part::bytes(noisy).file_name("noise.png");
    let keyed = client
        .send(
            client
                .post("/api/media")
                .bearer_auth(&token)
                .header("idempotency-key", "upload-1")
                .multipart(Form::new().part("file", part)),
        )
        .await;
    assert_eq!(keyed.status, 201, "{}", keyed.body);
    let part = Part::bytes(picture(ImageFormat::Png, 4, 4));
    let bad_key = client
        .send(
            client
                .post("/api/media")
                .bearer_auth(&token)
                .header("idempotency-key", "")
                .multipart(Form::new().part("file", part)),
        )
        .await;
    assert_eq!(
        (bad_key.status, &bad_key.body["code"]),
        (400, &json!("invalid_idempotency_key"))
    );
    assert_eq!(video["content_type"], "video/mp4");
    assert!(
        video["width"].is_null() && video["thumbnail_url"].is_null(),
        "{video}"
    );

    // The bytes, as uploaded, with their validators.
    let response = client.get(&format!("/media/{id}")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["accept-ranges"], "bytes");
    assert!(headers["cache-control"]
        .to_str()
        .unwrap()
        .contains("max-age"));
    let etag = headers["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.len() == 66, "{etag}");
    assert_eq!(response.bytes().await.unwrap().to_vec(), png);

    let again = client
        .get(&format!("/media/{id}"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);

    let part = client
        .get(&format!("/media/{id}"))
        .header("range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"].to_str().unwrap(),
        format!("bytes 0-9/{}", png.len())
    );
    assert_eq!(part.bytes().await.unwrap().to_vec(), png[..10]);

    let past = client
        .send(
            client
                .get(&format!("/media/{id}"))
                .header("range", format!("bytes={}-", png.len())),
        )
        .await;
    assert_eq!(past.status, 416);
    assert_eq!(past.body["code"], "range_not_satisfiable");
    assert_eq!(
        past.headers["content-range"].to_str().unwrap(),
        format!("bytes */{}", png.len())
    );

    // The thumbnail: a PNG, the longest side 320, the ratio kept.
    let thumbnail = client
        .get(&format!("/media/{id}/thumbnail"))
        .send()
        .await
        .unwrap();
    assert_eq!(thumbnail.status(), 200);
    assert_eq!(thumbnail.headers()["content-type"], "image/png");
    let small = image::load_from_memory(&thumbnail.bytes().await.unwrap()).unwrap();
    assert_eq!((small.width(), small.height()), (320, 240));

    let video_id = video["id"].as_str().unwrap();
    let no_thumbnail = client
        .send(client.get(&format!("/media/{video_id}/thumbnail")))
        .await;
    assert_eq!(no_thumbnail.status, 404);
    let unknown = client
        .send(client.get(&format!("/media/{}", uuid::Uuid::new_v4())))
        .await;
    assert_eq!(
        (unknown.status, &unknown.body["code"]),
        (404, &json!("not_found"))
    );
    assert_eq!(unknown.headers["content-type"], "application/problem+json");
    assert_eq!(event_count(&world, "media.uploaded"), 6);

    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn what_is_not_an_accepted_image_or_video_or_too_large_is_refused() {
    let world = World::new().await;
    let mut settings = world.settings.clone();
    settings.media_image_max_bytes = 64 * 1024;
    settings.media_video_max_bytes = 96 * 1024;
    settings.media_max_dimension = 1000;
    let app = world.start_with(settings, &ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (_, token, _) = client.user("rex").await;

    let text = b"hello, I am only text pretending to be a picture".to_vec();
    let reply = upload(&client, &token, text, "cat.png", "image/png").await;
    assert_eq!(
        (reply.status, &reply.body["code"]),
        (415, &json!("unsupported_media_type"))
    );

    // A PNG signature and then more bytes than an image may have: refused
    // once past the image limit, though a video may be larger.
    let mut big = picture(ImageFormat::Png, 8, 8)[..16].to_vec();
    big.resize(80 * 1024, 0);
    let reply = upload(&client, &token, big, "big.png", "image/png").await;
    assert_eq!(
        (reply.status, &reply.body["code"]),
        (413, &json!("payload_too_large"))
    );
    // Announced past every limit: refused before the body is read.
    let mut huge = mp4();
    huge.resize(400 * 1024, 0);
    let reply = upload(&client, &token, huge, "huge.mp4", "video/mp4").await;
    assert_eq!(
        (reply.status, &reply.body["code"]),
        (413, &json!("payload_too_large"))
    );
    let mut long_video = mp4();
    long_video.resize(100 * 1024, 0);
    let reply = upload(&client, &token, long_video, "long.mp4", "video/mp4").await;
    assert_eq!(
        (reply.status, &reply.body["code"]),
        (413, &json!("payload_too_large"))
    );

    // Small on the wire, too wide to decode.
    let wide = picture(ImageFormat::Png, 2000, 2);
    let reply = upload(&client, &token, wide, "wide.png", "image/png").await;
    assert_eq!(
        (reply.status, &reply.body["code"]),
        (422, &json!("image_too_large"))
    );

    // A PNG signature on bytes that are no PNG.
    let mut broken = picture(ImageFormat::Png, 8, 8)[..16].to_vec();
    broken.extend_from_slice(&[7; 100]);
    let reply = upload(&client, &token, broken, "broken.png", "image/png").await;
    assert_eq!(
        (reply.status, &reply.body["code"]),
        (422, &json!("undecodable_media"))
    );

    let garbage = client
        .send(
            client
                .post("/api/media")
                .bearer_auth(&token)
                .header("content-type", "multipart/form-data; boundary=XYZ")
                .body("--XYZ\r\nthis is not a part header\r\n\r\nbytes\r\n"),
        )
        .await;
    assert_eq!(
        (garbage.status, &garbage.body["code"]),
        (400, &json!("malformed_multipart"))
    );
    let json_body = client
        .send(
            client
                .post("/api/media")
                .bearer_auth(&token)
                .json(&json!({"file": "x"})),
        )
        .await;
    assert_eq!(
        (json_body.status, &json_body.body["code"]),
        (415, &json!("unsupported_media_type"))
    );
    let wrong_part =
        client
            .send(client.post("/api/media").bearer_auth(&token).multipart(
                Form::new().part("picture", Part::bytes(picture(ImageFormat::Png, 4, 4))),
            ))
            .await;
    assert_eq!(
        (wrong_part.status, &wrong_part.body["code"]),
        (422, &json!("validation_failed"))
    );
    let two_parts = client
        .send(
            client.post("/api/media").bearer_auth(&token).multipart(
                Form::new()
                    .part("file", Part::bytes(picture(ImageFormat::Png, 4, 4)))
                    .text("caption", "and something else"),
            ),
        )
        .await;
    assert_eq!(
        (two_parts.status, &two_parts.body["code"]),
        (422, &json!("validation_failed"))
    );
    let anonymous = client
        .send(
            client
                .post("/api/media")
                .multipart(Form::new().part("file", Part::bytes(picture(ImageFormat::Png, 4, 4)))),
        )
        .await;
    assert_eq!(anonymous.status, 401);

    assert_eq!(event_count(&world, "media.uploaded"), 0);
    let stored = std::fs::read_dir(&world.settings.media_dir)
        .map(|dir| dir.count())
        .unwrap_or(0);
    assert_eq!(stored, 0, "nothing refused is stored");

    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn posts_show_up_to_four_media_items_of_their_author() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (alice_id, alice, _) = client.user("alice").await;
    let (_, bob, _) = client.user("bob").await;

    let mut mine = Vec::new();
    for n in 1..=5 {
        let item = uploaded(
            &client,
            &alice,
            picture(ImageFormat::Png, 10 * n, 10),
            "a.png",
            "image/png",
        )
        .await;
        mine.push(item["id"].as_str().unwrap().to_owned());
    }
    let video = uploaded(&client, &alice, mp4(), "v.mp4", "video/mp4").await;
    let bobs = uploaded(
        &client,
        &bob,
        picture(ImageFormat::Png, 5, 5),
        "b.png",
        "image/png",
    )
    .await;

    let reply = post(&client, &alice, json!([mine[0], bobs["id"]])).await;
    assert_eq!(
        (reply.status, &reply.body["code"]),
        (422, &json!("validation_failed"))
    );
    assert_eq!(reply.body["errors"][0]["field"], "media_ids[1]");
    let reply = post(&client, &alice, json!(mine)).await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert_eq!(reply.body["errors"][0]["field"], "media_ids");
    let reply = post(&client, &alice, json!([uuid::Uuid::new_v4()])).await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert_eq!(reply.body["errors"][0]["field"], "media_ids[0]");
    let reply = post(&client, &alice, json!([mine[1], mine[1]])).await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert_eq!(
        event_count(&world, "post.created"),
        0,
        "nothing refused is appended"
    );
    assert_eq!(event_count(&world, "media.attached"), 0);

    // Bob follows Alice and has a socket open: her post reaches his feed
    // channel with its media.
    let follow = client
        .send(
            client
                .put(&format!("/api/users/{alice_id}/follow"))
                .bearer_auth(&bob),
        )
        .await;
    assert_eq!(follow.status, 200, "{}", follow.body);
    let mut bobs_socket = Socket::connect(&app.base, &bob).await;
    bobs_socket.expect("welcome").await;

    let reply = post(&client, &alice, json!([mine[2], video["id"], mine[0]])).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let media = &reply.body["post"]["media"];
    let ids: Vec<&str> = media
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            mine[2].as_str(),
            video["id"].as_str().unwrap(),
            mine[0].as_str()
        ]
    );
    assert_eq!(media[0]["content_type"], "image/png");
    assert_eq!(
        (media[0]["width"].as_i64(), media[0]["height"].as_i64()),
        (Some(30), Some(10))
    );
    assert_eq!(media[0]["url"], format!("/media/{}", mine[2]));
    assert_eq!(
        media[0]["thumbnail_url"],
        format!("/media/{}/thumbnail", mine[2])
    );
    assert_eq!(media[1]["content_type"], "video/mp4");
    assert!(media[1]["thumbnail_url"].is_null());
    let post_id = reply.body["post"]["id"].as_str().unwrap();
    let pushed = loop {
        let frame = bobs_socket.expect("event").await;
        if frame["event"] == "feed.post_created" {
            break frame;
        }
    };
    assert_eq!(pushed["data"]["post_id"], post_id);
    assert_eq!(&pushed["data"]["media"], media);

    let read = client
        .send(
            client
                .get(&format!("/api/posts/{post_id}"))
                .bearer_auth(&bob),
        )
        .await;
    assert_eq!(read.status, 200);
    assert_eq!(&read.body["media"], media);
    assert_eq!(read.body["like_count"], 0, "the other fields stay");
    let listed = client
        .send(
            client
                .get(&format!("/api/users/{alice_id}/posts"))
                .bearer_auth(&bob),
        )
        .await;
    assert_eq!(&listed.body["items"][0]["media"], media);
    let feed = client
        .send(client.get("/api/feed").bearer_auth(&alice))
        .await;
    assert_eq!(&feed.body["items"][0]["media"], media);

    let plain = client
        .send(
            client
                .post("/api/posts")
                .bearer_auth(&alice)
                .json(&json!({"text": "no pictures"})),
        )
        .await;
    assert_eq!(plain.status, 201);
    assert_eq!(plain.body["post"]["media"], json!([]));
    assert_eq!(event_count(&world, "media.attached"), 3);

    app.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn the_sweeper_deletes_media_no_post_took_and_keeps_the_rest() {
    let world = World::new().await;
    let mut settings = world.settings.clone();
    settings.media_unused_secs = 2;
    let app = world.start_with(settings, &ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (_, token, _) = client.user("sam").await;

    let unused = uploaded(
        &client,
        &token,
        picture(ImageFormat::Png, 20, 20),
        "u.png",
        "image/png",
    )
    .await;
    let kept = uploaded(
        &client,
        &token,
        picture(ImageFormat::Png, 20, 20),
        "k.png",
        "image/png",
    )
    .await;
    let reply = post(&client, &token, json!([kept["id"]])).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let (unused, kept) = (
        unused["id"].as_str().unwrap().to_owned(),
        kept["id"].as_str().unwrap().to_owned(),
    );
    let dir = world.settings.media_dir.join("media");
    assert!(dir.join(&unused).join("original").exists());

    eventually(Duration::from_secs(20), "the unused item is swept", || {
        let (client, path, dir) = (
            client.clone(),
            format!("/media/{unused}"),
            dir.join(&unused),
        );
        async move {
            let reply = client.send(client.get(&path)).await;
            reply.status == 404 && !dir.exists()
        }
    })
    .await;
    // Several rounds later the item a post took is still there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = client.get(&format!("/media/{kept}")).send().await.unwrap();
    assert_eq!(still.status(), 200);
    let still = client
        .get(&format!("/media/{kept}/thumbnail"))
        .send()
        .await
        .unwrap();
    assert_eq!(still.status(), 200);
    let deleted: Vec<String> = world
        .events()
        .iter()
        .filter(|(_, _, e)| e.event_type == "media.deleted")
        .map(|(_, _, e)| e.aggregate.id.clone())
        .collect();
    assert_eq!(deleted, [unused]);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM media")
        .fetch_one(&world.db().await)
        .await
        .unwrap();
    assert_eq!(
        rows, 1,
        "the deleted item's row is gone once its objects are"
    );

    app.stop().await;
    world.clean_up().await;
}

async fn upload_keyed(client: &Client, token: &str, key: &str, bytes: Vec<u8>) -> Reply {
    // Each request has a multipart boundary of its own, as a client's retry
    // would: the key is bound to the file, not to the form around it.
    let part = Part::bytes(bytes).file_name("retry.png");
    client
        .send(
            client
                .post("/api/media")
                .bearer_auth(token)
                .header("idempotency-key", key)
                .multipart(Form::new().part("file", part)),
        )
        .await
}

#[tokio::test]
async fn an_upload_retried_under_its_key_is_the_same_item_and_another_file_is_refused() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (_, mia, _) = client.user("mia").await;
    let (_, ben, _) = client.user("ben").await;
    let file = noise(200, 200);
    assert!(file.len() > 100 * 1024, "larger than any JSON body");

    let first = upload_keyed(&client, &mia, "photo-1", file.clone()).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let again = upload_keyed(&client, &mia, "photo-1", file.clone()).await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(again.body["id"], first.body["id"], "the same item");
    assert_eq!(again.headers["idempotent-replayed"], "true");

    let other = upload_keyed(&client, &mia, "photo-1", picture(ImageFormat::Png, 8, 8)).await;
    assert_eq!(
        (other.status, &other.body["code"]),
        (422, &json!("idempotency_key_reused")),
        "{}",
        other.body
    );
    // Keys are the caller's own: another user's same key is another item.
    let bens = upload_keyed(&client, &ben, "photo-1", file.clone()).await;
    assert_eq!(bens.status, 201, "{}", bens.body);
    assert_ne!(bens.body["id"], first.body["id"]);

    // Retries racing each other: one item, whoever answers.
    let racing = futures_util::future::join_all(
        (0..6).map(|_| upload_keyed(&client, &mia, "photo-2", file.clone())),
    )
    .await;
    let mut ids: Vec<&Value> = Vec::new();
    for reply in &racing {
        match reply.status {
            201 => ids.push(&reply.body["id"]),
            409 => assert_eq!(reply.body["code"], "idempotency_key_in_flight"),
            // Past the uploads one user may have under way.
            429 => assert_eq!(reply.body["code"], "too_many_uploads"),
            other => panic!("{other}: {}", reply.body),
        }
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let settled = upload_keyed(&client, &mia, "photo-2", file.clone()).await;
    assert_eq!(settled.status, 201, "{}", settled.body);
    if let Some(first) = ids.first() {
        assert_eq!(&&settled.body["id"], first);
    }

    assert_eq!(
        event_count(&world, "media.uploaded"),
        3,
        "mia's two and ben's one"
    );
    app.stop().await;
    world.clean_up().await;
}

/// Starts an upload that sends its head, a PNG signature and nothing more,
/// and keeps the connection open.
async fn stalled_upload(base: &str, token: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n";
    let request = format!(
        "POST /api/media HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n{head}"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
        .write_all(&[0x89, b'P', b'N', b'G', 13, 10, 26, 10])
        .await
        .unwrap();
    stream
}

#[tokio::test]
async fn uploads_that_stall_hold_their_sender_back_and_nobody_else() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (_, eve, _) = client.user("eve").await;
    let (_, mal, _) = client.user("mal").await;
    let (_, ann, _) = client.user("ann").await;

    // Four stalled uploads of two users: twice as many as the server has
    // cores, as many as it would hold were uploads counted, not bytes.
    let mut stalled = Vec::new();
    for token in [&eve, &eve, &mal, &mal] {
        stalled.push(stalled_upload(&app.base, token).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let third = upload(
        &client,
        &eve,
        picture(ImageFormat::Png, 4, 4),
        "c.png",
        "image/png",
    )
    .await;
    assert_eq!(
        (third.status, &third.body["code"]),
        (429, &json!("too_many_uploads")),
        "{}",
        third.body
    );
    assert!(third.headers.get("retry-after").is_some());
    // Others upload as if nothing stalled.
    for n in 0..6 {
        let reply = upload(
            &client,
            &ann,
            picture(ImageFormat::Png, 8 + n, 8),
            "a.png",
            "image/png",
        )
        .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    drop(stalled);
    // Eve's uploads end with her connections: she may upload again.
    eventually(
        Duration::from_secs(10),
        "eve's stalled uploads end",
        || async {
            upload(
                &client,
                &eve,
                picture(ImageFormat::Png, 4, 4),
                "c.png",
                "image/png",
            )
            .await
            .status
                == 201
        },
    )
    .await;
    app.stop().await;
    world.clean_up().await;
}

/// An S3-compatible object store: moto's standalone server, a process of
/// the test's own on 127.0.0.1 (`scripts/stack up` installs it), with one
/// bucket.
struct S3Server {
    child: std::process::Child,
    port: u16,
}

impl S3Server {
    async fn started(bucket: &str) -> S3Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let program =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/moto/bin/moto_server");
        let child = std::process::Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server runs (scripts/stack up installs it)");
        let server = S3Server { child, port };
        let bucket_url = format!("{}/{bucket}", server.endpoint());
        eventually(
            Duration::from_secs(30),
            "the S3 server makes the bucket",
            || {
                let bucket_url = bucket_url.clone();
                async move {
                    reqwest::Client::new()
                        .put(&bucket_url)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            },
        )
        .await;
        server
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The keys of the bucket's objects under `prefix`.
    async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let listing = reqwest::get(format!(
            "{}/{bucket}?list-type=2&prefix={prefix}",
            self.endpoint()
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
        listing
            .split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn an_s3_compatible_store_keeps_the_bytes_under_its_prefix() {
    let s3 = S3Server::started("tidings-media").await;
    // What any S3-compatible store is configured with (a test runs in a
    // process of its own under nextest).
    for (name, value) in [
        ("AWS_ENDPOINT", s3.endpoint()),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
        ("AWS_ACCESS_KEY_ID", "tidings".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "tidings-secret".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
    ] {
        std::env::set_var(name, value);
    }
    let world = World::new().await;
    let mut settings = world.settings.clone();
    settings.media_store = Some("s3://tidings-media/uploads".to_owned());
    let app = world.start_with(settings, &ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (_, token, _) = client.user("sia").await;

    let png = picture(ImageFormat::Png, 400, 100);
    let item = uploaded(&client, &token, png.clone(), "wide.png", "image/png").await;
    let id = item["id"].as_str().unwrap();
    let keys = s3.keys("tidings-media", "uploads/").await;
    assert_eq!(keys.len(), 2, "the image and its thumbnail: {keys:?}");
    assert!(keys.iter().all(|k| k.contains(id)), "{keys:?}");
    assert!(
        s3.keys("tidings-media", "").await.len() == 2,
        "nothing outside the prefix"
    );

    let served = client.get(&format!("/media/{id}")).send().await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["content-type"], "image/png");
    assert_eq!(served.bytes().await.unwrap().as_ref(), png.as_slice());
    let part = client
        .get(&format!("/media/{id}"))
        .header("Range", "bytes=0-7")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap().as_ref(), &png[..8]);
    let thumbnail = client
        .get(item["thumbnail_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let small = image::load_from_memory(&thumbnail.bytes().await.unwrap()).unwrap();
    assert_eq!((small.width(), small.height()), (320, 80));

    app.stop().await;
    world.clean_up().await;
}

/// `who` writes `body` to `path`.
async fn write(client: &Client, token: &str, path: &str, body: Value) -> Reply {
    client
        .send(client.post(path).bearer_auth(token).json(&body))
        .await
}

#[tokio::test]
async fn messages_show_their_authors_media_to_the_room_and_a_tombstone_shows_none() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (_, alice, _) = client.user("alice").await;
    let (bob_id, bob, position) = client.user("bob").await;
    let (_, carol, _) = client.user("carol").await;
    assert_eq!(client.own_profile(&bob, &position).await.status, 200);

    let created = write(
        &client,
        &alice,
        "/api/rooms",
        json!({"name": "photos", "is_private": true}),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let room = created.body["room"]["id"].as_str().unwrap().to_owned();
    let invite = json!({"user_id": bob_id});
    let invited = write(
        &client,
        &alice,
        &format!("/api/rooms/{room}/invites"),
        invite,
    )
    .await;
    assert_eq!(invited.status, 201, "{}", invited.body);
    let joined = write(&client, &bob, &format!("/api/rooms/{room}/join"), json!({})).await;
    assert_eq!(joined.status, 200, "{}", joined.body);

    let picture_id = |item: Value| item["id"].as_str().unwrap().to_owned();
    let hers = picture_id(
        uploaded(
            &client,
            &alice,
            picture(ImageFormat::Png, 30, 20),
            "a.png",
            "image/png",
        )
        .await,
    );
    let clip = picture_id(uploaded(&client, &alice, mp4(), "v.mp4", "video/mp4").await);
    let his = picture_id(
        uploaded(
            &client,
            &bob,
            picture(ImageFormat::Png, 8, 8),
            "b.png",
            "image/png",
        )
        .await,
    );
    let carols = picture_id(
        uploaded(
            &client,
            &carol,
            picture(ImageFormat::Png, 8, 8),
            "c.png",
            "image/png",
        )
        .await,
    );
    let messages = format!("/api/rooms/{room}/messages");

    // Someone else's item, five items, an unknown one: field errors, and
    // nothing appended.
    let refused = [
        json!([hers, his]),
        json!([hers, clip, his, carols, uuid::Uuid::new_v4()]),
        json!([uuid::Uuid::new_v4()]),
        json!([hers, hers]),
    ];
    for media_ids in refused {
        let body = json!({"text": "look", "media_ids": media_ids});
        let reply = write(&client, &alice, &messages, body).await;
        assert_eq!(reply.status, 422, "{media_ids}: {}", reply.body);
        assert!(
            reply.body["errors"][0]["field"]
                .as_str()
                .unwrap()
                .starts_with("media_ids"),
            "{}",
            reply.body
        );
    }
    // Carol is not in the room: the room's answer, and her item stays
    // unattached.
    let body = json!({"text": "me too", "media_ids": [carols]});
    let reply = write(&client, &carol, &messages, body).await;
    assert_eq!(
        (reply.status, &reply.body["code"]),
        (404, &json!("room_not_found"))
    );
    assert_eq!(event_count(&world, "room.message_posted"), 0);
    assert_eq!(event_count(&world, "media.attached"), 0);

    let body = json!({"text": "our trip", "media_ids": [clip, hers]});
    let reply = write(&client, &alice, &messages, body).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let message = &reply.body["message"];
    assert_eq!(message["media_ids"], json!([clip, hers]));
    assert_eq!(message["media"][0]["id"], clip.as_str());
    assert_eq!(message["media"][0]["content_type"], "video/mp4");
    assert_eq!(message["media"][1]["url"], format!("/media/{hers}"));
    assert_eq!(message["media"][1]["width"], 30);
    assert_eq!(
        message["media"][1]["thumbnail_url"],
        format!("/media/{hers}/thumbnail")
    );
    let message_id = message["id"].as_str().unwrap().to_owned();
    let attached: Vec<String> = world
        .events()
        .iter()
        .filter(|(_, _, e)| e.event_type == "media.attached")
        .map(|(_, _, e)| {
            assert_eq!(e.version, 2);
            assert_eq!(e.data["message_id"], message_id.as_str());
            e.aggregate.id.clone()
        })
        .collect();
    assert_eq!(attached.len(), 2, "{attached:?}");

    // Bob reads it in the history; a direct message takes media too.
    let history = client.send(client.get(&messages).bearer_auth(&bob)).await;
    assert_eq!(history.status, 200, "{}", history.body);
    assert_eq!(history.body["items"][0]["media"][1]["id"], hers.as_str());
    let body = json!({"text": "for you", "media_ids": [hers]});
    let dm = write(&client, &alice, &format!("/api/dm/{bob_id}/messages"), body).await;
    assert_eq!(dm.status, 201, "{}", dm.body);
    assert_eq!(dm.body["message"]["media"][0]["id"], hers.as_str());

    // Deleted, the message is a tombstone without media.
    let gone = client
        .send(
            client
                .delete(&format!("{messages}/{message_id}"))
                .bearer_auth(&alice),
        )
        .await;
    assert_eq!(gone.status, 200, "{}", gone.body);
    let history = client.send(client.get(&messages).bearer_auth(&bob)).await;
    let tombstone = &history.body["items"][0];
    assert_eq!(tombstone["deleted"], true, "{tombstone}");
    assert_eq!(tombstone["media"], json!([]));
    assert_eq!(tombstone["media_ids"], json!([]));

    app.stop().await;
    world.clean_up().await;
}
