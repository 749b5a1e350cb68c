//! The Redis caches, read through with PostgreSQL behind them.
//!
//! Every entry carries the aggregate version it reflects, and a write only
//! lands if its version is newer: the projector's write after a commit and a
//! reader's fill after a miss can race in any order and the newest wins.
//! Every entry also carries the projector offsets it reflects (`at`), so a
//! read that must see a position (`X-Min-Position`) skips an entry that is
//! not that far yet. A write that fails deletes the entry instead of leaving
//! the old one; if even that fails, the entry lives [`TTL_SECONDS`] at most.
//! Every error is logged and turned into a miss, so Redis being down makes
//! reads slower, never failed.

use std::collections::HashSet;
use std::time::Duration;

use deadpool_redis::redis::{self, AsyncCommands};
use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};
use serde::de::DeserializeOwned;
use tidings_schemas::Position;
use uuid::Uuid;

use crate::accounts::AccountRow;
use crate::db::{format_offsets, parse_offsets};
use crate::details::DetailsRow;
use crate::projection::FeedChange;

/// How long an entry lives without being refreshed: short, because an entry
/// whose refresh and deletion both failed is served to reads that ask for no
/// position until then.
pub const TTL_SECONDS: u64 = 60;
/// How long a request waits on Redis before it reads PostgreSQL instead.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// Sets `json` at version `v` only over an older version.
const PUT_IF_NEWER: &str = r"
local current = tonumber(redis.call('HGET', KEYS[1], 'v') or '-1')
if tonumber(ARGV[1]) > current then
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 'json', ARGV[2], 'at', ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
";

/// The most entries a cached feed holds: deeper pages are read from
/// PostgreSQL.
pub const FEED_CAP: usize = 800;
/// How long a cached feed lives without being read again or written.
pub const FEED_TTL_SECONDS: u64 = 600;
/// Feeds changed by one script call.
const FEED_BATCH: usize = 256;

/// Fills a feed (KEYS: feed, generation; ARGV: generation read before the
/// feed was read, ttl, then score and member pairs) only if its generation
/// is still the one read: otherwise the projector changed the feed in
/// between, and the fill, read before that change, may lack it.
const FILL_FEED: &str = r"
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current ~= tonumber(ARGV[1]) then
  return 0
end
redis.call('DEL', KEYS[1])
for i = 3, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
";

/// Adds a post to the feeds that are cached (KEYS: feed and generation of
/// each user; ARGV: score, member, cap, ttl), and moves every generation.
const ADD_TO_FEEDS: &str = r"
for i = 1, #KEYS, 2 do
  redis.call('INCR', KEYS[i + 1])
  redis.call('EXPIRE', KEYS[i + 1], ARGV[4] * 2)
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('ZADD', KEYS[i], ARGV[1], ARGV[2])
    redis.call('ZREMRANGEBYRANK', KEYS[i], 0, -(tonumber(ARGV[3]) + 1))
  end
end
return 1
";

/// Drops the feeds (KEYS: feed and generation of each user; ARGV: ttl), and
/// moves every generation.
const RESET_FEEDS: &str = r"
for i = 1, #KEYS, 2 do
  redis.call('INCR', KEYS[i + 1])
  redis.call('EXPIRE', KEYS[i + 1], ARGV[1] * 2)
  redis.call('DEL', KEYS[i])
end
return 1
";

/// Updates the hot ring keeps per channel: a client that comes back after a
/// short absence (a reconnect storm after a gateway restarts) is served
/// from Redis; one further behind, from the outbox in PostgreSQL.
pub const RING_LEN: usize = 256;
/// How long a channel's ring outlives its last update.
const RING_TTL_SECS: i64 = 3600;

/// The Redis key of `user`'s open sessions (a sorted set of session ids
/// scored by when each stops counting), kept by the gateways
/// (`realtime/src/presence.rs`).
pub fn presence_key(prefix: &str, user: Uuid) -> String {
    format!("{prefix}:presence:{user}")
}

