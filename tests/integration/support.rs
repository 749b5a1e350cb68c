//! The test harness: every test gets its own database, topic prefix and
//! Redis key prefix on the real PostgreSQL, Kafka (tansu) and Redis, and a
//! Tidings started on port 0 — in this process, or as `tidings` child
//! processes where a test must kill one.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use deadpool_redis::redis;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};
use tidings::settings::LimitSettings;
use tidings::{Application, Role, Settings};
use tidings_schemas::kafka::ADMIN_TIMEOUT;
use tidings_schemas::EventEnvelope;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const ALL_ROLES: [Role; 4] = [Role::Api, Role::Deciders, Role::Projector, Role::Realtime];
const ADMIN_DB: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Logs stay quiet unless `TEST_LOG=1`.
fn init_logs() {
    if std::env::var("TEST_LOG").is_ok_and(|v| v == "1") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,rdkafka=warn")
            .try_init();
    }
}

/// The isolated world of one test: database, topics, Redis prefix.
pub struct World {
    pub settings: Settings,
    pub name: String,
}

impl World {
    pub async fn new() -> World {
        init_logs();
        let name = format!("tidings_test_{}", Uuid::new_v4().simple());
        let admin = tidings_projections::db::connect(ADMIN_DB, 1)
            .await
            .expect("PostgreSQL is up (scripts/stack up)");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let mut settings = Settings::from_env();
        settings.http_addr = "127.0.0.1:0".into();
        settings.http_workers = 1;
        settings.database_url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        settings.database_pool = 8;
        settings.redis_url = "redis://127.0.0.1:6379".into();
        settings.redis_prefix = name.clone();
        settings.kafka_brokers =
            std::env::var("TIDINGS_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into());
        settings.topic_prefix = name.clone();
        settings.partitions = 4;
        settings.kafka_session_timeout_ms = 6_000;
        settings.jwt_secret = "test secret".into();
        settings.command_timeout_ms = 15_000;
        // Uploaded media go to a directory of the test's own.
        settings.media_dir = std::env::temp_dir().join(&name);
        // Every client of a test comes from 127.0.0.1: the limits are off
        // but where a test turns them on (`limits.rs`).
        settings.limits = LimitSettings::off();
        let db = tidings_projections::db::connect(&settings.database_url, 1)
            .await
            .unwrap();
        tidings_projections::db::migrate(&db).await.unwrap();
        db.close().await;
        settings
            .kafka()
            .ensure_topics()
            .await
            .expect("Kafka is up (scripts/stack up)");
        World { settings, name }
    }

    /// Starts Tidings with `roles` in this process.
    pub async fn start(&self, roles: &[Role]) -> Running {
        self.start_with(self.settings.clone(), roles).await
    }

    pub async fn start_with(&self, settings: Settings, roles: &[Role]) -> Running {
        let app = Application::build(settings, roles)
            .await
            .expect("Tidings starts");
        let port = app.port();
        let shutdown = app.shutdown_token();
        let handle = tokio::spawn(app.run_until_stopped());
        Running {
            base: port
                .map(|p| format!("http://127.0.0.1:{p}"))
                .unwrap_or_default(),
            shutdown,
            handle: Some(handle),
        }
    }

    /// Starts a `tidings serve` child process with `roles`; `env` adds to
    /// (or overrides) the world's settings.
    pub fn spawn(&self, roles: &str, env: &[(&str, &str)]) -> ChildTidings {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tidings"));
        command
            .args(["serve", "--roles", roles])
            .envs(self.settings.to_env())
            .env("RUST_LOG", "warn,tidings=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("the tidings binary starts");
        let (lines_tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = lines_tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if std::env::var("TEST_LOG").is_ok_and(|v| v == "1") {
                        eprintln!("[child] {line}");
                    }
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        ChildTidings { child, lines }
    }

    /// Every event in the world's log, partition by partition, in order.
    pub fn events(&self) -> Vec<(i32, i64, EventEnvelope)> {
        self.read_topic(&self.settings.kafka().topics().events)
            .into_iter()
            .map(|(p, o, payload)| {
                (
                    p,
                    o,
                    EventEnvelope::from_json(&payload).expect("an event envelope"),
                )
            })
            .collect()
    }

    /// Every record of a topic, as text.
    pub fn payloads(&self, topic: &str) -> Vec<String> {
        self.read_topic(topic)
            .into_iter()
            .map(|(_, _, payload)| String::from_utf8_lossy(&payload).into_owned())
            .collect()
    }

    /// How many records a topic holds.
    pub fn count(&self, topic: &str) -> usize {
        self.read_topic(topic).len()
    }

    fn read_topic(&self, topic: &str) -> Vec<(i32, i64, Vec<u8>)> {
        let consumer: BaseConsumer = self.settings.kafka().consumer(None).create().unwrap();
        let mut ends = BTreeMap::new();
        let mut list = TopicPartitionList::new();
        for partition in 0..self.settings.partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, ADMIN_TIMEOUT)
                .unwrap();
            if high > low {
                ends.insert(partition, high);
                list.add_partition_offset(topic, partition, Offset::Offset(low))
                    .unwrap();
            }
        }
        let mut records = Vec::new();
        if ends.is_empty() {
            return records;
        }
        consumer.assign(&list).unwrap();
        // tansu's memory engine reports the high watermark of a partition
        // as the base offset of its last batch + 1, short of the batch's
        // other records: read past the watermarks until the topic is quiet.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "reading {topic} timed out"
            );
            let Some(message) = consumer.poll(Duration::from_millis(300)) else {
                if ends
                    .iter()
                    .all(|(p, end)| next.get(p).is_some_and(|n| n >= end))
                {
                    break;
                }
                continue;
            };
            let message = message.unwrap();
            next.insert(message.partition(), message.offset() + 1);
            records.push((
                message.partition(),
                message.offset(),
                message.payload().unwrap_or_default().to_vec(),
            ));
        }
        records.sort_by_key(|(p, o, _)| (*p, *o));
        records
    }

    pub async fn db(&self) -> sqlx::PgPool {
        tidings_projections::db::connect(&self.settings.database_url, 2)
            .await
            .unwrap()
    }

    /// A fresh database in the same world, for a rebuild from the log.
    pub async fn another_database(&self) -> String {
        let name = format!("{}_b", self.name);
        let admin = tidings_projections::db::connect(ADMIN_DB, 1).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&admin)
            .await
            .unwrap();
        format!("postgres://postgres@127.0.0.1:5432/{name}")
    }

    /// Checks every event the test caused against the JSON Schemas, then
    /// drops what the test made: databases and Redis keys. Topics stay: the
    /// test run's broker is in memory and goes with the run, and deleting a
    /// topic under a consumer that is still closing breaks tansu 0.6.
    pub async fn clean_up(self) {
        assert_events_match_schemas(&self.events());
        self.check_records_and_drop().await;
    }

    /// Drops what the test made without checking the events against the
    /// schemas: for a test that wrote an event no schema describes.
    pub async fn clean_up_after_foreign_events(self) {
        self.check_records_and_drop().await;
    }

    async fn check_records_and_drop(self) {
        let topics = self.settings.kafka().topics();
        for (topic, schema) in [
            (&topics.commands, "command-envelope.v2.json"),
            (&topics.results, "command-result.v1.json"),
            (&topics.updates, "update.v1.json"),
        ] {
            let schema = tidings_schemas::json::file(schema).unwrap();
            for (_, _, payload) in self.read_topic(topic) {
                let value: Value = serde_json::from_slice(&payload).expect("records are JSON");
                assert_matches(schema, &value, topic);
                // A command's payload, by its type.
                if let Some(command_type) = value["command"]["type"].as_str() {
                    let path = format!("commands/{command_type}.v1.json");
                    let payload_schema = tidings_schemas::json::file(&path)
                        .unwrap_or_else(|| panic!("{command_type} has no schema {path}"));
                    assert_matches(payload_schema, &value["command"]["data"], command_type);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.settings.media_dir);
        let admin = tidings_projections::db::connect(ADMIN_DB, 1).await.unwrap();
        for db in [self.name.clone(), format!("{}_b", self.name)] {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                .execute(&admin)
                .await;
        }
        if let Ok(client) = redis::Client::open(self.settings.redis_url.as_str()) {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{}:*", self.name))
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
                }
            }
        }
    }
}

