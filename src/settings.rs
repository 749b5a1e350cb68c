//! Typed configuration, from `TIDINGS_*` environment variables or flags.
//! Secrets are never printed: `Debug` masks them.

use std::fmt;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tidings_http::limits::{LimitSpec, Limiter, Limits};
use tidings_schemas::kafka::KafkaSettings;

/// The development JWT secret: fine on a laptop, refused in production.
pub const DEV_JWT_SECRET: &str = "tidings-development-secret-change-me";
/// The shortest JWT secret production accepts (HS256 wants 256 bits).
const MIN_PRODUCTION_SECRET: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Environment {
    Development,
    /// Refuses to start with the development JWT secret or a short one.
    Production,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum Role {
    /// REST API (and the command bus it writes through).
    Api,
    /// Deciders: commands → events, single writer per partition.
    Deciders,
    /// Projector and outbox relay: events → read models, caches, updates.
    Projector,
    /// WebSocket gateway.
    Realtime,
    /// Webhook dispatcher: events → deliveries to the endpoints users
    /// registered (its own consumer group).
    Webhooks,
}

#[derive(Clone, Args)]
pub struct Settings {
    /// `production` refuses unsafe defaults.
    #[arg(
        long = "env",
        env = "TIDINGS_ENV",
        value_enum,
        default_value = "development"
    )]
    pub environment: Environment,
    /// Where the HTTP server (REST and WebSocket) listens.
    #[arg(long, env = "TIDINGS_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: String,
    /// A PEM certificate chain: with `--tls-key`, Tidings serves HTTPS and WSS.
    #[arg(long, env = "TIDINGS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, env = "TIDINGS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// HTTP worker threads.
    #[arg(long, env = "TIDINGS_HTTP_WORKERS", default_value_t = 2)]
    pub http_workers: usize,
    #[arg(
        long,
        env = "TIDINGS_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/tidings"
    )]
    pub database_url: String,
    #[arg(long, env = "TIDINGS_DATABASE_POOL", default_value_t = 16)]
    pub database_pool: u32,
    #[arg(
        long,
        env = "TIDINGS_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// Prefix of every Redis key.
    #[arg(long, env = "TIDINGS_REDIS_PREFIX", default_value = "tidings")]
    pub redis_prefix: String,
    #[arg(long, env = "TIDINGS_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Prefix of the four topics (`<prefix>.commands`…).
    #[arg(long, env = "TIDINGS_TOPIC_PREFIX", default_value = "tidings")]
    pub topic_prefix: String,
    /// Partitions of every topic; fixed once the topics exist.
    #[arg(long, env = "TIDINGS_PARTITIONS", default_value_t = 4)]
    pub partitions: i32,
    #[arg(
        long,
        env = "TIDINGS_KAFKA_SESSION_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub kafka_session_timeout_ms: u32,
    /// How long the broker may hold a fetch of a consumer that follows a
    /// topic (`fetch.wait.max.ms`). tansu holds every fetch this long before
    /// it answers, so a record that crosses a topic between processes waits
    /// about this; between roles of one process the shortcuts skip the wait.
    /// Each parked fetch costs the broker CPU while idle: a longer wait costs
    /// less (the README's Performance section has the figures).
    #[arg(long, env = "TIDINGS_KAFKA_FETCH_WAIT_MS", default_value_t = 500)]
    pub kafka_fetch_wait_ms: u32,
    /// The fetch wait of the gateway's follower of `<prefix>.updates` alone
    /// (default: `TIDINGS_KAFKA_FETCH_WAIT_MS`): what an update crossing
    /// from a projector in another process waits on tansu. Measured: 10 ms
    /// brings the hop from ~440 ms to ~12 ms, and costs tansu about a third
    /// of a core while idle (README, Performance).
    #[arg(long, env = "TIDINGS_WS_FETCH_WAIT_MS")]
    pub ws_fetch_wait_ms: Option<u32>,
    /// How long a producer holds a record to send it with others
    /// (`linger.ms`, fractions allowed). Each hop of a lone write waits
    /// about this; more batches more records per request under load.
    #[arg(long, env = "TIDINGS_KAFKA_LINGER_MS", default_value_t = tidings_schemas::kafka::DEFAULT_LINGER_MS)]
    pub kafka_linger_ms: f64,
    /// This process's name in its consumer groups (Kafka static membership,
    /// `group.instance.id`): a process restarted under the same name takes
    /// its partitions back at once, where a new name waits for the dead one
    /// to expire (and tansu 0.6 may never hand them over). Default: the host
    /// name and the HTTP port. Two processes running the same roles on one
    /// host must have names of their own. Used with a session timeout of
    /// 8 s or more only (tansu 0.6 takes about 6 s to admit a static member).
    #[arg(long, env = "TIDINGS_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// HS256 secret of the JWTs.
    #[arg(long, env = "TIDINGS_JWT_SECRET", default_value = DEV_JWT_SECRET, hide_default_value = true)]
    pub jwt_secret: String,
    #[arg(long, env = "TIDINGS_TOKEN_TTL_SECS", default_value_t = 3600)]
    pub token_ttl_secs: u64,
    /// How long a write waits for its command's outcome.
    #[arg(long, env = "TIDINGS_COMMAND_TIMEOUT_MS", default_value_t = 10_000)]
    pub command_timeout_ms: u64,
    /// How long a read waits for `X-Min-Position`.
    #[arg(long, env = "TIDINGS_MIN_POSITION_WAIT_MS", default_value_t = 5_000)]
    pub min_position_wait_ms: u64,
    /// How long a registration may stay unfinished before the sweeper
    /// abandons it and frees its email and username. Its three steps take at
    /// most three command timeouts; a registration answered 503 midway keeps
    /// its email and username no longer than this (a retry with the same
    /// `Idempotency-Key` finishes it at once).
    #[arg(long, env = "TIDINGS_REGISTRATION_TIMEOUT_SECS", default_value_t = 60)]
    pub registration_timeout_secs: u64,
    /// The directory of the media store when `TIDINGS_MEDIA_STORE` is unset.
    #[arg(long, env = "TIDINGS_MEDIA_DIR", default_value = "media")]
    pub media_dir: std::path::PathBuf,
    /// An S3-compatible media store, `s3://bucket[/prefix]`, configured by
    /// the `AWS_*` variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_REGION`, `AWS_ENDPOINT` for a store other than AWS…); unset:
    /// the directory `TIDINGS_MEDIA_DIR`.
    #[arg(long, env = "TIDINGS_MEDIA_STORE")]
    pub media_store: Option<String>,
    /// The largest image uploaded, in bytes (10 MiB).
    #[arg(long, env = "TIDINGS_MEDIA_IMAGE_MAX_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub media_image_max_bytes: u64,
    /// The largest video uploaded, in bytes (50 MiB).
    #[arg(long, env = "TIDINGS_MEDIA_VIDEO_MAX_BYTES", default_value_t = 50 * 1024 * 1024)]
    pub media_video_max_bytes: u64,
    /// The widest and tallest image decoded, in pixels.
    #[arg(long, env = "TIDINGS_MEDIA_MAX_DIMENSION", default_value_t = 8192)]
    pub media_max_dimension: u32,
    /// The most memory decoding one image may take, in bytes (128 MiB: an
    /// 8192×4096 RGBA image); a small file that decodes to more is refused.
    #[arg(long, env = "TIDINGS_MEDIA_MAX_DECODE_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub media_max_decode_bytes: u64,
    /// How long an uploaded media item may stay unused by any post before
    /// the media sweeper deletes it.
    #[arg(long, env = "TIDINGS_MEDIA_UNUSED_SECS", default_value_t = 24 * 60 * 60)]
    pub media_unused_secs: u64,
    /// Events folded on a partition between two decider snapshots.
    #[arg(long, env = "TIDINGS_SNAPSHOT_EVERY", default_value_t = 1_000)]
    pub snapshot_every: u64,
    /// Frames a client may send per second on one WebSocket, sustained (three
    /// times as many at once after a quiet spell); past them the socket
    /// closes with 4008.
    #[arg(
        long,
        env = "TIDINGS_WS_FRAMES_PER_SECOND",
        default_value_t = 20,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub ws_frames_per_second: u32,
    /// Bytes of frames one WebSocket may have waiting for its client. Past
    /// half of them typing frames are dropped; counts and presence keep their
    /// latest value; a durable frame past all of them closes the socket with
    /// 4009 (the client resumes with `since`).
    #[arg(
        long,
        env = "TIDINGS_WS_QUEUE_BYTES",
        default_value_t = 256 * 1024,
        value_parser = clap::value_parser!(u64).range(1024..)
    )]
    pub ws_queue_bytes: u64,
    /// Usernames of the site's admins, comma-separated: they may read the
    /// event log and fold aggregates as of an instant (`/api/admin/…`).
    /// Compared without regard to case; unset: nobody is admin.
    #[arg(long, env = "TIDINGS_ADMIN_USERNAMES", value_delimiter = ',')]
    pub admin_usernames: Vec<String>,
    #[command(flatten)]
    pub mail: MailSettings,
    #[command(flatten)]
    pub limits: LimitSettings,
    #[command(flatten)]
    pub webhooks: WebhookSettings,
}

