//! Connecting to PostgreSQL, migrating, and read-your-writes.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tidings_schemas::Position;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
}

/// A pool of a role's own, connected on first use, so that one role
/// exhausting or losing its connections leaves the others unharmed. Its
/// sessions are named `tidings-<role>` (`pg_stat_activity.application_name`).
pub fn role_pool(url: &str, role: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options.application_name(&format!("tidings-{role}"))))
}

pub async fn migrate(db: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(db).await
}

/// How often a read that carries `X-Min-Position` looks at the projector's
/// offsets while it waits.
const POSITION_POLL: Duration = Duration::from_millis(5);

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

/// Waits, at most `limit`, until the projector has passed `position`.
pub async fn wait_for(db: &PgPool, position: &Position, limit: Duration) -> Result<(), WaitError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if reached(db, position).await? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(WaitError::TimedOut(limit));
        }
        tokio::time::sleep(POSITION_POLL).await;
    }
}
