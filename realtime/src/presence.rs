//! Who has a socket open, across every gateway process: per user, a Redis
//! sorted set of session ids scored by when each stops counting. A session
//! joins when it opens, is refreshed at each heartbeat, and leaves when it
//! closes; a process that dies without leaving stops counting within
//! [`TTL`], so nobody stays online forever.
//!
//! Anything that asks "is this user online?" reads it here (the notification
//! digests, room presence). Errors are answered `None` ("unknown"), so a
//! caller decides what an outage means for it.
//!
//! Changes of presence, and typing, are ephemeral: they go between gateways
//! over one Redis pub/sub channel (`prefix:signals`, see [`Wire`]), never
//! through the event log. A user counts as announced online while they are
//! in the set `prefix:presence:online` (scored by their latest expiry): the
//! join that adds them says `online`, the leave of their last session (or
//! the [`sweep`] that finds all their sessions lapsed, after a gateway
//! died) removes them and says `offline`. Each is one script, so exactly
//! one gateway announces each change.

use std::time::Duration;

use deadpool_redis::redis;
use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tidings_schemas::channel::Channel;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::frames::ServerFrame;
use crate::hub::{Command, Hub, Signal};

/// How long a session counts after its last refresh: three heartbeats, so
/// one late refresh does not take a user offline.
pub const TTL: Duration = Duration::from_secs(45);
/// How long a presence call waits on Redis.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// How often each gateway looks for users whose every session lapsed.
pub const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// Rooms of a user read at once, to tell them of a change of presence.
const ROOMS_PAGE: i64 = 500;
/// Users announced offline per sweep, at most.
const SWEEP_BATCH: i64 = 100;

/// Adds or refreshes a session (KEYS: the user's set, the online set; ARGV:
/// session, expiry and now in ms, ttl in ms, user), dropping the sessions
/// that lapsed; 1 when the user was not announced online yet.
const JOIN: &str = r"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return redis.call('ZADD', KEYS[2], 'GT', ARGV[2], ARGV[5])
";

/// Removes a session (KEYS: the user's set, the online set; ARGV: session,
/// now in ms, user); 1 when it was the user's last: they go offline.
const LEAVE: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) == 0 then
  return redis.call('ZREM', KEYS[2], ARGV[3])
end
return 0
";

/// The users announced online whose every session lapsed (KEYS: the online
/// set; ARGV: now in ms, the prefix of the users' sets, batch): removed and
/// returned. A user still counted gets their latest expiry back.
const SWEEP: &str = r"
local gone = {}
local users = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, user in ipairs(users) do
  local key = ARGV[2] .. user
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[1])
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #last == 0 then
    redis.call('ZREM', KEYS[1], user)
    table.insert(gone, user)
  else
    redis.call('ZADD', KEYS[1], last[2], user)
  end
end
return gone
";

/// What goes between gateways on `prefix:signals`: small, fixed-size JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Wire {
    Presence {
        user_id: Uuid,
        online: bool,
    },
    Typing {
        room_id: Uuid,
        user_id: Uuid,
        is_typing: bool,
    },
}

