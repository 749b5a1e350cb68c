//! Who has a socket open, across every gateway process: per user, a Redis
//! sorted set of session ids scored by when each stops counting. A session
//! joins when it opens, is refreshed at each heartbeat, and leaves when it
//! closes; a process that dies without leaving stops counting within
//! [`TTL`], so nobody stays online forever.
//!
//! Anything that asks "is this user online?" reads it here (the notification
//! digests today; room presence later). Errors are answered `None`
//! ("unknown"), so a caller decides what an outage means for it.

use std::time::Duration;

use deadpool_redis::redis;
use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};
use uuid::Uuid;

/// How long a session counts after its last refresh: three heartbeats, so
/// one late refresh does not take a user offline.
pub const TTL: Duration = Duration::from_secs(45);
/// How long a presence call waits on Redis.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// Adds or refreshes a session (KEYS: the user's set; ARGV: session,
/// expiry and now in ms, ttl in ms), dropping the sessions that lapsed.
const JOIN: &str = r"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
";

#[derive(Clone)]
pub struct Presence {
    pool: Pool,
    prefix: String,
}

impl Presence {
    /// Presence at `url`, under keys that start with `prefix:presence:`.
    pub fn new(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let mut config = deadpool_redis::Config::from_url(url);
        config.pool = Some(PoolConfig {
            max_size: 8,
            timeouts: Timeouts {
                wait: Some(REDIS_TIMEOUT),
                create: Some(REDIS_TIMEOUT),
                recycle: Some(REDIS_TIMEOUT),
            },
            ..Default::default()
        });
        Ok(Presence {
            pool: config.create_pool(Some(Runtime::Tokio1))?,
            prefix: prefix.to_owned(),
        })
    }

    fn key(&self, user: Uuid) -> String {
        format!("{}:presence:{user}", self.prefix)
    }

    /// Counts `session` of `user` as open for [`TTL`] from now.
    pub async fn join(&self, user: Uuid, session: Uuid) {
        let now = now_ms();
        let ttl = TTL.as_millis() as i64;
        let mut command = redis::cmd("EVAL");
        command
            .arg(JOIN)
            .arg(1)
            .arg(self.key(user))
            .arg(session.to_string())
            .arg(now + ttl)
            .arg(now)
            .arg(ttl);
        let done = async {
            let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
            command
                .query_async::<i64>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        };
        if let Err(error) = timed(done).await {
            tracing::debug!(%error, "presence: refreshing a session");
        }
    }

    /// The session closed.
    pub async fn leave(&self, user: Uuid, session: Uuid) {
        let key = self.key(user);
        let done = async {
            let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
            redis::cmd("ZREM")
                .arg(&key)
                .arg(session.to_string())
                .query_async::<i64>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        };
        if let Err(error) = timed(done).await {
            tracing::debug!(%error, "presence: leaving");
        }
    }

    /// Whether `user` has a socket open on any gateway; `None` when Redis
    /// cannot tell.
    pub async fn is_online(&self, user: Uuid) -> Option<bool> {
        let key = self.key(user);
        let done = async {
            let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
            redis::cmd("ZCOUNT")
                .arg(&key)
                .arg(now_ms())
                .arg("+inf")
                .query_async::<i64>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        };
        match timed(done).await {
            Ok(open) => Some(open > 0),
            Err(error) => {
                tracing::warn!(%error, "presence: reading");
                None
            }
        }
    }
}

async fn timed<T>(work: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(REDIS_TIMEOUT * 2, work)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the local Redis of the test machines.
    #[tokio::test]
    async fn a_session_counts_until_it_leaves() {
        let presence = Presence::new(
            "redis://127.0.0.1:6379",
            &format!("presence_test_{}", Uuid::new_v4().simple()),
        )
        .unwrap();
        let (user, a, b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(presence.is_online(user).await, Some(false));
        presence.join(user, a).await;
        presence.join(user, b).await;
        assert_eq!(presence.is_online(user).await, Some(true));
        presence.leave(user, a).await;
        assert_eq!(presence.is_online(user).await, Some(true));
        presence.leave(user, b).await;
        assert_eq!(presence.is_online(user).await, Some(false));
    }

    #[tokio::test]
    async fn redis_down_is_unknown() {
        let presence = Presence::new("redis://127.0.0.1:1", "nowhere").unwrap();
        assert_eq!(presence.is_online(Uuid::new_v4()).await, None);
    }
}
