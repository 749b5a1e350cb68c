//! Crashes and zombies: `kill -9` at the worst instants, and a second writer
//! for one aggregate. Nothing is lost, nothing is doubled, and every reader
//! keeps the same events.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use sqlx::PgPool;
use tidings::Role;
use tidings_schemas::{AggregateRef, EventEnvelope, Position};
use uuid::Uuid;

use crate::support::{eventually, Client, Socket, World, ALL_ROLES};

const PAUSED_PROJECTOR: (&str, &str) = ("TIDINGS_PAUSE_AT", "projector.before_commit");
const PAUSED_DECIDER: (&str, &str) = ("TIDINGS_PAUSE_AT", "decider.after_events");

/// Everything the projector wrote, as JSON, in a stable order.
async fn read_models(db: &PgPool) -> Value {
    let mut all = serde_json::Map::new();
    for (name, query) in [
        ("accounts", "SELECT id, username, email, display_name, bio, avatar_url, token_version, created_at, updated_at, version FROM accounts ORDER BY id"),
        ("outbox", "SELECT channel, seq, epoch, event, data FROM channel_outbox ORDER BY channel, seq"),
        ("channels", "SELECT channel, seq, epoch FROM channels ORDER BY channel"),
        ("aggregates", "SELECT aggregate_type, aggregate_id, version, last_event FROM projected_aggregates ORDER BY 1, 2"),
        ("offsets", "SELECT partition, next_offset FROM projector_offsets ORDER BY partition"),
    ] {
        let rows: Value = sqlx::query_scalar(&format!("SELECT coalesce(json_agg(t), '[]'::json) FROM ({query}) t"))
            .fetch_one(db)
            .await
            .unwrap();
        all.insert(name.into(), rows);
    }
    Value::Object(all)
}

async fn reached(db: &PgPool, position: &str) -> bool {
    let position: Position = position.parse().unwrap();
    tidings_projections::db::reached(db, &position)
        .await
        .unwrap_or(false)
}

/// Builds the read models from scratch into a fresh database, with a
/// projector in this process, and returns them once it reached `position`.
async fn rebuilt(world: &World, position: &str) -> Value {
    let mut settings = world.settings.clone();
    settings.database_url = world.another_database().await;
    let db = tidings_projections::db::connect(&settings.database_url, 2)
        .await
        .unwrap();
    tidings_projections::db::migrate(&db).await.unwrap();
    let projector = world.start_with(settings, &[Role::Projector]).await;
    eventually(
        Duration::from_secs(60),
        "the rebuild reaches the end of the log",
        || reached(&db, position),
    )
    .await;
    let models = read_models(&db).await;
    projector.stop().await;
    db.close().await;
    models
}

#[tokio::test]
async fn a_projector_killed_mid_batch_loses_and_doubles_nothing() {
    let world = World::new().await;
    let front = world.start(&[Role::Api, Role::Deciders]).await;
    let client = Client::new(&front.base);
    let projector = world.spawn("projector", &[PAUSED_PROJECTOR]);

    let (_, token, ann) = client.user("ann").await;
    let (_, _, ben) = client.user("ben").await;
    projector.wait_for_line("paused at projector.before_commit", Duration::from_secs(60));
    projector.kill();

    // Writes go on while no projector runs.
    let (_, _, cat) = client.user("cat").await;
    let reply = client
        .send(
            client
                .patch("/api/profile")
                .bearer_auth(&token)
                .json(&json!({"bio": "written while down"})),
        )
        .await;
    // Accepted, but no projector shows it yet.
    assert_eq!(reply.status, 202, "{}", reply.body);
    let (_, _, last) = client.user("dan").await;
    // Each write may land on its own partition: wait for all of them.
    let position = {
        let mut p: Position = last.parse().unwrap();
        for earlier in [&ann, &ben, &cat] {
            p.merge(&earlier.parse().unwrap());
        }
        p.merge(&reply.body["position"].as_str().unwrap().parse().unwrap());
        p.to_string()
    };

    let projector = world.spawn("projector", &[]);
    let db = world.db().await;
    eventually(
        Duration::from_secs(60),
        "the restarted projector catches up",
        || reached(&db, &position),
    )
    .await;
    let live = read_models(&db).await;
    projector.kill();

    assert_eq!(
        live["accounts"].as_array().unwrap().len(),
        4,
        "{}",
        live["accounts"]
    );
    let outbox = live["outbox"].as_array().unwrap();
    assert_eq!(
        outbox.len(),
        1,
        "one profile update, one outbox row: {outbox:?}"
    );
    assert_eq!(outbox[0]["data"]["bio"], "written while down");
    assert_eq!(
        live,
        rebuilt(&world, &position).await,
        "the read models differ from a rebuild from the log"
    );
    front.stop().await;
    world.clean_up().await;
}