/// The Redis pub/sub channel on which the projector publishes each batch's
/// numbered updates (a JSON array), for the gateways of other processes:
/// ahead of the relay and `tidings.updates`, which stay the record (a
/// gateway that misses one fills the gap from the outbox).
pub fn updates_channel(prefix: &str) -> String {
    format!("{prefix}:updates")
}

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

    fn details_key(&self, id: Uuid) -> String {
        format!("{}:details:{id}", self.prefix)
    }

    /// The cached account, if its entry reflects at least `needed` (every
    /// partition of it projected, by the offsets the entry carries).
    pub async fn account(&self, id: Uuid, needed: Option<&Position>) -> Option<AccountRow> {
        self.entry(&self.account_key(id), needed, "account").await
    }

    /// The cached extended profile of `id`, as [`Cache::account`].
    pub async fn details(&self, id: Uuid, needed: Option<&Position>) -> Option<DetailsRow> {
        self.entry(&self.details_key(id), needed, "details").await
    }

    /// A versioned entry (see the module's documentation), if it reflects at
    /// least `needed`.
    async fn entry<T: DeserializeOwned>(
        &self,
        key: &str,
        needed: Option<&Position>,
        cache: &'static str,
    ) -> Option<T> {
        let found: Option<(Option<String>, Option<String>)> = self
            .run(async {
                let mut conn = self.pool.get().await?;
                Ok(redis::cmd("HMGET")
                    .arg(key)
                    .arg("json")
                    .arg("at")
                    .query_async(&mut conn)
                    .await?)
            })
            .await;
        let (json, at) = found.unwrap_or_default();
        let value: Option<T> = json.and_then(|json| serde_json::from_str(&json).ok());
        let result = match (value, needed) {
            (None, _) => None,
            (Some(value), None) => Some(value),
            (Some(value), Some(needed)) => {
                let at = parse_offsets(at.as_deref().unwrap_or_default());
                let far_enough =
                    needed.reached_by(|p| at.iter().find(|(ap, _)| *ap == p).map(|(_, n)| *n));
                if !far_enough {
                    metrics::counter!("tidings_cache_requests_total", "cache" => cache, "result" => "behind").increment(1);
                    return None;
                }
                Some(value)
            }
        };
        let label = if result.is_some() { "hit" } else { "miss" };
        metrics::counter!("tidings_cache_requests_total", "cache" => cache, "result" => label)
            .increment(1);
        result
    }

    /// Caches `account` as of the projector offsets `at` (next offset per
    /// partition; those the row is known to reflect). If the write fails the
    /// entry is deleted, so that no older one outlives it.
    pub async fn put_account(&self, account: &AccountRow, at: &[(i32, i64)]) {
        self.put_accounts(std::slice::from_ref(account), at).await;
    }

    /// [`Cache::put_account`] for several accounts, in one round trip.
    pub async fn put_accounts(&self, accounts: &[AccountRow], at: &[(i32, i64)]) {
        let entries = accounts.iter().map(|account| {
            let json = serde_json::to_string(account).expect("accounts serialize");
            (self.account_key(account.id), account.version, json)
        });
        self.put_entries(entries.collect(), at, "account").await;
    }

    /// Caches extended profiles, as [`Cache::put_accounts`].
    pub async fn put_details(&self, details: &[DetailsRow], at: &[(i32, i64)]) {
        let entries = details.iter().map(|row| {
            let json = serde_json::to_string(row).expect("details serialize");
            (self.details_key(row.user_id), row.version, json)
        });
        self.put_entries(entries.collect(), at, "details").await;
    }

    /// Writes `(key, version, json)` entries, each only over an older
    /// version, in one round trip; deletes them if that fails.
    async fn put_entries(
        &self,
        entries: Vec<(String, i64, String)>,
        at: &[(i32, i64)],
        cache: &'static str,
    ) {
        if entries.is_empty() {
            return;
        }
        let at = format_offsets(at);
        let mut pipe = redis::pipe();
        let mut keys = Vec::with_capacity(entries.len());
        for (key, version, json) in entries {
            pipe.cmd("EVAL")
                .arg(PUT_IF_NEWER)
                .arg(1)
                .arg(&key)
                .arg(version)
                .arg(json)
                .arg(TTL_SECONDS)
                .arg(&at)
                .ignore();
            keys.push(key);
        }
        let written = self
            .run(async {
                let mut conn = self.pool.get().await?;
                let () = pipe.query_async(&mut conn).await?;
                Ok(())
            })
            .await;
        if written.is_none() {
            self.forget(&keys, cache).await;
        }
    }

    /// Deletes entries whose refresh failed, in one round trip.
    async fn forget(&self, keys: &[String], cache: &'static str) {
        let deleted = self
            .run(async {
                let mut conn = self.pool.get().await?;
                let _: i64 = conn.del(keys).await?;
                Ok(())
            })
            .await;
        if deleted.is_none() {
            metrics::counter!("tidings_cache_stale_entries_total", "cache" => cache)
                .increment(keys.len() as u64);
            tracing::warn!(
                ?keys,
                ttl_seconds = TTL_SECONDS,
                "cache entries could be neither refreshed nor deleted; they expire with their TTL"
            );
        }
    }

    fn feed_key(&self, user: Uuid) -> String {
        format!("{}:feed:{user}", self.prefix)
    }

    /// Counts the changes to a user's feed: a fill read from PostgreSQL
    /// lands only if no change came in between (see [`FILL_FEED`]).
    fn feed_generation_key(&self, user: Uuid) -> String {
        format!("{}:feedgen:{user}", self.prefix)
    }

    /// The cached home feed of `user`, newest first, as `(post id, created
    /// at in microseconds)`; `None` when it is not cached (or Redis fails).
    /// It holds the newest [`FEED_CAP`] entries at most, and all of the
    /// feed when it holds fewer.
    pub async fn feed(&self, user: Uuid) -> Option<Vec<(Uuid, i64)>> {
        let key = self.feed_key(user);
        let entries: Option<Vec<(String, f64)>> = self
            .run(async {
                let mut conn = self.pool.get().await?;
                Ok(redis::cmd("ZREVRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query_async(&mut conn)
                    .await?)
            })
            .await;
        let entries: Vec<(Uuid, i64)> = entries?
            .into_iter()
            .filter_map(|(id, score)| Some((id.parse().ok()?, score as i64)))
            .collect();
        let label = if entries.is_empty() { "miss" } else { "hit" };
        metrics::counter!("tidings_cache_requests_total", "cache" => "feed", "result" => label)
            .increment(1);
        // An empty sorted set does not exist in Redis: an empty feed is
        // never cached, and is read from PostgreSQL.
        (!entries.is_empty()).then_some(entries)
    }

    /// The generation of a user's feed, read before the feed is read from
    /// PostgreSQL for [`Cache::fill_feed`]; `None` when Redis fails.
    pub async fn feed_generation(&self, user: Uuid) -> Option<i64> {
        let key = self.feed_generation_key(user);
        self.run(async {
            let mut conn = self.pool.get().await?;
            let generation: Option<i64> = conn.get(&key).await?;
            Ok(generation.unwrap_or(0))
        })
        .await
    }

    /// Caches a feed read from PostgreSQL, unless the projector changed it
    /// since `generation` was read (the read may then miss that change).
    pub async fn fill_feed(&self, user: Uuid, generation: i64, entries: &[(Uuid, i64)]) {
        if entries.is_empty() {
            return;
        }
        let mut command = redis::cmd("EVAL");
        command
            .arg(FILL_FEED)
            .arg(2)
            .arg(self.feed_key(user))
            .arg(self.feed_generation_key(user))
            .arg(generation)
            .arg(FEED_TTL_SECONDS);
        for (id, micros) in entries.iter().take(FEED_CAP) {
            command.arg(*micros).arg(id.to_string());
        }
        self.run(async {
            let mut conn = self.pool.get().await?;
            let _: i32 = command.query_async(&mut conn).await?;
            Ok(())
        })
        .await;
    }

    /// Applies what the projector committed to the cached feeds: a new post
    /// enters the cached ones (capped), a reset drops them. If a write
    /// fails the feeds are dropped instead; if even that fails, they live
    /// [`FEED_TTL_SECONDS`] at most.
    pub async fn apply_feeds(&self, changes: &[FeedChange]) {
        for change in changes {
            let (script, users, args) = match change {
                FeedChange::Add { users, post_id, at } => (
                    ADD_TO_FEEDS,
                    users,
                    vec![
                        at.timestamp_micros().to_string(),
                        post_id.to_string(),
                        FEED_CAP.to_string(),
                        FEED_TTL_SECONDS.to_string(),
                    ],
                ),
                FeedChange::Reset { users } => {
                    (RESET_FEEDS, users, vec![FEED_TTL_SECONDS.to_string()])
                }
            };
            for users in users.chunks(FEED_BATCH) {
                let mut command = redis::cmd("EVAL");
                command.arg(script).arg(users.len() * 2);
                for user in users {
                    command
                        .arg(self.feed_key(*user))
                        .arg(self.feed_generation_key(*user));
                }
                command.arg(&args);
                let written = self
                    .run(async {
                        let mut conn = self.pool.get().await?;
                        let _: i32 = command.query_async(&mut conn).await?;
                        Ok(())
                    })
                    .await;
                if written.is_none() {
                    let keys: Vec<String> = users.iter().map(|u| self.feed_key(*u)).collect();
                    self.forget(&keys, "feed").await;
                }
            }
        }
    }

    /// Which of `users` have a socket open on any gateway (presence, kept
    /// by the gateways under [`presence_key`]); `None` if Redis cannot say.
    pub async fn online_among(&self, users: &[Uuid]) -> Option<HashSet<Uuid>> {
        if users.is_empty() {
            return Some(HashSet::new());
        }
        let now = chrono::Utc::now().timestamp_millis();
        self.run(async {
            let mut conn = self.pool.get().await?;
            let mut pipe = redis::pipe();
            for &user in users {
                pipe.cmd("ZCOUNT")
                    .arg(presence_key(&self.prefix, user))
                    .arg(now)
                    .arg("+inf");
            }
            let open: Vec<i64> = pipe.query_async(&mut conn).await?;
            Ok(users
                .iter()
                .zip(open)
                .filter(|(_, open)| *open > 0)
                .map(|(&user, _)| user)
                .collect())
        })
        .await
    }

    /// Puts numbered channel updates into the hot ring: per channel, the
    /// last [`RING_LEN`] updates by `seq`, for an hour after the last one
    /// (a sorted set scored by `seq`), then publishes them on
    /// [`updates_channel`] in the same round trip. Best effort: a ring that
    /// misses one is not read past it ([`Cache::ring_after`]), and a gateway
    /// that misses one has it from the topic or the outbox.
    pub async fn ring_push(&self, updates: &[crate::outbox::Update]) {
        if updates.is_empty() {
            return;
        }
        self.run(async {
            let mut conn = self.pool.get().await?;
            let mut pipe = redis::pipe();
            let mut channels = HashSet::new();
            let mut published = Vec::with_capacity(updates.len());
            for update in updates {
                let key = self.ring_key(&update.channel);
                let json = serde_json::to_string(update)?;
                pipe.cmd("ZADD")
                    .arg(&key)
                    .arg(update.seq)
                    .arg(&json)
                    .ignore();
                channels.insert(key);
                published.push(json);
            }
            for key in channels {
                pipe.cmd("ZREMRANGEBYRANK")
                    .arg(&key)
                    .arg(0)
                    .arg(-(RING_LEN as i64) - 1)
                    .ignore();
                pipe.cmd("EXPIRE").arg(&key).arg(RING_TTL_SECS).ignore();
            }
            pipe.cmd("PUBLISH")
                .arg(updates_channel(&self.prefix))
                .arg(format!("[{}]", published.join(",")))
                .ignore();
            let () = pipe.query_async(&mut conn).await?;
            Ok(())
        })
        .await;
    }

    /// A channel's updates after `after` up to `until` from the hot ring,
    /// when the ring holds every one of them in one epoch; `None` when it
    /// does not (the outbox has them) or Redis cannot say.
    pub async fn ring_after(
        &self,
        channel: &str,
        after: i64,
        until: i64,
    ) -> Option<Vec<crate::outbox::Update>> {
        let wanted = usize::try_from(until - after).ok()?;
        if wanted == 0 || wanted > RING_LEN {
            return None;
        }
        let kept: Vec<String> = self
            .run(async {
                let mut conn = self.pool.get().await?;
                let kept: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                    .arg(self.ring_key(channel))
                    .arg(format!("({after}"))
                    .arg(until)
                    .query_async(&mut conn)
                    .await?;
                Ok(kept)
            })
            .await?;
        let updates: Vec<crate::outbox::Update> = kept
            .iter()
            .map(|json| serde_json::from_str(json))
            .collect::<Result<_, _>>()
            .ok()?;
        let whole = updates.len() == wanted
            && updates
                .iter()
                .zip(after + 1..)
                .all(|(update, seq)| update.seq == seq && update.epoch == updates[0].epoch);
        whole.then_some(updates)
    }

    fn ring_key(&self, channel: &str) -> String {
        format!("{}:ring:{channel}", self.prefix)
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