#[derive(Clone)]
pub struct Presence {
    pool: Pool,
    client: redis::Client,
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
            client: redis::Client::open(url)?,
            prefix: prefix.to_owned(),
        })
    }

    fn key(&self, user: Uuid) -> String {
        tidings_projections::cache::presence_key(&self.prefix, user)
    }

    fn online_key(&self) -> String {
        format!("{}:presence:online", self.prefix)
    }

    /// The Redis pub/sub channel of the projectors' updates
    /// ([`tidings_projections::cache::updates_channel`]).
    pub(crate) fn updates_channel(&self) -> String {
        tidings_projections::cache::updates_channel(&self.prefix)
    }

    fn signals_channel(&self) -> String {
        format!("{}:signals", self.prefix)
    }

    /// Counts `session` of `user` as open for [`TTL`] from now; `true` when
    /// this made the user online (their first session, or the first since
    /// they lapsed), which the caller announces.
    pub async fn join(&self, user: Uuid, session: Uuid) -> bool {
        let now = now_ms();
        let ttl = TTL.as_millis() as i64;
        let mut command = redis::cmd("EVAL");
        command
            .arg(JOIN)
            .arg(2)
            .arg(self.key(user))
            .arg(self.online_key())
            .arg(session.to_string())
            .arg(now + ttl)
            .arg(now)
            .arg(ttl)
            .arg(user.to_string());
        match self.run::<i64>(command).await {
            Ok(added) => added == 1,
            Err(error) => {
                tracing::debug!(%error, "presence: refreshing a session");
                false
            }
        }
    }

    /// The session closed; `true` when it was the user's last, which the
    /// caller announces.
    pub async fn leave(&self, user: Uuid, session: Uuid) -> bool {
        let mut command = redis::cmd("EVAL");
        command
            .arg(LEAVE)
            .arg(2)
            .arg(self.key(user))
            .arg(self.online_key())
            .arg(session.to_string())
            .arg(now_ms())
            .arg(user.to_string());
        match self.run::<i64>(command).await {
            Ok(removed) => removed == 1,
            Err(error) => {
                tracing::debug!(%error, "presence: leaving");
                false
            }
        }
    }

    /// Of `users`, those with a socket open; `None` when Redis cannot tell.
    pub async fn online_among(&self, users: &[Uuid]) -> Option<Vec<Uuid>> {
        let now = now_ms();
        let mut pipe = redis::pipe();
        for user in users {
            pipe.cmd("ZCOUNT").arg(self.key(*user)).arg(now).arg("+inf");
        }
        let done = async {
            let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
            pipe.query_async::<Vec<i64>>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        };
        match timed(done).await {
            Ok(counts) => Some(
                users
                    .iter()
                    .zip(counts)
                    .filter(|(_, open)| *open > 0)
                    .map(|(user, _)| *user)
                    .collect(),
            ),
            Err(error) => {
                tracing::warn!(%error, "presence: reading");
                None
            }
        }
    }

    /// Tells every gateway (this one too, through the same channel).
    pub async fn publish(&self, wire: &Wire) {
        let mut command = redis::cmd("PUBLISH");
        command
            .arg(self.signals_channel())
            .arg(serde_json::to_string(wire).expect("wire serializes"));
        if let Err(error) = self.run::<i64>(command).await {
            tracing::warn!(%error, "presence: publishing");
        }
    }

    async fn run<T: redis::FromRedisValue>(&self, command: redis::Cmd) -> Result<T, String> {
        let done = async {
            let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
            command
                .query_async::<T>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        };
        timed(done).await
    }

    /// Removes the users whose every session lapsed (their gateway died)
    /// and returns them.
    async fn sweep_once(&self) -> Result<Vec<Uuid>, String> {
        let mut command = redis::cmd("EVAL");
        command
            .arg(SWEEP)
            .arg(1)
            .arg(self.online_key())
            .arg(now_ms())
            .arg(format!("{}:presence:", self.prefix))
            .arg(SWEEP_BATCH);
        let gone: Vec<String> = self.run(command).await?;
        Ok(gone.iter().filter_map(|user| user.parse().ok()).collect())
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

/// Every [`SWEEP_EVERY`], announces offline the users whose sessions all
/// lapsed without leaving (a gateway that died): so `offline` comes within
/// [`TTL`] + [`SWEEP_EVERY`] of a crash. Every gateway sweeps; the script
/// removes each user once, so each is announced once.
pub async fn sweep(presence: Presence, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        match presence.sweep_once().await {
            Ok(gone) => {
                for user_id in gone {
                    presence
                        .publish(&Wire::Presence {
                            user_id,
                            online: false,
                        })
                        .await;
                }
            }
            Err(error) => tracing::debug!(%error, "presence: sweeping"),
        }
    }
}

/// Follows `prefix:signals` and hands each signal to the hub, as frames for
/// the room channels it concerns: a change of presence goes to the channel
/// of each room the user is in, typing to its room's channel. Reconnects
/// after an outage (signals sent meanwhile are lost: they are ephemeral).
pub async fn relay(presence: Presence, db: PgPool, hub: Hub) {
    let channel = presence.signals_channel();
    listen(&presence, &channel, &hub.shutdown.clone(), |payload| {
        let (db, hub) = (&db, &hub);
        async move {
            match serde_json::from_slice::<Wire>(&payload) {
                Ok(wire) => hand_over(db, hub, wire).await,
                Err(_) => tracing::warn!("presence: unreadable signal skipped"),
            }
            true
        }
    })
    .await;
}