/// Tidings running in this process.
pub struct Running {
    pub base: String,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), handle).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A `tidings` child process; killed with SIGKILL when dropped.
pub struct ChildTidings {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl ChildTidings {
    /// Waits for a line of output containing `needle`; returns it.
    pub fn wait_for_line(&self, needle: &str, within: Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("tidings exited before printing {needle:?}")
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("no line with {needle:?} within {within:?}")
                }
            }
        }
    }

    /// The lines printed so far that contain `needle`.
    pub fn lines_so_far(&self, needle: &str) -> Vec<String> {
        std::iter::from_fn(|| self.lines.recv_timeout(Duration::from_millis(200)).ok())
            .filter(|line| line.contains(needle))
            .collect()
    }

    /// The process id, to read its memory in `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The base URL the child printed when it came up.
    pub fn base_url(&self) -> String {
        let line = self.wait_for_line("Tidings is up", Duration::from_secs(60));
        let rest = line.split("REST ").nth(1).unwrap();
        rest.split("/api").next().unwrap().to_owned()
    }

    /// SIGTERM, then waits for the process to end; its exit status.
    pub fn terminate(mut self, within: Duration) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no exit within {within:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9`.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ChildTidings {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A REST client of one Tidings.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Client {
    pub fn new(base: &str) -> Self {
        Client {
            base: base.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("Tidings answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{path}", self.base))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{path}", self.base))
    }

    pub fn patch(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.patch(format!("{}{path}", self.base))
    }

    pub fn put(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.put(format!("{}{path}", self.base))
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.delete(format!("{}{path}", self.base))
    }

    pub async fn register(&self, username: &str, email: &str) -> Reply {
        self.send(self.post("/api/auth/register").json(&json!({
            "username": username, "email": email, "password": "correct horse battery"
        })))
        .await
    }

    /// `GET /api/profile` as the token's user, once the read model has
    /// reached `position`.
    pub async fn own_profile(&self, token: &str, position: &str) -> Reply {
        self.send(
            self.get("/api/profile")
                .bearer_auth(token)
                .header("X-Min-Position", position),
        )
        .await
    }

    /// Registers and returns `(user id, token, position)`; panics unless 201.
    pub async fn user(&self, username: &str) -> (String, String, String) {
        let reply = self
            .register(username, &format!("{username}@example.com"))
            .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        (
            reply.body["user"]["id"].as_str().unwrap().to_owned(),
            reply.body["token"].as_str().unwrap().to_owned(),
            reply.body["position"].as_str().unwrap().to_owned(),
        )
    }
}

/// A WebSocket client of the gateway. Every text frame it receives is
/// checked against `schemas/json/ws/server-frame.v1.json`.
pub struct Socket {
    stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    frames: jsonschema::Validator,
}

impl Socket {
    fn url(base: &str, token: &str) -> String {
        let base = base
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1);
        format!("{base}/ws?token={token}")
    }

    fn wrap(
        stream: tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> Socket {
        let schema = tidings_schemas::json::file("ws/server-frame.v1.json").unwrap();
        let frames = jsonschema::validator_for(&serde_json::from_str(schema).unwrap()).unwrap();
        Socket { stream, frames }
    }

    pub async fn connect(base: &str, token: &str) -> Socket {
        let (stream, _) = tokio_tungstenite::connect_async(Self::url(base, token))
            .await
            .expect("WebSocket connects");
        Self::wrap(stream)
    }

    pub async fn connect_tls(
        base: &str,
        token: &str,
        connector: tokio_tungstenite::Connector,
    ) -> Socket {
        let (stream, _) = tokio_tungstenite::connect_async_tls_with_config(
            Self::url(base, token),
            None,
            false,
            Some(connector),
        )
        .await
        .expect("WSS connects");
        Self::wrap(stream)
    }

    pub async fn send(&mut self, frame: Value) {
        use futures_util::SinkExt;
        self.stream
            .send(tokio_tungstenite::tungstenite::Message::text(
                frame.to_string(),
            ))
            .await
            .unwrap();
    }

    /// The next frame, or `None` if none comes within `within`. The end of
    /// the socket reads as `{"type": "closed", "code": <close code>}`.
    pub async fn next_frame(&mut self, within: Duration) -> Option<Value> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.stream.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    let frame: Value = serde_json::from_str(&text).expect("a frame is JSON");
                    let errors: Vec<String> = self
                        .frames
                        .iter_errors(&frame)
                        .map(|e| e.to_string())
                        .collect();
                    assert!(
                        errors.is_empty(),
                        "{frame} breaks the frame schema: {errors:?}"
                    );
                    return Some(frame);
                }
                Ok(Some(Ok(Message::Close(close)))) => {
                    return Some(
                        json!({"type": "closed", "code": close.map(|c| u16::from(c.code))}),
                    )
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) | Ok(None) => return Some(json!({"type": "closed"})),
                Err(_) => return None,
            }
        }
    }

    /// Reads frames until one of type `kind` arrives.
    pub async fn expect(&mut self, kind: &str) -> Value {
        loop {
            let frame = self
                .next_frame(Duration::from_secs(15))
                .await
                .unwrap_or_else(|| panic!("no {kind} frame"));
            if frame["type"] == kind {
                return frame;
            }
            // A closed stream says so at every read: waiting on would spin.
            assert_ne!(frame["type"], "closed", "closed before a {kind} frame");
        }
    }
}

/// Checks `value` against a JSON Schema of `schemas/json/`.
fn assert_matches(schema: &str, value: &Value, what: &str) {
    let validator = jsonschema::validator_for(&serde_json::from_str(schema).unwrap()).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{what} breaks its schema: {errors:?}\n{value}"
    );
}

/// Validates events against the JSON Schemas under `schemas/json/`: the
/// envelope, and the data by type and version.
fn assert_events_match_schemas(events: &[(i32, i64, EventEnvelope)]) {
    let envelope = jsonschema::validator_for(
        &serde_json::from_str(tidings_schemas::json::EVENT_ENVELOPE).unwrap(),
    )
    .unwrap();
    for (_, _, event) in events {
        let value = serde_json::to_value(event).unwrap();
        let errors: Vec<String> = envelope
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{} breaks the envelope schema: {errors:?}",
            event.event_type
        );
        let schema = tidings_schemas::json::event_data(&event.event_type, event.version)
            .unwrap_or_else(|| panic!("no schema for {} v{}", event.event_type, event.version));
        let data = jsonschema::validator_for(&serde_json::from_str(schema).unwrap()).unwrap();
        let errors: Vec<String> = data
            .iter_errors(&event.data)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{} v{} breaks its schema: {errors:?}",
            event.event_type,
            event.version
        );
    }
}

/// Waits until `check` holds, polling; panics after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl World {
    /// A Redis URL of a user of this world's keys with the ACL `rules`
    /// (`-@write`…) on top of everything else: a real Redis that refuses
    /// what the test says. The rules can be changed again while connected.
    pub async fn redis_user(&self, rules: &[&str]) -> String {
        let client = redis::Client::open(self.settings.redis_url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut command = redis::cmd("ACL");
        command
            .arg("SETUSER")
            .arg(&self.name)
            .arg("reset")
            .arg("on")
            .arg(">test-password")
            .arg("~*")
            .arg("+@all");
        for rule in rules {
            command.arg(*rule);
        }
        let () = command.query_async(&mut conn).await.unwrap();
        format!("redis://{}:test-password@127.0.0.1:6379", self.name)
    }

    /// Removes the user of [`World::redis_user`].
    pub async fn drop_redis_user(&self) {
        let client = redis::Client::open(self.settings.redis_url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: i64 = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&self.name)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    /// The Redis key of an account's cache entry, and whether it exists.
    pub async fn cached_account(
        &self,
        id: &str,
    ) -> Option<std::collections::HashMap<String, String>> {
        let client = redis::Client::open(self.settings.redis_url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let entry: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("{}:account:{id}", self.settings.redis_prefix))
            .query_async(&mut conn)
            .await
            .unwrap();
        (!entry.is_empty()).then_some(entry)
    }

    /// How many members the sorted set at `key` has (0 when it does not
    /// exist).
    pub async fn redis_zcard(&self, key: &str) -> i64 {
        let client = redis::Client::open(self.settings.redis_url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("ZCARD")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    /// Deletes the key (a test that takes a cache away).
    pub async fn redis_del(&self, key: &str) {
        let client = redis::Client::open(self.settings.redis_url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: i64 = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    /// The seconds an account's cache entry has left to live.
    pub async fn cached_account_ttl(&self, id: &str) -> i64 {
        let client = redis::Client::open(self.settings.redis_url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("TTL")
            .arg(format!("{}:account:{id}", self.settings.redis_prefix))
            .query_async(&mut conn)
            .await
            .unwrap()
    }
}
