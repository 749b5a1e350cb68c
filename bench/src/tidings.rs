//! Tidings as the bench sees it: an HTTP client of its API, and, when the
//! bench is given the binary, a `tidings serve` process of its own with its
//! own database, topic prefix and Redis prefix, removed when it stops.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use serde_json::{json, Value};

/// The password of every user the bench registers.
pub const PASSWORD: &str = "correct horse battery";
/// The PostgreSQL the stack runs (trust auth on 127.0.0.1).
pub const ADMIN_DB: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// How long a request may take before it counts as failed: far past any
/// target, short enough that a stuck run ends.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A registration refused with 503 `overloaded` is retried this many times
/// at most (each after its `Retry-After`): a client that gives up.
const MAX_REGISTER_TRIES: usize = 120;

/// Which storage engine the broker behind a Tidings uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// tansu's SQLite engine (the stack's broker on 9092).
    Durable,
    /// tansu's memory engine (the test broker on 19092).
    Memory,
}

impl Engine {
    pub fn label(self) -> &'static str {
        match self {
            Engine::Durable => "durable",
            Engine::Memory => "memory",
        }
    }
}

/// A registered user.
#[derive(Debug, Clone)]
pub struct User {
    pub token: String,
}

/// One answer, whatever its status.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub body: String,
}

impl Answer {
    /// 503 `overloaded`: refused before anything was done.
    pub fn overloaded(&self) -> bool {
        self.status == 503 && self.body.contains("\"overloaded\"")
    }

    /// 503 `database_unavailable`: PostgreSQL could not be asked (the
    /// stack's is shared, and its connections may all be taken); to retry
    /// after `Retry-After`.
    pub fn database_unavailable(&self) -> bool {
        self.status == 503 && self.body.contains("\"database_unavailable\"")
    }
}

/// A client of one Tidings' REST API.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    http: reqwest::Client,
}

/// A registration that went through, with what it took.
pub struct Registration {
    pub user: User,
    /// From the first try to the 201.
    pub took: Duration,
    /// Tries refused with 503 `overloaded` before the 201.
    pub refused: usize,
}

/// What a request that brought no answer met, as the scenarios count it.
pub fn unanswered(error: &anyhow::Error) -> String {
    let why = match error.downcast_ref::<reqwest::Error>() {
        Some(e) if e.is_timeout() => "timed out",
        Some(e) if e.is_connect() => "no connection",
        Some(_) => "connection lost",
        None => "unreadable",
    };
    format!("no answer ({why})")
}

