//! The Redis caches, read through with PostgreSQL behind them.
//!
//! Every entry carries the aggregate version it reflects, and a write only
//! lands if its version is newer: the projector's write after a commit and a
//! reader's fill after a miss can race in any order and the newest wins.
//! Every error is logged and turned into a miss, so Redis being down makes
//! reads slower, never failed.

use std::time::Duration;

use deadpool_redis::redis::{self, AsyncCommands};
use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};
use uuid::Uuid;

use crate::accounts::AccountRow;

/// How long an entry lives without being refreshed.
const TTL_SECONDS: u64 = 3600;
/// How long a request waits on Redis before it reads PostgreSQL instead.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// Sets `json` at version `v` only over an older version.
const PUT_IF_NEWER: &str = r"
local current = tonumber(redis.call('HGET', KEYS[1], 'v') or '-1')
if tonumber(ARGV[1]) > current then
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 'json', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
";

#[derive(Clone)]
pub struct Cache {
    pool: Pool,
    prefix: String,
}

impl Cache {
    /// A cache at `url` whose keys all start with `prefix:`.
    pub fn new(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let mut config = deadpool_redis::Config::from_url(url);
        config.pool = Some(PoolConfig {
            max_size: 16,
            timeouts: Timeouts {
                wait: Some(REDIS_TIMEOUT),
                create: Some(REDIS_TIMEOUT),
                recycle: Some(REDIS_TIMEOUT),
            },
            ..Default::default()
        });
        let pool = config.create_pool(Some(Runtime::Tokio1))?;
        Ok(Cache {
            pool,
            prefix: prefix.to_owned(),
        })
    }

    fn account_key(&self, id: Uuid) -> String {
        format!("{}:account:{id}", self.prefix)
    }

    pub async fn account(&self, id: Uuid) -> Option<AccountRow> {
        let key = self.account_key(id);
        let found: Option<String> = self
            .run(async {
                let mut conn = self.pool.get().await?;
                Ok(conn.hget(&key, "json").await?)
            })
            .await
            .flatten();
        match found.and_then(|json| serde_json::from_str(&json).ok()) {
            Some(account) => {
                metrics::counter!("tidings_cache_requests_total", "cache" => "account", "result" => "hit").increment(1);
                Some(account)
            }
            None => {
                metrics::counter!("tidings_cache_requests_total", "cache" => "account", "result" => "miss").increment(1);
                None
            }
        }
    }

    pub async fn put_account(&self, account: &AccountRow) {
        let key = self.account_key(account.id);
        let json = serde_json::to_string(account).expect("accounts serialize");
        self.run(async {
            let mut conn = self.pool.get().await?;
            let _: i32 = redis::cmd("EVAL")
                .arg(PUT_IF_NEWER)
                .arg(1)
                .arg(&key)
                .arg(account.version)
                .arg(&json)
                .arg(TTL_SECONDS)
                .query_async(&mut conn)
                .await?;
            Ok(())
        })
        .await;
    }

    /// Whether Redis answers (for `/ready`).
    pub async fn ping(&self) -> bool {
        self.run(async {
            let mut conn = self.pool.get().await?;
            let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            Ok(())
        })
        .await
        .is_some()
    }

    /// Runs a Redis operation within the timeout; a failure is logged and
    /// becomes `None`.
    async fn run<T>(&self, op: impl std::future::Future<Output = anyhow::Result<T>>) -> Option<T> {
        match tokio::time::timeout(REDIS_TIMEOUT, op).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                tracing::debug!(
                    error = format!("{error:#}"),
                    "redis unavailable; reading through"
                );
                None
            }
            Err(_) => {
                tracing::debug!("redis timed out; reading through");
                None
            }
        }
    }
}