/// Webhooks: where deliveries may go, how they are retried, and when an
/// endpoint that keeps failing is disabled.
#[derive(Clone, Args)]
pub struct WebhookSettings {
    /// Networks webhook URLs may reach although they are loopback, private
    /// or link-local (`127.0.0.1/32,10.1.0.0/16`); plain http is accepted
    /// for them only. Unset: only public addresses, over https.
    #[arg(long, env = "TIDINGS_WEBHOOK_ALLOW", value_delimiter = ',')]
    pub webhook_allow: Vec<String>,
    /// Attempts at one delivery before it is dead-lettered.
    #[arg(long, env = "TIDINGS_WEBHOOK_MAX_ATTEMPTS", default_value_t = 12)]
    pub webhook_max_attempts: i32,
    /// The pause after a delivery's first failed attempt; it doubles with
    /// each attempt (with jitter), up to `TIDINGS_WEBHOOK_BACKOFF_MAX_MS`.
    #[arg(long, env = "TIDINGS_WEBHOOK_BACKOFF_MS", default_value_t = 1_000)]
    pub webhook_backoff_ms: u64,
    #[arg(
        long,
        env = "TIDINGS_WEBHOOK_BACKOFF_MAX_MS",
        default_value_t = 3_600_000
    )]
    pub webhook_backoff_max_ms: u64,
    /// The longest a delivery may take, connecting included.
    #[arg(long, env = "TIDINGS_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,
    /// An endpoint whose every attempt has failed for this long is disabled
    /// and its owner told by mail.
    #[arg(
        long,
        env = "TIDINGS_WEBHOOK_DISABLE_AFTER_SECS",
        default_value_t = 259_200
    )]
    pub webhook_disable_after_secs: u64,
    /// Pending deliveries of one endpoint beyond which new ones are
    /// dead-lettered (`queue_full`).
    #[arg(long, env = "TIDINGS_WEBHOOK_QUEUE_MAX", default_value_t = 10_000)]
    pub webhook_queue_max: i64,
    /// Deliveries in flight at once in one process.
    #[arg(long, env = "TIDINGS_WEBHOOK_CONCURRENCY", default_value_t = 32)]
    pub webhook_concurrency: usize,
}

