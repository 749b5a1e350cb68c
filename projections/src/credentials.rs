//! The private store of password hashes (`credentials`): the one table not
//! derived from the log, so that no hash is ever in an event. The API writes
//! a registration's hash before its first command; login reads it. Events
//! written before `account.registered` v2 still carry their hash, and the
//! projector moves it here.
//!
//! A password change writes the new hash to `pending_credentials` first,
//! keyed by the token version its command moves the account to; the
//! projector puts it in force with the event ([`put_in_force`]). Reset
//! tokens (by their SHA-256) and the per-address limit on asking for them
//! live here too.

use sqlx::{PgExecutor, Postgres, Transaction};
use tidings_domain::account::PasswordChanged;
use tidings_schemas::{Channel, EventEnvelope};
use uuid::Uuid;

use crate::accounts::AccountRow;
use crate::outbox::ChannelUpdate;
use crate::projection::Effects;

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

/// Keeps the hash of the password that the command `command_id`
/// (`account.change_password` to `token_version`) will put in force; the
/// projector moves it into `credentials` when it applies that command's
/// event ([`put_in_force`]). A retry of the same command (same
/// `Idempotency-Key`) writes the row again: the last hash written before
/// the event is applied is the one in force.
pub async fn store_pending(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    command_id: Uuid,
    token_version: i32,
    password_hash: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO pending_credentials (user_id, command_id, token_version, password_hash)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id, command_id) DO UPDATE
           SET token_version = EXCLUDED.token_version, password_hash = EXCLUDED.password_hash, created_at = now()",
    )
    .bind(user_id)
    .bind(command_id)
    .bind(token_version)
    .bind(password_hash)
    .execute(db)
    .await?;
    Ok(())
}

/// A password change, applied inside the projector's transaction: the
/// pending hash of that version replaces the one in `credentials`, the
/// account moves to the new token version (so every older token fails
/// `authenticate` on every process as soon as this commits), and a
/// confirmation mail is queued. If the pending hash is missing (a rebuild
/// into a database that had already applied it), `credentials` keeps what
/// it has, which is then that same hash.
pub async fn put_in_force(
    tx: &mut Transaction<'_, Postgres>,
    envelope: &EventEnvelope,
    user_id: Uuid,
    changed: &PasswordChanged,
) -> Result<Effects, sqlx::Error> {
    sqlx::query(
        "INSERT INTO credentials (user_id, password_hash)
         SELECT user_id, password_hash FROM pending_credentials
         WHERE user_id = $1 AND token_version = $2 AND command_id = $3
         ON CONFLICT (user_id) DO UPDATE SET password_hash = EXCLUDED.password_hash",
    )
    .bind(user_id)
    .bind(changed.token_version)
    .bind(envelope.command_id)
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM pending_credentials WHERE user_id = $1 AND token_version <= $2")
        .bind(user_id)
        .bind(changed.token_version)
        .execute(&mut **tx)
        .await?;
    // A reset link mailed before the change must not change it again.
    sqlx::query("UPDATE password_resets SET used_at = $2 WHERE user_id = $1 AND used_at IS NULL")
        .bind(user_id)
        .bind(changed.changed_at)
        .execute(&mut **tx)
        .await?;
    let account = sqlx::query_as::<_, AccountRow>(
        "UPDATE accounts SET token_version = $2, updated_at = $3, version = version + 1
         WHERE id = $1
         RETURNING *",
    )
    .bind(user_id)
    .bind(changed.token_version)
    .bind(changed.changed_at)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(account) = account else {
        return Ok(Effects::default());
    };
    // Only a recent change is confirmed: replaying an old log into a fresh
    // database mails nobody about changes long past.
    if chrono::Utc::now() - envelope.occurred_at < CONFIRM_WITHIN {
        crate::mail::enqueue(
            &mut **tx,
            &crate::mail::Mail::password_changed(&account, changed, envelope.event_id),
        )
        .await?;
    }
    // The gateway closes the sockets of older tokens when this reaches
    // the user's channel (`realtime/src/session.rs`).
    let update = ChannelUpdate::new(
        Channel::User(user_id),
        PASSWORD_CHANGED_UPDATE,
        serde_json::json!({ "token_version": changed.token_version, "changed_at": changed.changed_at }),
    );
    Ok(Effects {
        accounts: vec![account],
        updates: vec![update],
        ..Effects::default()
    })
}

