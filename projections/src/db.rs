//! Connecting to PostgreSQL, migrating, and read-your-writes: waiting until
//! the projector has passed a position, woken by its commits.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::PgPool;
use tidings_schemas::Position;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A pooled connection idle longer than this is pinged before it is handed
/// out (PostgreSQL may have restarted meanwhile). One in steady use is not:
/// a ping on every checkout was a round trip per query, about a tenth of a
/// write's CPU under load.
const PING_IF_IDLE: Duration = Duration::from_secs(10);

fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    pool_options(max_connections).connect_with(options).await
}

/// A pool of a role's own, connected on first use, so that one role
/// exhausting or losing its connections leaves the others unharmed. Its
/// sessions are named `tidings-<role>` (`pg_stat_activity.application_name`).
pub fn role_pool(url: &str, role: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    Ok(pool_options(max_connections)
        .connect_lazy_with(options.application_name(&format!("tidings-{role}"))))
}

/// A pool whose sessions see `schema` only (`search_path`), named
/// `tidings-<role>`: what `tidings rebuild` migrates and projects into,
/// with the same queries as the live roles.
pub async fn connect_in_schema(
    url: &str,
    schema: &str,
    role: &str,
    max_connections: u32,
) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    let options = options
        .application_name(&format!("tidings-{role}"))
        .options([("search_path", schema)]);
    pool_options(max_connections).connect_with(options).await
}

pub async fn migrate(db: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(db).await
}

/// The channel on which projectors announce their commits to other
/// processes (`NOTIFY`, payload `partition:next_offset,…`).
pub const PROGRESS_CHANNEL: &str = "tidings_projector_progress";
/// How often a listener re-reads the offsets even when nothing is announced:
/// a notification lost while its connection was re-made delays a waiter by
/// this much at most. One query per process, not per waiter.
const PROGRESS_REFRESH: Duration = Duration::from_secs(1);

/// Whether the projector has passed every event `position` covers.
pub async fn reached(db: &PgPool, position: &Position) -> Result<bool, sqlx::Error> {
    if position.is_empty() {
        return Ok(true);
    }
    let partitions: Vec<i32> = position.partitions().map(|(p, _)| p).collect();
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, next_offset FROM projector_offsets WHERE partition = ANY($1)",
    )
    .bind(&partitions)
    .fetch_all(db)
    .await?;
    Ok(position.reached_by(|p| rows.iter().find(|(rp, _)| *rp == p).map(|(_, next)| *next)))
}

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("the read model has not reached the position within {0:?}")]
    TimedOut(Duration),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// How far the projector has committed (next offset per partition), as this
/// process last heard: from a projector in this process directly, from
/// projectors elsewhere through `LISTEN`. Readers waiting for a position
/// wake when it moves instead of polling PostgreSQL. Clones share it.
#[derive(Debug, Clone)]
pub struct Progress {
    db: PgPool,
    offsets: watch::Sender<BTreeMap<i32, i64>>,
}

impl Progress {
    /// Progress read through `db` when a waiter starts.
    pub fn new(db: PgPool) -> Self {
        Progress {
            db,
            offsets: watch::Sender::new(BTreeMap::new()),
        }
    }

    /// Notes committed next offsets; offsets only ever move forward, so an
    /// old announcement arriving late changes nothing.
    pub fn advance(&self, committed: impl IntoIterator<Item = (i32, i64)>) {
        let committed: Vec<(i32, i64)> = committed.into_iter().collect();
        self.offsets.send_if_modified(|offsets| {
            let mut moved = false;
            for &(partition, next) in &committed {
                match offsets.get_mut(&partition) {
                    Some(known) if *known >= next => {}
                    Some(known) => {
                        *known = next;
                        moved = true;
                    }
                    None => {
                        offsets.insert(partition, next);
                        moved = true;
                    }
                }
            }
            moved
        });
    }

    /// Waits, at most `limit`, until the projector has passed `position`.
    pub async fn wait_for(&self, position: &Position, limit: Duration) -> Result<(), WaitError> {
        let mut seen = self.offsets.subscribe();
        // What this process heard is enough when it is that far (offsets
        // only move forward). PostgreSQL is asked only about a partition
        // this process has heard nothing of yet (it just started): once it
        // has, it hears every commit, and a notification lost on the way is
        // made up by the listener's refresh within PROGRESS_REFRESH. A write
        // waiting for its own projection costs no query.
        let (heard, known) = {
            let offsets = seen.borrow_and_update();
            (
                position.reached_by(|p| offsets.get(&p).copied()),
                position.partitions().all(|(p, _)| offsets.contains_key(&p)),
            )
        };
        if heard || (!known && reached(&self.db, position).await?) {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let passed = {
                let offsets = seen.borrow_and_update();
                position.reached_by(|p| offsets.get(&p).copied())
            };
            if passed {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, seen.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives as long as `self`: cannot happen.
                Ok(Err(_)) => return Err(WaitError::TimedOut(limit)),
                Err(_) => return Err(WaitError::TimedOut(limit)),
            }
        }
    }

    /// Follows the commits of projectors in any process (`LISTEN` on a
    /// connection of `listen_db`), until `shutdown`.
    pub async fn listen(
        self,
        listen_db: PgPool,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut listener = PgListener::connect_with(&listen_db).await?;
        listener.listen(PROGRESS_CHANNEL).await?;
        let mut refresh = tokio::time::interval(PROGRESS_REFRESH);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = refresh.tick() => {
                    let rows: Vec<(i32, i64)> =
                        sqlx::query_as("SELECT partition, next_offset FROM projector_offsets")
                            .fetch_all(&self.db)
                            .await?;
                    self.advance(rows);
                }
                notification = listener.recv() => {
                    self.advance(parse_offsets(notification?.payload()));
                }
            }
        }
    }
}

/// Tells the other processes what a projector commits: sent inside its
/// transaction, the notification is delivered with the commit, and never
/// without it.
pub async fn announce(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    committed: &[(i32, i64)],
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(PROGRESS_CHANNEL)
        .bind(format_offsets(committed))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Next offsets as `partition:next,…`.
pub fn format_offsets(offsets: &[(i32, i64)]) -> String {
    let pairs: Vec<String> = offsets.iter().map(|(p, n)| format!("{p}:{n}")).collect();
    pairs.join(",")
}

/// `partition:next,…`; anything unreadable is left out.
pub fn parse_offsets(payload: &str) -> Vec<(i32, i64)> {
    payload
        .split(',')
        .filter_map(|pair| {
            let (p, n) = pair.split_once(':')?;
            Some((p.parse().ok()?, n.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_offsets_read_back() {
        assert_eq!(parse_offsets("0:12,3:40"), [(0, 12), (3, 40)]);
        assert_eq!(parse_offsets("0:x,,2:5"), [(2, 5)]);
        assert_eq!(
            parse_offsets(&format_offsets(&[(1, 2), (3, 4)])),
            [(1, 2), (3, 4)]
        );
    }
}