/// Hands each message of the Redis pub/sub `channel` to `handle` until
/// shutdown, or until `handle` answers `false`; subscribes again after an
/// outage (what was published meanwhile is not seen).
pub(crate) async fn listen<F, R>(
    presence: &Presence,
    channel: &str,
    shutdown: &CancellationToken,
    mut handle: F,
) where
    F: FnMut(Vec<u8>) -> R,
    R: std::future::Future<Output = bool>,
{
    loop {
        let subscribed = async {
            let mut pubsub = presence.client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::select! {
            _ = shutdown.cancelled() => return,
            pubsub = subscribed => pubsub,
        };
        let mut messages = match pubsub {
            Ok(pubsub) => pubsub.into_on_message(),
            Err(error) => {
                tracing::warn!(%error, channel, "subscribing to a Redis channel");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return,
                message = messages.next() => message,
            };
            let Some(message) = message else { break };
            if !handle(message.get_payload_bytes().to_vec()).await {
                return;
            }
        }
        tracing::warn!(channel, "Redis subscription lost; subscribing again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn hand_over(db: &PgPool, hub: &Hub, wire: Wire) {
    match wire {
        Wire::Typing {
            room_id,
            user_id,
            is_typing,
        } => {
            let channel = Channel::Room(room_id).to_string();
            hub.send(Command::Signal(Signal {
                channel: channel.clone(),
                user_id,
                frame: ServerFrame::Typing {
                    channel,
                    user_id,
                    is_typing,
                },
            }));
        }
        Wire::Presence { user_id, online } => {
            let status = if online { "online" } else { "offline" };
            // The user's rooms a page at a time: however many rooms they
            // are in, one read holds at most a page.
            let mut after = Uuid::nil();
            loop {
                let rooms: Result<Vec<Uuid>, _> = sqlx::query_scalar(
                    "SELECT room_id FROM room_members WHERE user_id = $1 AND room_id > $2
                     ORDER BY room_id LIMIT $3",
                )
                .bind(user_id)
                .bind(after)
                .bind(ROOMS_PAGE)
                .fetch_all(db)
                .await;
                let rooms = match rooms {
                    Ok(rooms) => rooms,
                    Err(error) => {
                        tracing::warn!(%error, "presence: reading a user's rooms");
                        return;
                    }
                };
                for &room in &rooms {
                    let channel = Channel::Room(room).to_string();
                    hub.send(Command::Signal(Signal {
                        channel: channel.clone(),
                        user_id,
                        frame: ServerFrame::Presence {
                            channel,
                            user_id,
                            status: status.to_owned(),
                        },
                    }));
                }
                match rooms.last() {
                    Some(&last) if rooms.len() as i64 == ROOMS_PAGE => after = last,
                    _ => return,
                }
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
        assert!(presence.join(user, a).await, "the first session: online");
        assert!(!presence.join(user, b).await);
        assert!(!presence.join(user, a).await, "a refresh changes nothing");
        assert_eq!(presence.is_online(user).await, Some(true));
        assert!(!presence.leave(user, a).await);
        assert_eq!(presence.is_online(user).await, Some(true));
        assert!(presence.leave(user, b).await, "the last session: offline");
        assert_eq!(presence.is_online(user).await, Some(false));
        assert!(!presence.leave(user, b).await, "once");
        assert_eq!(presence.online_among(&[user]).await, Some(vec![]));
    }

    /// A gateway that died left its sessions behind: once they lapse, one
    /// sweep (of any gateway) takes the user offline, once.
    #[tokio::test]
    async fn a_sweep_takes_offline_whoever_only_lapsed_sessions_keep() {
        let presence = Presence::new(
            "redis://127.0.0.1:6379",
            &format!("presence_test_{}", Uuid::new_v4().simple()),
        )
        .unwrap();
        let (stale, live) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(presence.join(stale, Uuid::new_v4()).await);
        assert!(presence.join(live, Uuid::new_v4()).await);
        assert_eq!(presence.sweep_once().await, Ok(vec![]), "nobody lapsed yet");
        // The stale user's session as it stands TTL after its last refresh.
        let lapsed = now_ms() - 1;
        let mut command = redis::cmd("ZADD");
        command
            .arg(presence.key(stale))
            .arg(lapsed)
            .arg("dead-gateway");
        let mut conn = presence.pool.get().await.unwrap();
        command.query_async::<i64>(&mut conn).await.unwrap();
        redis::cmd("ZREMRANGEBYSCORE")
            .arg(presence.key(stale))
            .arg(lapsed + 1)
            .arg("+inf")
            .query_async::<i64>(&mut conn)
            .await
            .unwrap();
        redis::cmd("ZADD")
            .arg(presence.online_key())
            .arg(lapsed)
            .arg(stale.to_string())
            .query_async::<i64>(&mut conn)
            .await
            .unwrap();
        assert_eq!(presence.sweep_once().await, Ok(vec![stale]));
        assert_eq!(presence.sweep_once().await, Ok(vec![]), "announced once");
        assert_eq!(
            presence.online_among(&[stale, live]).await,
            Some(vec![live])
        );
    }

    #[tokio::test]
    async fn redis_down_is_unknown() {
        let presence = Presence::new("redis://127.0.0.1:1", "nowhere").unwrap();
        assert_eq!(presence.is_online(Uuid::new_v4()).await, None);
    }
}
