//! What analysts and admins read: `tidings replay` (ranges, filters, NDJSON,
//! CSV and Parquet read back by pyarrow and DuckDB, redaction), the admin
//! routes (who may call them, the event log in pages, an aggregate as of
//! three instants), and an event stored at v1 read as v2 by every reader.

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use tidings_schemas::EventEnvelope;
use uuid::Uuid;

use crate::support::{eventually, Client, World, ALL_ROLES};

const ANALYSTS_PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.tools/analysts/bin/python");

/// Runs `tidings replay <args>` against the world's log.
fn replay(world: &World, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .arg("replay")
        .args(args)
        .envs(world.settings.to_env())
        .env("RUST_LOG", "warn")
        .output()
        .expect("the tidings binary runs");
    assert!(
        out.status.success(),
        "tidings replay {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The NDJSON lines of a replay, as envelopes.
fn replayed(world: &World, args: &[&str]) -> Vec<EventEnvelope> {
    let out = replay(world, args);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| EventEnvelope::from_json(line.as_bytes()).expect("an envelope per line"))
        .collect()
}

/// Runs Python of the project's analysts' virtualenv (`scripts/stack up`).
fn python(script: &str, arg: &str) -> String {
    assert!(
        std::path::Path::new(ANALYSTS_PYTHON).exists(),
        "{ANALYSTS_PYTHON} is missing: scripts/stack up installs pyarrow and duckdb there"
    );
    let out = Command::new(ANALYSTS_PYTHON)
        .args(["-c", script, arg])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A world whose admin is `root_admin` (named in another case, as an
/// operator might write it).
async fn admin_world() -> World {
    let mut world = World::new().await;
    world.settings.admin_usernames = vec!["Root_Admin".into(), " ".into()];
    world
}

#[tokio::test]
async fn replay_reads_ranges_and_filters_as_ndjson_csv_and_parquet() {
    let world = World::new().await;
    let running = world.start(&ALL_ROLES).await;
    let client = Client::new(&running.base);
    let (ada, ada_token, _) = client.user("ada").await;
    let after_ada = Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (bob, _, _) = client.user("bob").await;
    let post = client
        .send(
            client
                .post("/api/posts")
                .bearer_auth(&ada_token)
                .json(&json!({"text": "hello log", "visibility": "public"})),
        )
        .await;
    assert_eq!(post.status, 201, "{}", post.body);
    // A replay beside the running roles leaves them as they were: their
    // partitions (ready) and no offsets committed by the replay's consumer.
    let during = replayed(&world, &[]);
    assert!(!during.is_empty());
    let ready = client.send(client.get("/ready")).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let consumer: rdkafka::consumer::BaseConsumer =
        world.settings.kafka().consumer(None).create().unwrap();
    let mut partitions = rdkafka::TopicPartitionList::new();
    for partition in 0..world.settings.partitions {
        partitions.add_partition(&world.settings.kafka().topics().events, partition);
    }
    let committed = rdkafka::consumer::Consumer::committed_offsets(
        &consumer,
        partitions,
        tidings_schemas::kafka::ADMIN_TIMEOUT,
    )
    .unwrap();
    assert!(
        committed
            .elements()
            .iter()
            .all(|e| !matches!(e.offset(), rdkafka::Offset::Offset(_))),
        "the replay's consumer committed: {committed:?}"
    );
    running.stop().await;
    let log = world.events();

    // Everything, as on the topic: each line an envelope of the schema,
    // private fields left out.
    let all = replayed(&world, &[]);
    assert_eq!(all.len(), log.len());
    let ids: BTreeSet<Uuid> = all.iter().map(|e| e.event_id).collect();
    assert_eq!(ids, log.iter().map(|(_, _, e)| e.event_id).collect());
    let text = String::from_utf8(replay(&world, &[]).stdout).unwrap();
    assert!(!text.contains("@example.com"), "an address left in: {text}");
    assert!(!text.contains("argon2"));
    let envelope_schema: Value =
        serde_json::from_str(tidings_schemas::json::EVENT_ENVELOPE).unwrap();
    let validator = jsonschema::validator_for(&envelope_schema).unwrap();
    for line in text.lines() {
        let value: Value = serde_json::from_str(line).unwrap();
        assert!(validator.is_valid(&value), "{line}");
    }
    let claims: Vec<&EventEnvelope> = all
        .iter()
        .filter(|e| e.aggregate.kind.as_str() == "email")
        .collect();
    assert_eq!(claims.len(), 2, "one email claim each");
    assert!(claims.iter().all(|e| e.aggregate.id.starts_with("sha256:")));
    // Asked for, the addresses are there.
    let private = String::from_utf8(replay(&world, &["--include-private"]).stdout).unwrap();
    assert!(private.contains("ada@example.com") && private.contains("bob@example.com"));
    assert!(!private.contains("argon2"));

    // Filters: by type, by aggregate type and id.
    let registered = replayed(&world, &["--type", "account.registered,post.created"]);
    let types: Vec<&str> = registered.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types.len(), 3, "{types:?}");
    assert_eq!(types.iter().filter(|t| **t == "post.created").count(), 1);
    let bobs = replayed(&world, &["--aggregate", &format!("account:{bob}")]);
    assert!(!bobs.is_empty());
    assert!(bobs.iter().all(|e| e.aggregate.id == bob));
    let posts = replayed(&world, &["--aggregate-type", "post"]);
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].actor.map(|a| a.to_string()), Some(ada.clone()));

    // Ranges: from a time, up to an offset, from partition offsets.
    let later = replayed(&world, &["--from", &after_ada.to_rfc3339()]);
    assert!(later.iter().all(|e| e.occurred_at >= after_ada));
    let expected_later = log
        .iter()
        .filter(|(_, _, e)| e.occurred_at >= after_ada)
        .count();
    assert_eq!(later.len(), expected_later);
    assert!(later.iter().any(|e| e.aggregate.id == bob));
    let firsts = replayed(&world, &["--until", "1"]);
    let partitions: BTreeSet<i32> = log.iter().map(|(p, _, _)| *p).collect();
    assert_eq!(firsts.len(), partitions.len(), "offset 0 of each partition");
    let skip_one: String = (0..4)
        .map(|p| format!("{p}:1"))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        replayed(&world, &["--from", &skip_one]).len(),
        log.len() - partitions.len()
    );
    // A time until: nothing after it.
    let until_ada = replayed(&world, &["--until", &after_ada.to_rfc3339()]);
    assert!(until_ada.iter().all(|e| e.occurred_at <= after_ada));
    assert!(until_ada.iter().all(|e| e.aggregate.id != bob));
    assert!(until_ada.iter().any(|e| e.aggregate.id == ada));

    // Progress lines on stderr when it is not a terminal; stdout holds events only.
    let out = replay(&world, &["--type", "post.created"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("records read") && stderr.contains("records/s"),
        "{stderr}"
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 1);

    // CSV: a header and a row per event, `data` as JSON text.
    let dir = std::env::temp_dir().join(&world.name);
    std::fs::create_dir_all(&dir).unwrap();
    let csv_path = dir.join("events.csv");
    replay(
        &world,
        &["--format", "csv", "-o", csv_path.to_str().unwrap()],
    );
    let mut reader = csv::Reader::from_path(&csv_path).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(header, tidings::replay::COLUMNS);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), log.len());
    for row in &rows {
        let data: Value = serde_json::from_str(&row[14]).expect("data is JSON text");
        assert!(data.is_object());
        assert!(row[6].parse::<u32>().is_err(), "aggregate_type is a name");
    }

    // Parquet, read back as it is by pyarrow and by DuckDB.
    let parquet_path = dir.join("events.parquet");
    replay(
        &world,
        &["--format", "parquet", "-o", parquet_path.to_str().unwrap()],
    );
    let read_back = python(
        r#"
import json, sys
import duckdb, pyarrow.parquet as pq
table = pq.read_table(sys.argv[1])
types = {f.name: str(f.type) for f in table.schema}
con = duckdb.connect()
row = con.execute("SELECT count(*), count(DISTINCT event_id), count(*) FILTER (WHERE type = 'post.created'), min(occurred_at) <= max(occurred_at), count(*) FILTER (WHERE json_extract_string(data, '$.text') = 'hello log') FROM read_parquet('" + sys.argv[1] + "')").fetchone()
print(json.dumps({"rows": table.num_rows, "columns": table.column_names, "types": types, "duckdb": [row[0], row[1], row[2], bool(row[3]), row[4]]}))
"#,
        parquet_path.to_str().unwrap(),
    );
    let read_back: Value = serde_json::from_str(read_back.trim()).unwrap();
    assert_eq!(read_back["rows"], log.len());
    assert_eq!(read_back["columns"], json!(tidings::replay::COLUMNS));
    assert_eq!(read_back["types"]["occurred_at"], "timestamp[us, tz=UTC]");
    assert_eq!(read_back["types"]["offset"], "int64");
    assert_eq!(
        read_back["duckdb"],
        json!([log.len(), log.len(), 1, true, 1])
    );
    std::fs::remove_dir_all(&dir).unwrap();

    // Bad input: said plainly, nothing written.
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["replay", "--type", "post.exploded"])
        .envs(world.settings.to_env())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("post.exploded is not an event type"));
    assert!(out.stdout.is_empty());
    world.clean_up().await;
}

