//! The registration sweeper: finds accounts opened long ago and still
//! pending (their registration died between its steps and was never retried)
//! and unwinds them — abandon, then release the claims — so their email and
//! username are free again. It only proposes: whether an account is abandoned
//! is decided by its own decider, so a registration that activates at the
//! last moment keeps everything.

use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tidings_commands::registration::{unwind, Saga, Unwound};
use tidings_commands::CommandBus;
use tidings_projections::accounts;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Registrations unwound per round, at most.
const ROUND: i64 = 100;

pub async fn run(
    bus: CommandBus,
    db: PgPool,
    older_than: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let every = (older_than / 2).clamp(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
        let before = Utc::now() - chrono::Duration::from_std(older_than)?;
        let stale = match accounts::pending_before(&db, before, ROUND).await {
            Ok(stale) => stale,
            Err(error) => {
                tracing::warn!(%error, "looking for unfinished registrations");
                continue;
            }
        };
        for (user_id, email, username) in stale {
            let saga = Saga {
                user_id,
                email,
                username,
                correlation_id: Uuid::new_v4(),
                issued_at: Utc::now(),
                idempotency_key: None,
            };
            match unwind(&bus, &saga).await {
                Ok(Unwound::Released) => {
                    metrics::counter!("tidings_registrations_abandoned_total").increment(1);
                    tracing::info!(%user_id, "unfinished registration abandoned; its claims are free");
                }
                Ok(other) => {
                    tracing::debug!(%user_id, ?other, "unfinished registration left as it is")
                }
                Err(error) => {
                    tracing::warn!(%error, %user_id, "unwinding an unfinished registration")
                }
            }
        }
    }
}