#[tokio::test]
async fn a_decider_killed_between_events_and_result_answers_the_retry_with_the_first_outcome() {
    let world = World::new().await;
    let mut settings = world.settings.clone();
    settings.command_timeout_ms = 4_000;
    let front = world
        .start_with(settings, &[Role::Api, Role::Projector])
        .await;
    let client = Client::new(&front.base);
    let decider = world.spawn("deciders", &[PAUSED_DECIDER]);

    let register = || {
        client
            .post("/api/auth/register")
            .header("Idempotency-Key", "crash-retry-1")
            .json(&json!({"username": "gus", "email": "gus@example.com", "password": "correct horse battery"}))
    };
    let first = client.send(register()).await;
    assert_eq!(
        (first.status, first.body["code"].as_str()),
        (503, Some("command_timeout")),
        "{}",
        first.body
    );
    decider.wait_for_line("paused at decider.after_events", Duration::from_secs(30));
    decider.kill();

    let _decider = world.spawn("deciders", &[]);
    let mut reply = client.send(register()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while reply.status == 503 && tokio::time::Instant::now() < deadline {
        reply = client.send(register()).await;
    }
    assert_eq!(reply.status, 201, "{}", reply.body);
    let again = client.send(register()).await;
    assert_eq!(again.body["user"]["id"], reply.body["user"]["id"]);

    let types: Vec<(String, String)> = world
        .events()
        .into_iter()
        .map(|(_, _, e)| (e.event_type, e.aggregate.id))
        .collect();
    let count = |t: &str, id: &str| types.iter().filter(|(x, a)| x == t && a == id).count();
    assert_eq!(count("claim.claimed", "gus@example.com"), 1, "{types:?}");
    assert_eq!(count("claim.claimed", "gus"), 1, "{types:?}");
    assert_eq!(
        types
            .iter()
            .filter(|(t, _)| t == "account.registered")
            .count(),
        1,
        "{types:?}"
    );
    front.stop().await;
    world.clean_up().await;
}

/// A second writer for the same aggregate (a decider that lost its partition
/// and does not know yet) writes at sequences already taken. Deciders,
/// projector and a rebuild all keep the owner's events and skip the zombie's.
#[tokio::test]
async fn a_zombie_writers_events_are_skipped_by_every_reader() {
    let world = World::new().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let (id, token, _) = client.user("zoe").await;
    let patch = |body: Value| client.patch("/api/profile").bearer_auth(&token).json(&body);
    let owner = client
        .send(patch(json!({"display_name": "Owner One"})))
        .await;
    assert_eq!(owner.status, 200, "{}", owner.body);

    // The zombie decided one command into two events on the state before the
    // owner's update, at the sequences right after the registration.
    let user_id: Uuid = id.parse().unwrap();
    let (partition, registered) = world
        .events()
        .into_iter()
        .find(|(_, _, e)| e.event_type == "account.registered" && e.aggregate.id == id)
        .map(|(p, _, e)| (p, e))
        .unwrap();
    let zombie_command = Uuid::new_v4();
    let producer: FutureProducer = world.settings.kafka().producer().create().unwrap();
    let events_topic = world.settings.kafka().topics().events;
    let mut previous = registered.event_id;
    for (index, name) in ["Zombie", "Zombie Again"].into_iter().enumerate() {
        let envelope = EventEnvelope {
            event_id: tidings_schemas::envelope::event_id(zombie_command, index),
            event_type: "account.profile_updated".into(),
            version: 1,
            aggregate: AggregateRef::account(user_id),
            sequence: registered.sequence + 1 + index as u64,
            previous: Some(previous),
            occurred_at: chrono::Utc::now(),
            actor: Some(user_id),
            command_id: zombie_command,
            correlation_id: Uuid::new_v4(),
            data: json!({"display_name": name, "bio": null, "avatar_url": null, "updated_at": registered.occurred_at}),
        };
        previous = envelope.event_id;
        let payload = envelope.to_json();
        let key = envelope.aggregate.key();
        let record = FutureRecord::to(&events_topic)
            .partition(partition)
            .key(&key)
            .payload(&payload);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
    }

    // The live decider decides on the owner's state, not the zombie's.
    let after = client.send(patch(json!({"bio": "after the zombie"}))).await;
    assert_eq!(after.status, 200, "{}", after.body);
    assert_eq!(after.body["display_name"], "Owner One");
    assert_eq!(after.body["bio"], "after the zombie");
    let position = after.body["position"].as_str().unwrap().to_owned();

    // A decider rebuilt from the log agrees.
    app.stop().await;
    let app = world.start(&ALL_ROLES).await;
    let client = Client::new(&app.base);
    let rebuilt_decider = client
        .send(
            client
                .patch("/api/profile")
                .bearer_auth(&token)
                .json(&json!({"avatar_url": "https://img.example/z.png"})),
        )
        .await;
    assert_eq!(rebuilt_decider.status, 200, "{}", rebuilt_decider.body);
    assert_eq!(rebuilt_decider.body["display_name"], "Owner One");
    assert_eq!(rebuilt_decider.body["bio"], "after the zombie");
    let position = {
        let mut p: Position = position.parse().unwrap();
        p.merge(
            &rebuilt_decider.body["position"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
        );
        p.to_string()
    };

    // The projector agrees, and so does a projection rebuilt from the log.
    let db = world.db().await;
    eventually(
        Duration::from_secs(30),
        "the projector passes the last write",
        || reached(&db, &position),
    )
    .await;
    let live = read_models(&db).await;
    let account = &live["accounts"][0];
    assert_eq!(
        (
            account["display_name"].as_str(),
            account["version"].as_i64()
        ),
        (Some("Owner One"), Some(5))
    );
    let zombie_rows = live["outbox"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["data"]["display_name"]
                .as_str()
                .is_some_and(|n| n.starts_with("Zombie"))
        })
        .count();
    assert_eq!(zombie_rows, 0, "a zombie's update reached a channel");
    app.stop().await;
    assert_eq!(live, rebuilt(&world, &position).await);
    world.clean_up().await;
}

/// A decider that takes over rebuilds from the snapshot in PostgreSQL, then
/// folds only what came after it; what it knows is the same.
#[tokio::test]
async fn a_new_decider_resumes_from_the_snapshot_and_knows_what_was_decided() {
    let world = World::new().await;
    let front = world.start(&[Role::Api, Role::Projector]).await;
    let client = Client::new(&front.base);
    let snapshot_every_event = [("TIDINGS_SNAPSHOT_EVERY", "1")];
    let decider = world.spawn("deciders", &snapshot_every_event);

    let register = |name: &str| {
        client
            .post("/api/auth/register")
            .header("Idempotency-Key", format!("snap-{name}"))
            .json(&json!({"username": name, "email": format!("{name}@example.com"), "password": "correct horse battery"}))
    };
    let mut first_ids = Vec::new();
    for name in ["hal", "ivy", "jon"] {
        let reply = client.send(register(name)).await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        first_ids.push(reply.body["user"]["id"].clone());
    }
    let db = world.db().await;
    let snapshots: i64 =
        sqlx::query_scalar("SELECT count(*) FROM decider_snapshots WHERE next_offset > 0")
            .fetch_one(&db)
            .await
            .unwrap();
    assert!(snapshots > 0, "no snapshot was taken");
    decider.kill();

    let decider = world.spawn("deciders", &snapshot_every_event);
    let taken = client.register("hal2", "HAL@example.com").await;
    assert_eq!(
        (taken.status, taken.body["code"].as_str()),
        (409, Some("email_taken")),
        "{}",
        taken.body
    );
    for (name, id) in ["hal", "ivy", "jon"].into_iter().zip(first_ids) {
        let again = client.send(register(name)).await;
        assert_eq!(again.status, 201, "{}", again.body);
        assert_eq!(again.body["user"]["id"], id);
    }
    let registered = world
        .events()
        .iter()
        .filter(|(_, _, e)| e.event_type == "account.registered")
        .count();
    assert_eq!(registered, 3);

    // The partitions holding hal, ivy and jon had snapshots to start from.
    let starts: Vec<i64> = decider
        .lines_so_far("partition rebuilt")
        .iter()
        .filter_map(|line| line.split("\"from\":").nth(1))
        .filter_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        starts.iter().any(|&from| from > 0),
        "every rebuild started from the beginning: {starts:?}"
    );
    drop(decider);
    front.stop().await;
    world.clean_up().await;
}