#[tokio::test]
async fn admin_routes_refuse_strangers_and_page_the_log_for_admins() {
    let world = admin_world().await;
    let running = world.start(&ALL_ROLES).await;
    let client = Client::new(&running.base);
    let (_, admin, _) = client.user("root_admin").await;
    let (_, bob, position) = client.user("bob").await;
    for path in [
        "/api/admin/projections",
        "/api/admin/events",
        "/api/admin/aggregates/account/00000000-0000-0000-0000-000000000000",
    ] {
        let anonymous = client.send(client.get(path)).await;
        assert_eq!(anonymous.status, 401, "{path}");
        assert_eq!(anonymous.body["code"], "unauthenticated");
        let user = client.send(client.get(path).bearer_auth(&bob)).await;
        assert_eq!(user.status, 403, "{path}");
        assert_eq!(user.body["code"], "forbidden");
        assert_eq!(
            user.headers["content-type"], "application/problem+json",
            "{path}"
        );
    }

    let projections = client
        .send(
            client
                .get("/api/admin/projections")
                .bearer_auth(&admin)
                .header("X-Min-Position", &position),
        )
        .await;
    assert_eq!(projections.status, 200, "{}", projections.body);
    let partitions = projections.body["projections"][0]["partitions"]
        .as_array()
        .unwrap();
    assert_eq!(partitions.len(), 4);
    let projected: i64 = partitions
        .iter()
        .map(|p| p["offset"].as_i64().unwrap())
        .sum();
    assert!(projected >= 1);
    assert!(partitions.iter().all(|p| p["lag"].as_i64().unwrap() >= 0));

    // The whole log, two events a page: pages follow `X-Next-From`.
    let total = world.events().len();
    let mut from = "start".to_owned();
    let mut lines = Vec::new();
    for page in 0.. {
        assert!(page <= total, "paging does not end");
        let reply = client
            .http
            .get(format!("{}/api/admin/events", running.base))
            .query(&[("from", from.as_str()), ("limit", "2")])
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200);
        assert_eq!(reply.headers()["content-type"], "application/x-ndjson");
        let next = reply
            .headers()
            .get("X-Next-From")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = reply.text().await.unwrap();
        assert!(body.lines().count() <= 2);
        lines.extend(body.lines().map(str::to_owned));
        match next {
            Some(next) => from = next,
            None => break,
        }
    }
    assert_eq!(lines.len(), total);
    let ids: BTreeSet<String> = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), total, "no event twice");
    assert!(lines.iter().all(|l| !l.contains("@example.com")));
    // The filters of replay.
    let reply = client
        .http
        .get(format!(
            "{}/api/admin/events?type=account.registered&aggregate=account&include_private=true",
            running.base
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let body = reply.text().await.unwrap();
    assert_eq!(body.lines().count(), 2, "{body}");
    assert!(body.contains("bob@example.com"));

    for bad in [
        "from=yesterday",
        "until=start",
        "type=post.exploded",
        "aggregate=planet",
        "limit=0",
        "limit=10001",
    ] {
        let reply = client
            .send(
                client
                    .get(&format!("/api/admin/events?{bad}"))
                    .bearer_auth(&admin),
            )
            .await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
        assert_eq!(reply.body["code"], "invalid_query", "{bad}");
    }
    running.stop().await;
    world.clean_up().await;
}

/// `as_of` an instant, as the admin sees it.
async fn as_of(client: &Client, admin: &str, path: &str, at: Option<DateTime<Utc>>) -> Value {
    let mut request = client.get(path).bearer_auth(admin);
    if let Some(at) = at {
        request = request.query(&[("as_of", at.to_rfc3339())]);
    }
    let reply = client.send(request).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

#[tokio::test]
async fn an_aggregate_reads_as_it_was_at_three_instants_of_its_life() {
    let world = admin_world().await;
    let running = world.start(&ALL_ROLES).await;
    let client = Client::new(&running.base);
    let (_, admin, _) = client.user("root_admin").await;
    let (ada, ada_token, _) = client.user("ada").await;
    let rename = |name: &'static str| {
        client.send(
            client
                .patch("/api/profile")
                .bearer_auth(&ada_token)
                .json(&json!({ "display_name": name })),
        )
    };
    let before = Utc::now() - chrono::TimeDelta::hours(1);
    let registered = Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let first = rename("First name").await;
    assert_eq!(first.status, 200, "{}", first.body);
    let renamed_once = Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = rename("Second name").await;
    assert_eq!(second.status, 200, "{}", second.body);
    let position = second.headers["X-Position"].to_str().unwrap().to_owned();
    let path = format!("/api/admin/aggregates/account/{ada}");

    // The write is projected (its answer waited): the index has it.
    let reply = client
        .send(
            client
                .get(&path)
                .bearer_auth(&admin)
                .header("X-Min-Position", &position),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    let at_registration = as_of(&client, &admin, &path, Some(registered)).await;
    assert_eq!(at_registration["version"], 2, "{at_registration}");
    assert_eq!(at_registration["state"]["Active"]["display_name"], "ada");
    assert_eq!(
        at_registration["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["account.opened", "account.registered"]
    );
    let once = as_of(&client, &admin, &path, Some(renamed_once)).await;
    assert_eq!(once["version"], 3);
    assert_eq!(once["state"]["Active"]["display_name"], "First name");
    let now = as_of(&client, &admin, &path, None).await;
    assert_eq!(now["version"], 4);
    assert_eq!(now["state"]["Active"]["display_name"], "Second name");
    assert_eq!(now["events"][3]["type"], "account.profile_updated");
    // Private unless asked for, in the state and in the events.
    assert!(!now.to_string().contains("ada@example.com"), "{now}");
    let private = client
        .send(
            client
                .get(&path)
                .query(&[("include_private", "true")])
                .bearer_auth(&admin),
        )
        .await;
    assert_eq!(private.body["state"]["Active"]["email"], "ada@example.com");
    // Before its first event an aggregate is its initial state.
    let unborn = as_of(&client, &admin, &path, Some(before)).await;
    assert_eq!(unborn["version"], 0);
    assert_eq!(unborn["state"], "Unregistered");
    assert_eq!(unborn["events"], json!([]));

    for (bad, status, code) in [
        (format!("{path}?as_of=yesterday"), 400, "invalid_query"),
        (
            "/api/admin/aggregates/planet/1".to_owned(),
            404,
            "not_found",
        ),
        (
            format!("/api/admin/aggregates/account/{}", Uuid::new_v4()),
            404,
            "not_found",
        ),
    ] {
        let reply = client.send(client.get(&bad).bearer_auth(&admin)).await;
        assert_eq!(
            (reply.status, reply.body["code"].as_str()),
            (status, Some(code)),
            "{bad}"
        );
    }
    running.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn an_event_stored_at_v1_reads_as_v2_in_replay_projection_and_folds() {
    let world = admin_world().await;
    // Two events of an account written before v2, hash and all, as an
    // older Tidings wrote them.
    let user = Uuid::new_v4();
    let key = format!("account:{user}");
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
    let opened_id = Uuid::new_v4();
    let at = Utc::now();
    let opened = json!({
        "event_id": opened_id, "type": "account.opened", "version": 1,
        "aggregate": {"type": "account", "id": user.to_string()}, "sequence": 1,
        "previous": null, "occurred_at": at, "actor": user, "command_id": Uuid::new_v4(),
        "correlation_id": Uuid::new_v4(),
        "data": {"user_id": user, "username": "legacy", "email": "legacy@example.com",
                 "password_hash": hash, "display_name": "Legacy", "opened_at": at}
    });
    let registered = json!({
        "event_id": Uuid::new_v4(), "type": "account.registered", "version": 1,
        "aggregate": {"type": "account", "id": user.to_string()}, "sequence": 2,
        "previous": opened_id, "occurred_at": at, "actor": user, "command_id": Uuid::new_v4(),
        "correlation_id": Uuid::new_v4(),
        "data": {"user_id": user, "username": "legacy", "email": "legacy@example.com",
                 "password_hash": hash, "display_name": "Legacy", "registered_at": at}
    });
    let producer: FutureProducer = world.settings.kafka().producer().create().unwrap();
    let topic = world.settings.kafka().topics().events;
    for event in [&opened, &registered] {
        let payload = event.to_string();
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    // Stored at v1, hash and all.
    let stored = world.events();
    assert_eq!(stored.len(), 2);
    assert!(stored
        .iter()
        .all(|(_, _, e)| e.version == 1 && e.data.get("password_hash").is_some()));

    // Replay reads it at v2, without the hash even when private fields are asked for.
    let read = replayed(&world, &["--include-private"]);
    assert_eq!(read.len(), 2);
    assert!(read.iter().all(|e| e.version == 2));
    assert!(read.iter().all(|e| e.data.get("password_hash").is_none()));
    assert_eq!(read[1].data["email"], "legacy@example.com");

    // The projector reads it too (the hash goes to the private store), and
    // the admin's fold of it is the v2 account.
    let running = world.start(&ALL_ROLES).await;
    let client = Client::new(&running.base);
    let (_, admin, _) = client.user("root_admin").await;
    let path = format!("/api/admin/aggregates/account/{user}");
    eventually(
        Duration::from_secs(20),
        "the v1 account is indexed",
        || async {
            client
                .send(client.get(&path).bearer_auth(&admin))
                .await
                .status
                == 200
        },
    )
    .await;
    let folded = as_of(&client, &admin, &path, None).await;
    assert_eq!(folded["version"], 2);
    assert_eq!(folded["state"]["Active"]["username"], "legacy");
    assert!(folded["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["version"] == 2));
    assert!(!folded.to_string().contains("argon2"));
    // The hash the upcast drops went to the private store.
    let db = world.db().await;
    let kept: Option<String> =
        sqlx::query_scalar("SELECT password_hash FROM credentials WHERE user_id = $1")
            .bind(user)
            .fetch_optional(&db)
            .await
            .unwrap();
    assert_eq!(kept.as_deref(), Some(hash));
    db.close().await;
    running.stop().await;
    world.clean_up().await;
}

/// Runs `tidings rebuild <args>` against the world's database and log.
fn rebuild(settings: &tidings::Settings, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .arg("rebuild")
        .args(args)
        .envs(settings.to_env())
        .env("RUST_LOG", "warn")
        .output()
        .expect("the tidings binary runs");
    assert!(
        out.status.success(),
        "tidings rebuild {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The schemas a rebuild made that are still in the database.
async fn rebuild_schemas(db: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace
         WHERE nspname LIKE 'tidings\\_old\\_%' OR nspname LIKE 'tidings\\_rebuild\\_%' ORDER BY 1",
    )
    .fetch_all(db)
    .await
    .unwrap()
}

/// What a REST reader saw while it looped.
#[derive(Default)]
struct Reads {
    ok: usize,
    failures: Vec<String>,
}

#[tokio::test]
async fn rebuild_while_writes_continue_switches_to_equal_read_models_and_no_read_fails() {
    let world = World::new().await;
    let running = world.start(&ALL_ROLES).await;
    let client = Client::new(&running.base);
    let (ada, ada_token, _) = client.user("ada").await;
    let (bob, bob_token, _) = client.user("bob").await;
    let followed = client
        .send(
            client
                .put(&format!("/api/users/{ada}/follow"))
                .bearer_auth(&bob_token),
        )
        .await;
    assert_eq!(followed.status, 200, "{}", followed.body);
    let first = client
        .send(
            client
                .post("/api/posts")
                .bearer_auth(&ada_token)
                .json(&json!({"text": "before the rebuild", "visibility": "followers"})),
        )
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    let first_post = first.body["post"]["id"].as_str().unwrap().to_owned();
    let liked = client
        .send(
            client
                .put(&format!("/api/posts/{first_post}/like"))
                .bearer_auth(&bob_token),
        )
        .await;
    assert_eq!(liked.status, 200, "{}", liked.body);
    let room = client
        .send(
            client
                .post("/api/rooms")
                .bearer_auth(&ada_token)
                .json(&json!({"name": "rebuilders", "is_private": false})),
        )
        .await;
    assert_eq!(room.status, 201, "{}", room.body);
    let room = room.body["room"]["id"].as_str().unwrap().to_owned();
    let joined = client
        .send(
            client
                .post(&format!("/api/rooms/{room}/join"))
                .bearer_auth(&bob_token),
        )
        .await;
    assert_eq!(joined.status, 200, "{}", joined.body);
    // Mentions and "mark all read" read what other partitions' events
    // wrote: the rebuild does not read the partitions in the live
    // projector's order, and switches all the same (their rows are carried
    // over, as `message` notifications are).
    let mut mentioners = Vec::new();
    for i in 0..6 {
        mentioners.push(client.user(&format!("mentioner{i}")).await);
    }
    for (i, (_, token, _)) in mentioners.iter().enumerate() {
        let mentioned =
            client
                .send(client.post("/api/posts").bearer_auth(token).json(
                    &json!({"text": format!("hello @mentioner{}", (i + 1) % 6), "visibility": "public"}),
                ))
                .await;
        assert_eq!(mentioned.status, 201, "{}", mentioned.body);
        let followed = client
            .send(
                client
                    .put(&format!("/api/users/{ada}/follow"))
                    .bearer_auth(token),
            )
            .await;
        assert_eq!(followed.status, 200, "{}", followed.body);
    }
    let read = client
        .send(
            client
                .post("/api/notifications/read")
                .bearer_auth(&ada_token)
                .json(&json!({"all": true})),
        )
        .await;
    assert!(read.status < 300, "{} {}", read.status, read.body);

    // A reader loops on REST reads, and a writer posts and writes in the
    // room, from before the rebuild to after its switch.
    let stop = tokio_util::sync::CancellationToken::new();
    let reader = {
        let (client, stop) = (client.clone(), stop.clone());
        let paths = [
            ("/api/profile".to_owned(), ada_token.clone()),
            (format!("/api/users/{bob}"), ada_token.clone()),
            ("/api/feed".to_owned(), bob_token.clone()),
            (format!("/api/posts/{first_post}"), bob_token.clone()),
            (format!("/api/rooms/{room}/messages"), bob_token.clone()),
            ("/api/rooms".to_owned(), bob_token.clone()),
        ];
        tokio::spawn(async move {
            let mut reads = Reads::default();
            while !stop.is_cancelled() {
                for (path, token) in &paths {
                    match client.get(path).bearer_auth(token).send().await {
                        Ok(reply) if reply.status() == 200 => reads.ok += 1,
                        Ok(reply) => {
                            let status = reply.status();
                            let body = reply.text().await.unwrap_or_default();
                            reads.failures.push(format!("{path}: {status} {body}"));
                        }
                        Err(error) => reads.failures.push(format!("{path}: {error}")),
                    }
                }
            }
            reads
        })
    };
    let posted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer =
        {
            let (client, stop, posted) = (client.clone(), stop.clone(), posted.clone());
            let (ada_token, room) = (ada_token.clone(), room.clone());
            tokio::spawn(async move {
                let mut last_position = String::new();
                let mut messages = 0;
                while !stop.is_cancelled() {
                    let n = posted.load(std::sync::atomic::Ordering::SeqCst);
                    let post =
                        client
                            .send(client.post("/api/posts").bearer_auth(&ada_token).json(
                                &json!({"text": format!("post {n}"), "visibility": "public"}),
                            ))
                            .await;
                    assert_eq!(post.status, 201, "{}", post.body);
                    posted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let message = client
                        .send(
                            client
                                .post(&format!("/api/rooms/{room}/messages"))
                                .bearer_auth(&ada_token)
                                .json(&json!({"text": format!("message {n}")})),
                        )
                        .await;
                    assert_eq!(message.status, 201, "{}", message.body);
                    messages += 1;
                    last_position = message.body["position"].as_str().unwrap().to_owned();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (messages, last_position)
            })
        };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let before = posted.load(std::sync::atomic::Ordering::SeqCst);
    let settings = world.settings.clone();
    let out = tokio::task::spawn_blocking(move || rebuild(&settings, &["--progress", "plain"]))
        .await
        .unwrap();
    let during = posted.load(std::sync::atomic::Ordering::SeqCst) - before;
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(during > 0, "no write was accepted while the rebuild ran");
    assert!(stdout.contains("events/s"), "{stdout}");
    assert!(
        stdout.contains("tables with the same digest in both schemas"),
        "{stdout}"
    );
    let old = stdout
        .split_whitespace()
        .find(|w| w.starts_with("tidings_old_"))
        .unwrap_or_else(|| panic!("no old schema named: {stdout}"))
        .to_owned();
    // Writes and reads go on after the switch too.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop.cancel();
    let reads = reader.await.unwrap();
    let (messages, last_position) = writer.await.unwrap();
    assert!(
        reads.failures.is_empty(),
        "reads failed during the rebuild: {:?}",
        reads.failures
    );
    assert!(reads.ok >= 30, "only {} reads", reads.ok);

    // The read models after the switch hold everything: what was rebuilt,
    // and what the live projector applied before and after the switch.
    let posts = posted.load(std::sync::atomic::Ordering::SeqCst);
    let mut history = 0;
    let mut page = format!("/api/rooms/{room}/messages?limit=100");
    loop {
        let reply = client
            .send(
                client
                    .get(&page)
                    .bearer_auth(&bob_token)
                    .header("X-Min-Position", &last_position),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        history += reply.body["items"].as_array().unwrap().len();
        match reply.body["next_cursor"].as_str() {
            Some(cursor) => page = format!("/api/rooms/{room}/messages?limit=100&before={cursor}"),
            None => break,
        }
    }
    assert_eq!(history, messages);
    let profile = client.own_profile(&ada_token, &last_position).await;
    assert_eq!(profile.status, 200, "{}", profile.body);
    assert_eq!(profile.body["posts_count"], json!(posts + 1));
    assert_eq!(profile.body["followers_count"], json!(1 + mentioners.len()));
    let post = client
        .send(
            client
                .get(&format!("/api/posts/{first_post}"))
                .bearer_auth(&bob_token),
        )
        .await;
    assert_eq!(post.body["like_count"], json!(1), "{}", post.body);
    assert_eq!(post.body["liked_by_me"], json!(true), "{}", post.body);
    // Credentials are kept, not rebuilt: the password still works.
    let login = client
        .send(
            client
                .post("/api/auth/login")
                .json(&json!({"login": "ada", "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(login.status, 200, "{}", login.body);

    // In PostgreSQL: the old schema holds the read models as they were at
    // the switch (a prefix of the live ones), the kept tables moved to the
    // live schema.
    let db = world.db().await;
    assert_eq!(rebuild_schemas(&db).await, std::slice::from_ref(&old));
    let tables_in = |schema: &'static str| {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = $1 ORDER BY 1",
            )
            .bind(schema)
            .fetch_all(&db)
            .await
            .unwrap()
        }
    };
    let live_tables = tables_in("public").await;
    for table in [
        "credentials",
        "idempotency_keys",
        "decider_snapshots",
        "channel_outbox",
        "accounts",
        "event_index",
    ] {
        assert!(
            live_tables.contains(&table.to_owned()),
            "{table} is not live"
        );
    }
    let old_tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = $1 ORDER BY 1",
    )
    .bind(&old)
    .fetch_all(&db)
    .await
    .unwrap();
    assert!(old_tables.contains(&"accounts".to_owned()));
    assert!(!old_tables.contains(&"credentials".to_owned()));
    let missing: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM (SELECT * FROM \"{old}\".event_index EXCEPT SELECT * FROM public.event_index) AS m"
    ))
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(missing, 0, "the rebuilt index lacks events the old one had");
    let (old_events, live_events): (i64, i64) = sqlx::query_as(&format!(
        "SELECT (SELECT count(*) FROM \"{old}\".event_index), (SELECT count(*) FROM public.event_index)"
    ))
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(
        old_events > 0 && live_events > old_events,
        "{old_events} then {live_events}"
    );

    // The flag drops the old schema; a second rebuild drops its own at once.
    let dropped = rebuild(&world.settings, &["--drop", &old]);
    assert!(String::from_utf8_lossy(&dropped.stdout).contains(&format!("dropped schema {old}")));
    assert!(rebuild_schemas(&db).await.is_empty());
    let refused = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["rebuild", "--drop", "public"])
        .envs(world.settings.to_env())
        .output()
        .unwrap();
    assert!(!refused.status.success(), "the live schema was dropped");
    let again = rebuild(&world.settings, &["--drop-old", "--progress", "none"]);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("the old schema is dropped"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    assert!(rebuild_schemas(&db).await.is_empty());
    let after = client.own_profile(&ada_token, &last_position).await;
    assert_eq!(after.body["posts_count"], json!(posts + 1));
    db.close().await;
    running.stop().await;
    world.clean_up().await;
}
