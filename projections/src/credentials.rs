//! The private store of password hashes (`credentials`): the one table not
//! derived from the log, so that no hash is ever in an event. The API writes
//! a registration's hash before its first command; login reads it. Events
//! written before `account.registered` v2 still carry their hash, and the
//! projector moves it here.

use sqlx::PgExecutor;
use uuid::Uuid;

/// Keeps the hash of `user_id`'s password; the first one stored stays (a
/// retried registration is the same account with the same password).
pub async fn store(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    password_hash: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO credentials (user_id, password_hash) VALUES ($1, $2)
         ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(user_id)
    .bind(password_hash)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn password_hash(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT password_hash FROM credentials WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(db)
        .await
}