impl Api {
    pub fn new(base: &str) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true)
            // Idle connections are kept for the next request of the same
            // worker: a fresh TCP handshake per write would be measured too.
            // Not past Tidings' keep-alive (actix's 5 s): a connection the
            // server closed just as it is taken from the pool fails a POST,
            // which is not retried.
            .pool_idle_timeout(Duration::from_secs(4))
            .build()?;
        Ok(Api {
            base: base.trim_end_matches('/').to_owned(),
            http,
        })
    }

    pub fn port(&self) -> u16 {
        self.base
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap_or(80)
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!(
            "{}/ws?token={token}",
            self.base.replacen("http://", "ws://", 1)
        )
    }

    async fn answer(response: reqwest::Response) -> anyhow::Result<Answer> {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = response.text().await?;
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }

    pub async fn register_once(&self, username: &str, key: &str) -> anyhow::Result<Answer> {
        let response = self
            .http
            .post(format!("{}/api/auth/register", self.base))
            .header("Idempotency-Key", key)
            .json(&json!({
                "username": username,
                "email": format!("{username}@bench.example.com"),
                "password": PASSWORD,
            }))
            .send()
            .await?;
        Self::answer(response).await
    }

    /// Registers `username` under one `Idempotency-Key`, retrying what is
    /// refused with 503 `overloaded` (or `database_unavailable`) after its
    /// `Retry-After` (1 s without one). Any other answer ends it: a `command_timeout` is counted, not
    /// retried, since a retry of it hashes the password again (answers that
    /// say "not now" are not kept) and, 1,000 clients at once, such retries
    /// take the hashing capacity from the registrations that could finish
    /// (measured: 115 of 1,000 in 385 s, against 745 in 76 s without).
    pub async fn register(&self, username: &str) -> anyhow::Result<Registration> {
        let started = Instant::now();
        let key = uuid::Uuid::new_v4().to_string();
        let mut refused = 0;
        loop {
            let answer = self.register_once(username, &key).await?;
            if answer.status == 201 {
                let body: Value = serde_json::from_str(&answer.body)?;
                let user = User {
                    token: body["token"]
                        .as_str()
                        .ok_or_else(|| anyhow!("no token in {body}"))?
                        .to_owned(),
                };
                return Ok(Registration {
                    user,
                    took: started.elapsed(),
                    refused,
                });
            }
            if !(answer.overloaded() || answer.database_unavailable())
                || refused >= MAX_REGISTER_TRIES
            {
                bail!(
                    "register {username}: {} {}",
                    answer.status,
                    answer.body.chars().take(300).collect::<String>()
                );
            }
            refused += 1;
            let wait = answer.retry_after.unwrap_or(1);
            tokio::time::sleep(Duration::from_secs(wait)).await;
        }
    }

    /// Any request as `token`'s user, with a JSON body or none: the answer,
    /// whatever its status, and how long it took.
    pub async fn call(
        &self,
        method: reqwest::Method,
        token: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(Answer, Duration)> {
        let started = Instant::now();
        let request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        let request = match body {
            Some(body) => request.json(body),
            None => request,
        };
        let answer = Self::answer(request.send().await?).await?;
        Ok((answer, started.elapsed()))
    }

    /// `call`, where anything but a 2xx is an error; the body as JSON.
    pub async fn ok(
        &self,
        method: reqwest::Method,
        token: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let (answer, _) = self.call(method.clone(), token, path, body).await?;
        if !(200..300).contains(&answer.status) {
            bail!(
                "{method} {path}: {} {}",
                answer.status,
                answer.body.chars().take(300).collect::<String>()
            );
        }
        Ok(serde_json::from_str(&answer.body).unwrap_or(Value::Null))
    }

    /// `PATCH /api/profile {bio}`: its status, and the `code` of a
    /// problem answer.
    pub async fn patch_bio(&self, token: &str, bio: &str) -> anyhow::Result<(u16, String)> {
        let response = self
            .http
            .patch(format!("{}/api/profile", self.base))
            .bearer_auth(token)
            .json(&json!({ "bio": bio }))
            .send()
            .await?;
        let status = response.status().as_u16();
        // The body is read to the end so the connection goes back to the pool.
        let body = response.bytes().await?;
        let code = if status >= 400 {
            serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|b| b["code"].as_str().map(str::to_owned))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok((status, code))
    }

    /// A write as the scenarios count it: `Ok(())` when Tidings accepted it
    /// (200, or 202 when its projector lags), else what it answered.
    pub async fn write(&self, token: &str, bio: &str) -> Result<(), String> {
        match self.patch_bio(token, bio).await {
            Ok((200 | 202, _)) => Ok(()),
            Ok((status, code)) if code.is_empty() => Err(status.to_string()),
            Ok((status, code)) => Err(format!("{status} {code}")),
            Err(error) => Err(unanswered(&error)),
        }
    }

    /// Commands not decided yet and events not projected yet, summed over
    /// the partitions, from `/metrics` (`tidings_decider_lag_commands`,
    /// `tidings_projector_lag_events`); `None` if it cannot be read.
    pub async fn lag(&self) -> Option<(f64, f64)> {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let sum = |metric: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with('{'))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .filter(|v| *v > 0.0)
                .sum()
        };
        Some((
            sum("tidings_decider_lag_commands"),
            sum("tidings_projector_lag_events"),
        ))
    }

    /// Whether `/ready` says 200.
    pub async fn ready(&self) -> bool {
        match self.http.get(format!("{}/ready", self.base)).send().await {
            Ok(response) => response.status().is_success(),
            Err(_) => false,
        }
    }

    /// Waits until `/ready` says 200.
    pub async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while !self.ready().await {
            if Instant::now() > deadline {
                bail!("{} was not ready within {within:?}", self.base);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }
}