/// SIGTERM while registrations are in flight: the HTTP server stops taking
/// connections and drains what it has (the deciders still answer), sockets
/// are told to go away, and every registration that got its 201 is in the log
/// and, once projected, in the read model.
#[tokio::test]
async fn a_graceful_shutdown_loses_no_acknowledged_command() {
    let world = World::new().await;
    let tidings = world.spawn("api,deciders,projector,realtime", &[]);
    let base = tidings.base_url();
    let client = Client::new(&base);
    let (_, token, _) = client.user("watcher").await;
    let mut socket = Socket::connect(&base, &token).await;

    let http = reqwest::Client::new();
    let attempts: Vec<_> = (0..40)
        .map(|i| {
            let (http, base) = (http.clone(), base.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(15 * i)).await;
                let reply = http
                    .post(format!("{base}/api/auth/register"))
                    .json(&json!({"username": format!("late{i}"), "email": format!("late{i}@example.com"), "password": "correct horse battery"}))
                    .send()
                    .await
                    .ok()?;
                let status = reply.status().as_u16();
                Some((status, reply.json::<Value>().await.ok()?))
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let status = tokio::task::spawn_blocking(move || tidings.terminate(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(status.success(), "tidings exited with {status}");

    let mut acknowledged = Vec::new();
    for attempt in attempts {
        if let Some((201, body)) = attempt.await.unwrap() {
            acknowledged.push(body);
        }
    }
    assert!(
        !acknowledged.is_empty(),
        "nothing was acknowledged before the signal"
    );
    assert!(
        acknowledged.len() < 40,
        "the signal came after every request; the test proves nothing"
    );

    let closed = socket.expect("closed").await;
    assert_eq!(closed["code"], 1001, "sockets are told to go away");

    let mut position = Position::default();
    for body in &acknowledged {
        position.merge(&body["position"].as_str().unwrap().parse().unwrap());
    }
    let projector = world.start(&[Role::Projector]).await;
    let db = world.db().await;
    let position = position.to_string();
    eventually(
        Duration::from_secs(60),
        "the projector passes every acknowledged write",
        || reached(&db, &position),
    )
    .await;
    for body in &acknowledged {
        let id: Uuid = body["user"]["id"].as_str().unwrap().parse().unwrap();
        let account = tidings_projections::accounts::by_id(&db, id).await.unwrap();
        assert!(account.is_some(), "acknowledged {id} is missing");
    }
    projector.stop().await;
    world.clean_up().await;
}

/// What one PATCH of the load got.
struct Attempt {
    client: usize,
    bio: String,
    started: tokio::time::Instant,
    answered: tokio::time::Instant,
    status: Option<u16>,
    position: Option<String>,
}

/// 16 clients PATCH their profiles without pause; the process serving every
/// role is killed with SIGKILL and started again at once, as a supervisor
/// would. Writes must be accepted again within seconds (the measure printed
/// is from the restart to the first accepted write started after it), `/ready`
/// must not say ready while a role owns no partition, and every acknowledged
/// write is in the log once and in the read model.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_killed_under_load_takes_writes_again_within_seconds() {
    const CLIENTS: usize = 16;
    /// The longest a restarted process may refuse writes.
    const TARGET: Duration = Duration::from_secs(15);
    let world = World::new().await;
    let roles = "api,deciders,projector,realtime";
    // The production default, not the tests' shorter one.
    let env = [("TIDINGS_KAFKA_SESSION_TIMEOUT_MS", "10000")];
    let first = tokio::task::spawn_blocking({
        let child = world.spawn(roles, &env);
        move || {
            let base = child.base_url();
            (child, base)
        }
    });
    let (child, base) = first.await.unwrap();
    let client = Client::new(&base);
    let mut users = Vec::new();
    for i in 0..CLIENTS {
        let (id, token, _) = client.user(&format!("load{i}")).await;
        users.push((id, token));
    }

    let base = std::sync::Arc::new(std::sync::RwLock::new(base));
    let stop = tokio_util::sync::CancellationToken::new();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let load: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, (_, token))| {
            let (base, stop, http, token) =
                (base.clone(), stop.clone(), http.clone(), token.clone());
            tokio::spawn(async move {
                let mut attempts = Vec::new();
                for n in 0.. {
                    if stop.is_cancelled() {
                        break;
                    }
                    let bio = format!("c{i}-{n}");
                    let url = format!("{}/api/profile", base.read().unwrap());
                    let started = tokio::time::Instant::now();
                    let reply = http
                        .patch(url)
                        .bearer_auth(&token)
                        .json(&json!({ "bio": bio }))
                        .send()
                        .await;
                    let (status, position) = match reply {
                        Ok(reply) => {
                            let status = reply.status().as_u16();
                            let body: Value = reply.json().await.unwrap_or(Value::Null);
                            (Some(status), body["position"].as_str().map(str::to_owned))
                        }
                        Err(_) => {
                            // The process is down: try again shortly.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            (None, None)
                        }
                    };
                    attempts.push(Attempt {
                        client: i,
                        bio,
                        started,
                        answered: tokio::time::Instant::now(),
                        status,
                        position,
                    });
                }
                attempts
            })
        })
        .collect();

    // Load for a while, then the crash and an immediate restart.
    tokio::time::sleep(Duration::from_secs(3)).await;
    child.kill();
    let restarted_at = tokio::time::Instant::now();
    let (child, new_base) = tokio::task::spawn_blocking({
        let child = world.spawn(roles, &env);
        move || {
            let base = child.base_url();
            (child, base)
        }
    })
    .await
    .unwrap();
    *base.write().unwrap() = new_base.clone();

    // While the load goes on, `/ready` is watched: whenever it says ready,
    // every role owns partitions.
    let client = Client::new(&new_base);
    let accepted = |a: &Attempt| matches!(a.status, Some(200 | 202));
    let watch_until = restarted_at + TARGET + Duration::from_secs(10);
    let mut ready_at = None;
    while tokio::time::Instant::now() < watch_until {
        let ready = client.send(client.get("/ready")).await;
        if ready.status == 200 {
            ready_at.get_or_insert_with(tokio::time::Instant::now);
            for role in ready.body["roles"].as_array().into_iter().flatten() {
                if role.get("partitions").is_some_and(|p| !p.is_null()) {
                    assert!(
                        role["partitions"].as_u64().unwrap() > 0,
                        "ready while a role owns nothing: {}",
                        ready.body
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let mut attempts = Vec::new();
    for task in load {
        attempts.extend(task.await.unwrap());
    }
    let first_accepted = attempts
        .iter()
        .filter(|a| a.started >= restarted_at && accepted(a))
        .map(|a| a.answered)
        .min();
    let refused_after = attempts
        .iter()
        .filter(|a| a.started >= restarted_at && a.status.is_some() && !accepted(a))
        .count();
    let recovered = first_accepted.map(|at| at - restarted_at);
    eprintln!(
        "kill -9 and restart: first write accepted {recovered:?} after the restart; /ready 200 {:?} after it; {refused_after} writes refused after the restart; {} accepted in all",
        ready_at.map(|at| at - restarted_at),
        attempts.iter().filter(|a| accepted(a)).count()
    );
    let recovered = recovered.expect("no write was accepted after the restart");
    assert!(
        recovered <= TARGET,
        "writes were refused for {recovered:?} after the restart"
    );
    assert!(ready_at.is_some(), "/ready never said ready");

    // Every acknowledged write is in the log once; no command's events twice.
    let db = world.db().await;
    let mut position = Position::default();
    for attempt in attempts.iter().filter(|a| accepted(a)) {
        position.merge(&attempt.position.as_ref().unwrap().parse().unwrap());
    }
    let position = position.to_string();
    eventually(
        Duration::from_secs(60),
        "the projector passes every acknowledged write",
        || reached(&db, &position),
    )
    .await;
    let events = world.events();
    let mut ids = std::collections::HashSet::new();
    let mut doubled = Vec::new();
    let mut bios: std::collections::HashMap<String, usize> = Default::default();
    for (partition, offset, event) in &events {
        if !ids.insert(event.event_id) {
            doubled.push((*partition, *offset, event.event_id, event.sequence));
        }
        if event.event_type == "account.profile_updated" {
            let bio = event.data["bio"].as_str().unwrap_or_default().to_owned();
            *bios.entry(bio).or_default() += 1;
        }
    }
    // Applied once: every profile update the projector admitted sent one
    // outbox row; no write shows up in two.
    let applied: Vec<(String, i64)> = sqlx::query_as(
        "SELECT data->>'bio', count(*) FROM channel_outbox WHERE event = 'profile.updated'
         GROUP BY 1 HAVING count(*) > 1",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert!(applied.is_empty(), "writes applied twice: {applied:?}");
    // Written once: a command's events are in the log once. (A copy at a
    // sequence already taken is skipped by every reader, but it still means
    // the command was decided twice.)
    assert!(
        doubled.is_empty(),
        "{} events written twice (partition, offset, id, sequence): {doubled:?}",
        doubled.len()
    );
    for attempt in attempts.iter().filter(|a| accepted(a)) {
        assert_eq!(
            bios.get(&attempt.bio),
            Some(&1),
            "client {} got {:?} for {} but the log does not have it",
            attempt.client,
            attempt.status,
            attempt.bio
        );
    }
    // The read model agrees with the log: each account at its last sequence.
    for (id, _) in &users {
        let last = events
            .iter()
            .filter(|(_, _, e)| &e.aggregate.id == id)
            .map(|(_, _, e)| e.sequence as i64)
            .max()
            .unwrap();
        let user_id: Uuid = id.parse().unwrap();
        eventually(
            Duration::from_secs(30),
            "the read model reaches the end of the log",
            || async {
                tidings_projections::accounts::by_id(&db, user_id)
                    .await
                    .unwrap()
                    .is_some_and(|a| a.version >= last)
            },
        )
        .await;
    }
    drop(child);
    world.clean_up().await;
}