impl WebhookSettings {
    fn to_env(&self) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            (
                "TIDINGS_WEBHOOK_MAX_ATTEMPTS",
                self.webhook_max_attempts.to_string(),
            ),
            (
                "TIDINGS_WEBHOOK_BACKOFF_MS",
                self.webhook_backoff_ms.to_string(),
            ),
            (
                "TIDINGS_WEBHOOK_BACKOFF_MAX_MS",
                self.webhook_backoff_max_ms.to_string(),
            ),
            (
                "TIDINGS_WEBHOOK_TIMEOUT_MS",
                self.webhook_timeout_ms.to_string(),
            ),
            (
                "TIDINGS_WEBHOOK_DISABLE_AFTER_SECS",
                self.webhook_disable_after_secs.to_string(),
            ),
            (
                "TIDINGS_WEBHOOK_QUEUE_MAX",
                self.webhook_queue_max.to_string(),
            ),
            (
                "TIDINGS_WEBHOOK_CONCURRENCY",
                self.webhook_concurrency.to_string(),
            ),
        ];
        if !self.webhook_allow.is_empty() {
            vars.push(("TIDINGS_WEBHOOK_ALLOW", self.webhook_allow.join(",")));
        }
        vars
    }
}

/// Rate limits, each `<count>/<s|min|h>[,<burst>]` or `off`. Past one, a
/// request is answered 429 `rate_limited` with `Retry-After` and the
/// `RateLimit` headers. Addresses are the TCP peer's (behind a proxy, its
/// address: raise or turn off the address limits there).
#[derive(Clone, Args)]
pub struct LimitSettings {
    /// Writes (POST, PUT, PATCH, DELETE) of one signed-in user.
    #[arg(long, env = "TIDINGS_LIMIT_USER_WRITES", default_value = "10/s,50")]
    pub limit_user_writes: LimitSpec,
    /// Writes from one address (IPv6: one /64), signed in or not.
    #[arg(long, env = "TIDINGS_LIMIT_IP_WRITES", default_value = "50/s,200")]
    pub limit_ip_writes: LimitSpec,
    /// Registrations, logins and password resets from one address.
    #[arg(long, env = "TIDINGS_LIMIT_IP_LOGINS", default_value = "30/min,30")]
    pub limit_ip_logins: LimitSpec,
    /// Login attempts naming one account, from anywhere.
    #[arg(
        long,
        env = "TIDINGS_LIMIT_ACCOUNT_LOGINS",
        default_value = "10/min,10"
    )]
    pub limit_account_logins: LimitSpec,
    /// WebSocket connections opened from one address.
    #[arg(long, env = "TIDINGS_LIMIT_IP_CONNECTS", default_value = "10/s,100")]
    pub limit_ip_connects: LimitSpec,
}