/// The Tidings a scenario runs against.
#[derive(Clone)]
pub struct Target {
    pub engine: Engine,
    pub api: Api,
    pub pid: u32,
    /// `host:port` of its broker, and the broker's pid.
    pub broker: String,
    pub broker_pid: u32,
    pub topic_prefix: String,
}

/// A `tidings serve` process the bench started, with everything it made.
pub struct Managed {
    child: tokio::process::Child,
    pub name: String,
    pub base: String,
    pub log: PathBuf,
}

impl Managed {
    /// Creates a database, the topics (prefix = database = Redis prefix =
    /// `name`, fresh) and starts `bin serve` with every role on a free port
    /// of 127.0.0.1 against `broker`; waits until it is ready.
    pub async fn start(bin: &Path, broker: &str, name: &str) -> anyhow::Result<Managed> {
        Self::prepare(bin, broker, name).await?;
        Self::spawn(bin, broker, name, None, name, &[]).await
    }

    /// Creates the database of `name` and its topics (fresh), with
    /// `tidings migrate` and `tidings topics`.
    pub async fn prepare(bin: &Path, broker: &str, name: &str) -> anyhow::Result<()> {
        let admin = sqlx::PgPool::connect(ADMIN_DB)
            .await
            .context("PostgreSQL on 127.0.0.1:5432 (scripts/stack up)")?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&admin)
            .await?;
        admin.close().await;
        let env = Self::env(name, broker, name);
        for step in ["migrate", "topics"] {
            let out = tokio::process::Command::new(bin)
                .arg(step)
                .env_remove("TIDINGS_CONFIG")
                .env_remove("TIDINGS_KAFKA_SESSION_TIMEOUT_MS")
                .envs(env.iter().map(|(k, v)| (k, v)))
                .output()
                .await
                .with_context(|| format!("running {} {step}", bin.display()))?;
            if !out.status.success() {
                bail!(
                    "tidings {step} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(())
    }

    /// Starts `bin serve` on a free port of 127.0.0.1 against the database,
    /// topics and Redis prefix of `name` (made by [`Managed::prepare`]):
    /// every role, or `roles` (`api,deciders,projector`, `realtime`…), as
    /// `instance` (its `TIDINGS_INSTANCE_ID` and the name of its log), with
    /// `extra` environment on top. Waits until it listens, and, when it
    /// serves the API, until `/ready` says 200 (a process without the API
    /// has no `/ready`).
    pub async fn spawn(
        bin: &Path,
        broker: &str,
        name: &str,
        roles: Option<&str>,
        instance: &str,
        extra: &[(&'static str, String)],
    ) -> anyhow::Result<Managed> {
        let log = std::env::temp_dir().join(format!("{instance}.log"));
        let file = std::fs::File::create(&log)?;
        let mut command = tokio::process::Command::new(bin);
        command.arg("serve");
        if let Some(roles) = roles {
            command.arg("--roles").arg(roles);
        }
        let child = command
            .env_remove("TIDINGS_CONFIG")
            .env_remove("TIDINGS_KAFKA_SESSION_TIMEOUT_MS")
            .envs(
                Self::env(name, broker, instance)
                    .iter()
                    .map(|(k, v)| (k, v)),
            )
            .envs(extra.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} serve", bin.display()))?;
        let mut managed = Managed {
            child,
            name: name.to_owned(),
            base: String::new(),
            log,
        };
        managed.base = managed.wait_until_up(Duration::from_secs(60)).await?;
        if roles.is_none_or(|r| r.split(',').any(|r| r.trim() == "api")) {
            Api::new(&managed.base)?
                .wait_ready(Duration::from_secs(60))
                .await?;
        }
        Ok(managed)
    }

    fn env(name: &str, broker: &str, instance: &str) -> Vec<(&'static str, String)> {
        vec![
            ("TIDINGS_HTTP_ADDR", "127.0.0.1:0".into()),
            (
                "TIDINGS_DATABASE_URL",
                format!("postgres://postgres@127.0.0.1:5432/{name}"),
            ),
            ("TIDINGS_REDIS_URL", REDIS_URL.into()),
            ("TIDINGS_REDIS_PREFIX", name.into()),
            ("TIDINGS_TOPIC_PREFIX", name.into()),
            ("TIDINGS_KAFKA_BROKERS", broker.into()),
            // Tidings' own session timeout and static membership, as
            // `scripts/run` runs it: the tests' 6 s (dynamic membership)
            // joins faster, but an overloaded broker that answers a
            // heartbeat late makes the group rebalance mid-run. Each
            // process of one database has a name of its own.
            ("TIDINGS_INSTANCE_ID", instance.into()),
            // The same for every process of one database (their tokens
            // are each other's); `name` holds the run's random id.
            ("TIDINGS_JWT_SECRET", format!("bench secret of {name}")),
            // Every client of the bench comes from 127.0.0.1: limits
            // meant per user and address would measure themselves.
            ("TIDINGS_LIMIT_USER_WRITES", "off".into()),
            ("TIDINGS_LIMIT_IP_WRITES", "off".into()),
            ("TIDINGS_LIMIT_IP_LOGINS", "off".into()),
            ("TIDINGS_LIMIT_ACCOUNT_LOGINS", "off".into()),
            ("TIDINGS_LIMIT_IP_CONNECTS", "off".into()),
            // Logs cost CPU on the same cores: warnings only.
            ("RUST_LOG", "warn".into()),
        ]
    }

    /// The base URL from the line Tidings prints once it listens.
    async fn wait_until_up(&mut self, within: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + within;
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(line) = log.lines().find(|l| l.contains("Tidings is up")) {
                let rest = line
                    .split("REST ")
                    .nth(1)
                    .ok_or_else(|| anyhow!("unexpected line: {line}"))?;
                return Ok(rest.split("/api").next().unwrap_or(rest).to_owned());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("tidings exited ({status}); its log:\n{log}");
            }
            if Instant::now() > deadline {
                bail!(
                    "tidings did not come up within {within:?}; log: {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// SIGTERM (the graceful shutdown), SIGKILL past 20 s; then drops its
    /// database and Redis keys. Its topics stay: deleting a topic under a
    /// consumer that is still closing breaks tansu 0.6's SQLite engine.
    pub async fn stop(self) -> anyhow::Result<()> {
        let name = self.name.clone();
        let ended = self.halt().await;
        drop_database(&name).await?;
        delete_redis_keys(&name).await?;
        ended
    }

    /// SIGTERM (the graceful shutdown), SIGKILL past 20 s; nothing removed
    /// (other processes may share its database). An error if it had ended
    /// by itself before (its log is then kept, else removed).
    pub async fn halt(mut self) -> anyhow::Result<()> {
        // A process that ended by itself keeps its log for whoever looks
        // into why.
        let ended = self.child.try_wait()?;
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        match ended {
            Some(status) => bail!(
                "tidings had ended by itself ({status}) before the bench stopped it; its log: {}",
                self.log.display()
            ),
            None => {
                let _ = std::fs::remove_file(&self.log);
                Ok(())
            }
        }
    }
}

/// What an interrupted run leaves: the databases and Redis keys named
/// `tidings_bench_<run>_…` (its Tidings and scratch databases; topics stay,
/// as after any run). Its child processes are killed when dropped.
pub async fn clean_up_run(run: &str) -> anyhow::Result<()> {
    let prefix = format!("tidings_bench_{run}_");
    let admin = sqlx::PgPool::connect(ADMIN_DB).await?;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
            .bind(&prefix)
            .fetch_all(&admin)
            .await?;
    admin.close().await;
    for name in names {
        drop_database(&name).await?;
    }
    delete_redis_keys(&format!("{prefix}*")).await
}

pub async fn drop_database(name: &str) -> anyhow::Result<()> {
    let admin = sqlx::PgPool::connect(ADMIN_DB).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&admin)
        .await?;
    admin.close().await;
    Ok(())
}

/// Deletes the Redis keys under `prefix:`.
pub async fn delete_redis_keys(prefix: &str) -> anyhow::Result<()> {
    use deadpool_redis::redis;
    let client = redis::Client::open(REDIS_URL)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let () = redis::cmd("DEL").arg(keys).query_async(&mut conn).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}