/// The update on `user:{id}` that says tokens below `token_version` are
/// revoked.
pub const PASSWORD_CHANGED_UPDATE: &str = "password.changed";

/// How old a password change may be and still be confirmed by mail.
const CONFIRM_WITHIN: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// Where a password reset token stands, by the SHA-256 of the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetToken {
    /// Usable: the user it resets.
    Open(Uuid),
    /// Unknown, expired, used, or ended by a newer one.
    Invalid,
}

/// Looks a reset token up without using it.
pub async fn reset_token(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
) -> Result<ResetToken, sqlx::Error> {
    let user: Option<Uuid> = sqlx::query_scalar(
        "SELECT user_id FROM password_resets
         WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()",
    )
    .bind(token_hash)
    .fetch_optional(db)
    .await?;
    Ok(user.map_or(ResetToken::Invalid, ResetToken::Open))
}

/// Uses a reset token: of two requests with the same token, one gets it.
pub async fn use_reset_token(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
) -> Result<ResetToken, sqlx::Error> {
    let user: Option<Uuid> = sqlx::query_scalar(
        "UPDATE password_resets SET used_at = now()
         WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()
         RETURNING user_id",
    )
    .bind(token_hash)
    .fetch_optional(db)
    .await?;
    Ok(user.map_or(ResetToken::Invalid, ResetToken::Open))
}

/// Gives back a token that was used by a reset that then failed before its
/// command was accepted (the log could not be reached), so that the user
/// can try again with the same mail.
pub async fn release_reset_token(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE password_resets SET used_at = NULL WHERE token_hash = $1")
        .bind(token_hash)
        .execute(db)
        .await?;
    Ok(())
}

/// Records that a reset was asked for the address whose SHA-256 is
/// `email_hash`, unless one was asked less than `interval` ago: whether this
/// request may send a mail.
pub async fn may_send_reset(
    db: impl PgExecutor<'_>,
    email_hash: &[u8],
    interval: std::time::Duration,
) -> Result<bool, sqlx::Error> {
    let taken: Option<i32> = sqlx::query_scalar(
        "INSERT INTO password_forgot_limits (email_hash, last_at) VALUES ($1, now())
         ON CONFLICT (email_hash) DO UPDATE SET last_at = now()
           WHERE password_forgot_limits.last_at <= now() - make_interval(secs => $2)
         RETURNING 1",
    )
    .bind(email_hash)
    .bind(interval.as_secs_f64())
    .fetch_optional(db)
    .await?;
    Ok(taken.is_some())
}

/// Keeps a new reset token of `user_id` (by its SHA-256), ending the older
/// ones, and queues its mail, in one transaction.
pub async fn issue_reset_token(
    tx: &mut Transaction<'_, Postgres>,
    user_id: Uuid,
    token_hash: &[u8],
    ttl: std::time::Duration,
    mail: &crate::mail::Mail,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE password_resets SET used_at = now() WHERE user_id = $1 AND used_at IS NULL",
    )
    .bind(user_id)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO password_resets (token_hash, user_id, expires_at)
         VALUES ($1, $2, now() + make_interval(secs => $3))",
    )
    .bind(token_hash)
    .bind(user_id)
    .bind(ttl.as_secs_f64())
    .execute(&mut **tx)
    .await?;
    crate::mail::enqueue(&mut **tx, mail).await?;
    Ok(())
}

/// Drops reset tokens and rate-limit entries that can no longer matter, a
/// bounded batch at a time; how many rows went.
pub async fn prune_resets(db: &sqlx::PgPool) -> Result<u64, sqlx::Error> {
    let tokens = sqlx::query(
        "DELETE FROM password_resets WHERE token_hash IN (
           SELECT token_hash FROM password_resets WHERE expires_at < now() - interval '1 day' LIMIT 1000)",
    )
    .execute(db)
    .await?
    .rows_affected();
    let limits = sqlx::query(
        "DELETE FROM password_forgot_limits WHERE email_hash IN (
           SELECT email_hash FROM password_forgot_limits WHERE last_at < now() - interval '1 day' LIMIT 1000)",
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(tokens + limits)
}