impl LimitSettings {
    /// Every limit off: for a process whose clients all share one address
    /// (tests, benchmarks).
    pub fn off() -> Self {
        let off = LimitSpec(None);
        LimitSettings {
            limit_user_writes: off,
            limit_ip_writes: off,
            limit_ip_logins: off,
            limit_account_logins: off,
            limit_ip_connects: off,
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            user_writes: Limiter::new("user-writes", self.limit_user_writes),
            ip_writes: Limiter::new("address-writes", self.limit_ip_writes),
            ip_logins: Limiter::new("address-logins", self.limit_ip_logins),
            account_logins: Limiter::new("account-logins", self.limit_account_logins),
            ip_connects: Limiter::new("address-connects", self.limit_ip_connects),
        }
    }

    fn to_env(&self) -> [(&'static str, String); 5] {
        [
            (
                "TIDINGS_LIMIT_USER_WRITES",
                self.limit_user_writes.to_string(),
            ),
            ("TIDINGS_LIMIT_IP_WRITES", self.limit_ip_writes.to_string()),
            ("TIDINGS_LIMIT_IP_LOGINS", self.limit_ip_logins.to_string()),
            (
                "TIDINGS_LIMIT_ACCOUNT_LOGINS",
                self.limit_account_logins.to_string(),
            ),
            (
                "TIDINGS_LIMIT_IP_CONNECTS",
                self.limit_ip_connects.to_string(),
            ),
        ]
    }
}

/// Mail: where it goes out, from whom, and the limits of what is sent.
#[derive(Clone, Args)]
pub struct MailSettings {
    /// The SMTP server mail goes out through, as a URL:
    /// `smtps://user:password@host:465` (TLS), `smtp://host:587?tls=required`
    /// (STARTTLS), `smtp://127.0.0.1:2525` (plain: a local relay only).
    /// Unset: mail is queued in PostgreSQL (up to `TIDINGS_MAIL_QUEUE_MAX`)
    /// and sent once it is set. May hold a password: never printed.
    #[arg(long, env = "TIDINGS_SMTP_URL")]
    pub smtp_url: Option<String>,
    /// The `From` of every mail: an address, or `Name <address>` (quoted
    /// in a settings file, as `tidings config` prints it).
    #[arg(
        long,
        env = "TIDINGS_MAIL_FROM",
        default_value = "no-reply@tidings.localhost"
    )]
    pub mail_from: String,
    /// Mails waiting to be sent beyond which `POST /api/auth/password/forgot`
    /// answers 503 `overloaded` (and digests wait).
    #[arg(long, env = "TIDINGS_MAIL_QUEUE_MAX", default_value_t = 10_000)]
    pub mail_queue_max: i64,
    /// How long a password reset token works.
    #[arg(long, env = "TIDINGS_PASSWORD_RESET_TTL_SECS", default_value_t = 3600)]
    pub password_reset_ttl_secs: u64,
    /// At most one reset mail per address per this many seconds.
    #[arg(
        long,
        env = "TIDINGS_PASSWORD_FORGOT_INTERVAL_SECS",
        default_value_t = 60
    )]
    pub password_forgot_interval_secs: u64,
    /// At most one notification digest per user per this (milliseconds),
    /// to users with no socket open; 0 sends none.
    #[arg(
        long,
        env = "TIDINGS_NOTIFICATION_MAIL_INTERVAL_MS",
        default_value_t = 900_000
    )]
    pub notification_mail_interval_ms: u64,
}

impl MailSettings {
    pub fn password_reset_ttl(&self) -> Duration {
        Duration::from_secs(self.password_reset_ttl_secs)
    }

    pub fn forgot_interval(&self) -> Duration {
        Duration::from_secs(self.password_forgot_interval_secs)
    }

    pub fn notification_interval(&self) -> Duration {
        Duration::from_millis(self.notification_mail_interval_ms)
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("http_addr", &self.http_addr)
            .field("database_url", &mask_password(&self.database_url))
            .field("redis_url", &mask_password(&self.redis_url))
            .field("redis_prefix", &self.redis_prefix)
            .field("kafka_brokers", &self.kafka_brokers)
            .field("topic_prefix", &self.topic_prefix)
            .field("partitions", &self.partitions)
            .field("instance_id", &self.instance_id())
            .field("jwt_secret", &"***")
            .field(
                "smtp_url",
                &self.mail.smtp_url.as_deref().map(mask_password),
            )
            .field("mail_from", &self.mail.mail_from)
            .finish_non_exhaustive()
    }
}

/// A value as a settings file line takes it: quoted when it has white space
/// or a character the file's syntax gives a meaning to (in single quotes,
/// which take everything literally, unless it holds one), as-is otherwise.
fn quoted(value: &str) -> String {
    if !value
        .chars()
        .any(|c| c.is_whitespace() || "\"'#\\$`<>".contains(c))
    {
        value.to_owned()
    } else if !value.contains('\'') {
        format!("'{value}'")
    } else {
        let escaped = value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('$', "\\$");
        format!("\"{escaped}\"")
    }
}

/// A URL with its password replaced by `***`.
fn mask_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl Settings {
    /// The settings the environment gives, defaults elsewhere.
    pub fn from_env() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            settings: Settings,
        }
        <Only as clap::Parser>::parse_from(["tidings"]).settings
    }

    /// The settings as `TIDINGS_*` variables, for starting another
    /// `tidings` process with the same configuration.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            (
                "TIDINGS_ENV",
                format!("{:?}", self.environment).to_lowercase(),
            ),
            ("TIDINGS_HTTP_ADDR", self.http_addr.clone()),
            ("TIDINGS_HTTP_WORKERS", self.http_workers.to_string()),
            ("TIDINGS_DATABASE_URL", self.database_url.clone()),
            ("TIDINGS_DATABASE_POOL", self.database_pool.to_string()),
            ("TIDINGS_REDIS_URL", self.redis_url.clone()),
            ("TIDINGS_REDIS_PREFIX", self.redis_prefix.clone()),
            ("TIDINGS_KAFKA_BROKERS", self.kafka_brokers.clone()),
            ("TIDINGS_TOPIC_PREFIX", self.topic_prefix.clone()),
            ("TIDINGS_PARTITIONS", self.partitions.to_string()),
            (
                "TIDINGS_KAFKA_SESSION_TIMEOUT_MS",
                self.kafka_session_timeout_ms.to_string(),
            ),
            (
                "TIDINGS_KAFKA_FETCH_WAIT_MS",
                self.kafka_fetch_wait_ms.to_string(),
            ),
            ("TIDINGS_KAFKA_LINGER_MS", self.kafka_linger_ms.to_string()),
            ("TIDINGS_JWT_SECRET", self.jwt_secret.clone()),
            ("TIDINGS_TOKEN_TTL_SECS", self.token_ttl_secs.to_string()),
            (
                "TIDINGS_COMMAND_TIMEOUT_MS",
                self.command_timeout_ms.to_string(),
            ),
            (
                "TIDINGS_MIN_POSITION_WAIT_MS",
                self.min_position_wait_ms.to_string(),
            ),
            ("TIDINGS_SNAPSHOT_EVERY", self.snapshot_every.to_string()),
            (
                "TIDINGS_WS_FRAMES_PER_SECOND",
                self.ws_frames_per_second.to_string(),
            ),
            ("TIDINGS_WS_QUEUE_BYTES", self.ws_queue_bytes.to_string()),
            (
                "TIDINGS_REGISTRATION_TIMEOUT_SECS",
                self.registration_timeout_secs.to_string(),
            ),
            ("TIDINGS_MEDIA_DIR", self.media_dir.display().to_string()),
            (
                "TIDINGS_MEDIA_IMAGE_MAX_BYTES",
                self.media_image_max_bytes.to_string(),
            ),
            (
                "TIDINGS_MEDIA_VIDEO_MAX_BYTES",
                self.media_video_max_bytes.to_string(),
            ),
            (
                "TIDINGS_MEDIA_MAX_DIMENSION",
                self.media_max_dimension.to_string(),
            ),
            (
                "TIDINGS_MEDIA_MAX_DECODE_BYTES",
                self.media_max_decode_bytes.to_string(),
            ),
            (
                "TIDINGS_MEDIA_UNUSED_SECS",
                self.media_unused_secs.to_string(),
            ),
            ("TIDINGS_MAIL_FROM", self.mail.mail_from.clone()),
            (
                "TIDINGS_MAIL_QUEUE_MAX",
                self.mail.mail_queue_max.to_string(),
            ),
            (
                "TIDINGS_PASSWORD_RESET_TTL_SECS",
                self.mail.password_reset_ttl_secs.to_string(),
            ),
            (
                "TIDINGS_PASSWORD_FORGOT_INTERVAL_SECS",
                self.mail.password_forgot_interval_secs.to_string(),
            ),
            (
                "TIDINGS_NOTIFICATION_MAIL_INTERVAL_MS",
                self.mail.notification_mail_interval_ms.to_string(),
            ),
        ];
        vars.extend(self.limits.to_env());
        vars.extend(self.webhooks.to_env());
        // Unset optional settings stay out: an empty variable is a value.
        for (key, value) in [
            ("TIDINGS_TLS_CERT", &self.tls_cert),
            ("TIDINGS_TLS_KEY", &self.tls_key),
        ] {
            if let Some(path) = value {
                vars.push((key, path.display().to_string()));
            }
        }
        if let Some(id) = &self.instance_id {
            vars.push(("TIDINGS_INSTANCE_ID", id.clone()));
        }
        if let Some(ms) = self.ws_fetch_wait_ms {
            vars.push(("TIDINGS_WS_FETCH_WAIT_MS", ms.to_string()));
        }
        if let Some(store) = &self.media_store {
            vars.push(("TIDINGS_MEDIA_STORE", store.clone()));
        }
        if let Some(url) = &self.mail.smtp_url {
            vars.push(("TIDINGS_SMTP_URL", url.clone()));
        }
        if !self.admin_usernames.is_empty() {
            vars.push(("TIDINGS_ADMIN_USERNAMES", self.admin_usernames.join(",")));
        }
        vars
    }

    /// Optional settings that are unset, shown commented out by `masked`.
    fn unset(&self) -> Vec<&'static str> {
        [
            ("TIDINGS_TLS_CERT", self.tls_cert.is_none()),
            ("TIDINGS_TLS_KEY", self.tls_key.is_none()),
            ("TIDINGS_INSTANCE_ID", self.instance_id.is_none()),
            ("TIDINGS_MEDIA_STORE", self.media_store.is_none()),
            ("TIDINGS_SMTP_URL", self.mail.smtp_url.is_none()),
            ("TIDINGS_WS_FETCH_WAIT_MS", self.ws_fetch_wait_ms.is_none()),
            ("TIDINGS_ADMIN_USERNAMES", self.admin_usernames.is_empty()),
            (
                "TIDINGS_WEBHOOK_ALLOW",
                self.webhooks.webhook_allow.is_empty(),
            ),
        ]
        .into_iter()
        .filter_map(|(key, unset)| unset.then_some(key))
        .collect()
    }

    /// The settings as `TIDINGS_*=value` lines with secrets masked: what
    /// `tidings config` prints, readable back as a settings file.
    pub fn masked(&self) -> String {
        self.to_env()
            .into_iter()
            .map(|(key, value)| {
                let shown = match key {
                    "TIDINGS_JWT_SECRET" => "***".to_owned(),
                    "TIDINGS_DATABASE_URL" | "TIDINGS_REDIS_URL" | "TIDINGS_SMTP_URL" => {
                        mask_password(&value)
                    }
                    _ => value,
                };
                format!("{key}={}\n", quoted(&shown))
            })
            .chain(self.unset().into_iter().map(|key| format!("# {key}=\n")))
            .collect()
    }

    /// What production refuses.
    pub fn check(&self) -> Result<(), String> {
        if self.environment == Environment::Production {
            if self.jwt_secret == DEV_JWT_SECRET {
                return Err("TIDINGS_JWT_SECRET is the development default; production needs a secret of its own".into());
            }
            if self.jwt_secret.len() < MIN_PRODUCTION_SECRET {
                return Err(format!("TIDINGS_JWT_SECRET must be at least {MIN_PRODUCTION_SECRET} bytes in production"));
            }
        }
        if let Err(error) = self.mail.mail_from.parse::<lettre::message::Mailbox>() {
            return Err(format!("TIDINGS_MAIL_FROM is not a mail address: {error}"));
        }
        if !(0.0..=900_000.0).contains(&self.kafka_linger_ms) {
            return Err("TIDINGS_KAFKA_LINGER_MS must be between 0 and 900000".into());
        }
        Ok(())
    }

    pub fn kafka(&self) -> KafkaSettings {
        KafkaSettings {
            brokers: self.kafka_brokers.clone(),
            topic_prefix: self.topic_prefix.clone(),
            partitions: self.partitions,
            session_timeout_ms: self.kafka_session_timeout_ms,
            fetch_wait_ms: self.kafka_fetch_wait_ms,
            linger_ms: self.kafka_linger_ms,
            instance_id: Some(self.instance_id()),
        }
    }

    /// `TIDINGS_INSTANCE_ID`, or the host name and HTTP port: what a process
    /// restarted on the same host with the same settings calls itself again.
    pub fn instance_id(&self) -> String {
        if let Some(id) = &self.instance_id {
            return id.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "tidings".to_owned());
        let port = self
            .http_addr
            .rsplit_once(':')
            .map_or("0", |(_, port)| port);
        format!("{host}-{port}")
    }

    /// The admins' usernames as accounts store them (lower case), without
    /// blanks.
    pub fn admins(&self) -> Vec<String> {
        self.admin_usernames
            .iter()
            .map(|name| name.trim().to_lowercase())
            .filter(|name| !name.is_empty())
            .collect()
    }

    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.token_ttl_secs)
    }

    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms)
    }

    pub fn min_position_wait(&self) -> Duration {
        Duration::from_millis(self.min_position_wait_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_refuses_the_development_secret() {
        let mut settings = Settings::from_env();
        settings.environment = Environment::Production;
        settings.jwt_secret = DEV_JWT_SECRET.into();
        assert!(settings.check().is_err());
        settings.jwt_secret = "short".into();
        assert!(settings.check().is_err());
        settings.jwt_secret = "x".repeat(32);
        assert!(settings.check().is_ok());
    }

    #[test]
    fn the_masked_settings_hide_secrets() {
        let mut settings = Settings::from_env();
        settings.jwt_secret = "hunter2hunter2".into();
        settings.database_url = "postgres://u:pw@h/db".into();
        let shown = settings.masked();
        assert!(
            !shown.contains("hunter2") && !shown.contains(":pw@"),
            "{shown}"
        );
        assert!(shown.contains("TIDINGS_JWT_SECRET=***"));
    }

    #[test]
    fn printed_settings_read_back_as_they_were() {
        let mut settings = Settings::from_env();
        settings.mail.mail_from = "Tidings <no-reply@example.com>".into();
        let file = std::env::temp_dir().join(format!("tidings-settings-{}", std::process::id()));
        let odd = "it's \"$HOME\" \\ here";
        std::fs::write(&file, format!("{}ODD={}\n", settings.masked(), quoted(odd))).unwrap();
        let read: std::collections::HashMap<String, String> = dotenvy::from_path_iter(&file)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        std::fs::remove_file(&file).unwrap();
        assert_eq!(read["TIDINGS_MAIL_FROM"], "Tidings <no-reply@example.com>");
        assert_eq!(read["ODD"], odd);
    }

    #[test]
    fn the_smtp_password_is_never_shown() {
        let mut settings = Settings::from_env();
        settings.mail.smtp_url = Some("smtps://mailer:s3cr3t@smtp.example.com:465".into());
        let shown = settings.masked();
        assert!(shown.contains("TIDINGS_SMTP_URL=smtps://mailer:***@smtp.example.com:465"));
        assert!(!format!("{shown}{settings:?}").contains("s3cr3t"));
    }

    #[test]
    fn passwords_in_urls_are_masked() {
        assert_eq!(
            mask_password("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(mask_password("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(mask_password("redis://h:6379"), "redis://h:6379");
    }
}
