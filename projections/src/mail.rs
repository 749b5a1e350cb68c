//! The mail outbox (`mail_outbox`) and the notification digests
//! (`notification_mails`): what is to be mailed, written in the transaction
//! that decided it, and the queries the mailer (`src/mailer.rs`) sends and
//! batches with.
//!
//! A mail is queued once ([`Mail::dedupe_key`]), claimed by one sender at a
//! time with a lease ([`claim_due`]), and retried with a doubling backoff
//! until [`MAX_ATTEMPTS`]; a sender that dies mid-send leaves its claim to
//! lapse, so a crash loses no mail (it may, rarely, send one twice: the
//! `Message-ID` derives from the row, for receivers that dedupe).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool, Postgres, Transaction};
use tidings_domain::account::{PasswordChangeReason, PasswordChanged};
use uuid::Uuid;

use crate::accounts::AccountRow;
use crate::notifications::SHOWN;

/// Attempts at one mail before it is given up (`failed_at`): with the
/// backoff below, about a day of trying.
pub const MAX_ATTEMPTS: i32 = 20;
/// The first retry's pause; each next one doubles, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(2 * 3600);
/// How long a claimed mail is left to its sender before another may take
/// it: longer than one SMTP exchange may last (the transport's timeout).
pub const LEASE: Duration = Duration::from_secs(120);
/// Notifications listed in one digest; the rest are counted.
pub const DIGEST_LIST: usize = 20;
/// Notifications one digest marks as mailed, at most: a user with more
/// unread in a day gets the rest in the next digest.
pub const DIGEST_MARK: i64 = 1000;

/// One mail to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// A mail with a key already queued is not queued again.
    pub dedupe_key: Option<String>,
    pub to: String,
    pub subject: String,
    pub body: String,
}

impl Mail {
    /// The reset mail, with the token (only ever here, and hashed in the
    /// database).
    pub fn password_reset(to: &str, username: &str, token: &str, ttl: Duration) -> Mail {
        let minutes = ttl.as_secs().div_ceil(60);
        Mail {
            dedupe_key: None,
            to: to.to_owned(),
            subject: "Reset your Tidings password".into(),
            body: format!(
                "Hello {username},\r\n\r\nsomeone (we hope you) asked to reset the password of your Tidings account.\r\n\
                 To choose a new one, send this token with POST /api/auth/password/reset within {minutes} minutes:\r\n\r\n\
                 reset token: {token}\r\n\r\n\
                 It works once, and a newer request ends it. If you did not ask, ignore this mail: your password stays as it is.\r\n"
            ),
        }
    }

    /// The confirmation of a password change.
    pub fn password_changed(
        account: &AccountRow,
        changed: &PasswordChanged,
        event_id: Uuid,
    ) -> Mail {
        let how = match changed.reason {
            PasswordChangeReason::Reset => "reset with a token sent to this address",
            PasswordChangeReason::Change => "changed by a signed-in session",
        };
        Mail {
            dedupe_key: Some(format!("password_changed:{event_id}")),
            to: account.email.clone(),
            subject: "Your Tidings password was changed".into(),
            body: format!(
                "Hello {},\r\n\r\nthe password of your Tidings account was {how} at {}.\r\n\
                 Every session signed in before has been signed out.\r\n\
                 If this was not you, reset your password at once.\r\n",
                account.username,
                changed.changed_at.format("%Y-%m-%d %H:%M:%S UTC"),
            ),
        }
    }
}

/// Queues a mail; `false` when one with the same key is already queued.
pub async fn enqueue(db: impl PgExecutor<'_>, mail: &Mail) -> Result<bool, sqlx::Error> {
    let queued = sqlx::query(
        "INSERT INTO mail_outbox (dedupe_key, to_address, subject, body) VALUES ($1, $2, $3, $4)
         ON CONFLICT (dedupe_key) DO NOTHING",
    )
    .bind(&mail.dedupe_key)
    .bind(&mail.to)
    .bind(&mail.subject)
    .bind(&mail.body)
    .execute(db)
    .await?;
    Ok(queued.rows_affected() == 1)
}

/// Mails waiting to be sent (neither sent nor given up).
pub async fn waiting(db: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM mail_outbox WHERE sent_at IS NULL AND failed_at IS NULL",
    )
    .fetch_one(db)
    .await
}

/// A mail claimed for sending.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Queued {
    pub id: i64,
    pub to_address: String,
    pub subject: String,
    pub body: String,
    /// Including this one.
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
}

/// Claims up to `limit` mails that are due, oldest first, for [`LEASE`].
pub async fn claim_due(db: &PgPool, limit: i64) -> Result<Vec<Queued>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE mail_outbox SET attempts = attempts + 1,
                next_attempt_at = now() + make_interval(secs => $2)
         WHERE id IN (SELECT id FROM mail_outbox
                      WHERE sent_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now()
                      ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING id, to_address, subject, body, attempts, created_at",
    )
    .bind(limit)
    .bind(LEASE.as_secs_f64())
    .fetch_all(db)
    .await
}

pub async fn mark_sent(db: &PgPool, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE mail_outbox SET sent_at = now(), last_error = NULL WHERE id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// The pause before attempt `attempts + 1`.
pub fn backoff(attempts: i32) -> Duration {
    let doublings = attempts.saturating_sub(1).clamp(0, 20) as u32;
    (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

/// Records a failed attempt: retried after the backoff, or given up after
/// [`MAX_ATTEMPTS`] (or at once for an error that no retry can mend).
pub async fn mark_failed(
    db: &PgPool,
    mail: &Queued,
    error: &str,
    permanent: bool,
) -> Result<(), sqlx::Error> {
    let give_up = permanent || mail.attempts >= MAX_ATTEMPTS;
    sqlx::query(
        "UPDATE mail_outbox SET last_error = $2,
                next_attempt_at = now() + make_interval(secs => $3),
                failed_at = CASE WHEN $4 THEN now() END
         WHERE id = $1",
    )
    .bind(mail.id)
    .bind(error)
    .bind(backoff(mail.attempts).as_secs_f64())
    .bind(give_up)
    .execute(db)
    .await?;
    Ok(())
}

/// Drops mails sent or given up more than a week ago, a bounded batch at a
/// time; how many went.
pub async fn prune(db: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM mail_outbox WHERE id IN (
           SELECT id FROM mail_outbox
           WHERE (sent_at IS NOT NULL OR failed_at IS NOT NULL) AND created_at < now() - interval '7 days'
           LIMIT 1000)",
    )
    .execute(db)
    .await?
    .rows_affected())
}

/// Users with unread notifications neither mailed nor seen live, created
/// in the last `lookback`, whose last digest is at least `interval` old.
pub async fn digest_candidates(
    db: &PgPool,
    interval: Duration,
    lookback: Duration,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT n.user_id FROM notifications n
         LEFT JOIN notification_mails m ON m.user_id = n.user_id
         WHERE n.read_at IS NULL AND n.mailed_at IS NULL
           AND n.created_at > now() - make_interval(secs => $2)
           AND (m.last_mailed_at IS NULL OR m.last_mailed_at <= now() - make_interval(secs => $1))
           AND {SHOWN}
         GROUP BY n.user_id
         LIMIT $3"
    ))
    .bind(interval.as_secs_f64())
    .bind(lookback.as_secs_f64())
    .bind(limit)
    .fetch_all(db)
    .await
}

/// One notification as a digest lists it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DigestLine {
    pub kind: String,
    pub actor_username: Option<String>,
    pub reaction: Option<String>,
    /// For `message`: the room's name, unless it is a direct conversation.
    pub room_name: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A digest of one user: the address, and the notifications it tells of,
/// newest first.
pub struct Digest {
    pub email: String,
    pub username: String,
    pub lines: Vec<DigestLine>,
}

/// Locks `user_id`'s digest row (created if missing) for this transaction,
/// then marks every unread notification not mailed yet as mailed and
/// returns them (at most [`DIGEST_MARK`]). `None` if another mailer holds
/// the user, the interval has not passed, or nothing is new. The caller
/// queues the digest in the same transaction, or, for a user who is online
/// (the notifications were pushed), just commits the marks.
pub async fn take_digest(
    tx: &mut Transaction<'_, Postgres>,
    user_id: Uuid,
    interval: Duration,
    lookback: Duration,
) -> Result<Option<Digest>, sqlx::Error> {
    sqlx::query(
        "INSERT INTO notification_mails (user_id) VALUES ($1)
         ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(user_id)
    .execute(&mut **tx)
    .await?;
    let due: Option<Uuid> = sqlx::query_scalar(
        "SELECT user_id FROM notification_mails
         WHERE user_id = $1
           AND (last_mailed_at IS NULL OR last_mailed_at <= now() - make_interval(secs => $2))
         FOR UPDATE SKIP LOCKED",
    )
    .bind(user_id)
    .bind(interval.as_secs_f64())
    .fetch_optional(&mut **tx)
    .await?;
    if due.is_none() {
        return Ok(None);
    }
    let account: Option<(String, String)> =
        sqlx::query_as("SELECT email, username FROM accounts WHERE id = $1")
            .bind(user_id)
            .fetch_optional(&mut **tx)
            .await?;
    let Some((email, username)) = account else {
        return Ok(None);
    };
    // What the user may not see (a deleted post's, say) is not mailed,
    // and is left unmarked.
    let lines: Vec<DigestLine> = sqlx::query_as(&format!(
        "WITH marked AS (
           UPDATE notifications SET mailed_at = now()
           WHERE id IN (SELECT n.id FROM notifications n
                        WHERE n.user_id = $1 AND n.read_at IS NULL AND n.mailed_at IS NULL
                          AND n.created_at > now() - make_interval(secs => $2)
                          AND {SHOWN}
                        ORDER BY n.created_at DESC
                        LIMIT $3)
           RETURNING id, kind, actor_id, reaction, room_id, created_at)
         SELECT m.kind, a.username AS actor_username, m.reaction, r.name AS room_name, m.created_at
         FROM marked m LEFT JOIN accounts a ON a.id = m.actor_id
         LEFT JOIN rooms r ON r.id = m.room_id AND r.kind = 'group'
         ORDER BY m.created_at DESC, m.id DESC"
    ))
    .bind(user_id)
    .bind(lookback.as_secs_f64())
    .bind(DIGEST_MARK)
    .fetch_all(&mut **tx)
    .await?;
    if lines.is_empty() {
        return Ok(None);
    }
    Ok(Some(Digest {
        email,
        username,
        lines,
    }))
}

/// Starts the user's interval: a digest was queued.
pub async fn digest_mailed(
    tx: &mut Transaction<'_, Postgres>,
    user_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE notification_mails SET last_mailed_at = now() WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl Digest {
    /// The digest as a mail.
    pub fn mail(&self, user_id: Uuid) -> Mail {
        let total = self.lines.len();
        let mut body = format!(
            "Hello {},\r\n\r\nwhile you were away on Tidings:\r\n\r\n",
            self.username
        );
        for line in self.lines.iter().take(DIGEST_LIST) {
            let who = line.actor_username.as_deref().unwrap_or("someone");
            let what = match (line.kind.as_str(), &line.reaction) {
                ("like", _) => "liked your post".to_owned(),
                ("reaction", Some(r)) => format!("reacted ({r}) to your post"),
                ("reaction", None) => "reacted to your post".to_owned(),
                ("comment", _) => "commented on your post".to_owned(),
                ("follow", _) => "followed you".to_owned(),
                ("mention", _) => "mentioned you".to_owned(),
                ("invite", _) => match &line.room_name {
                    Some(room) => format!("invited you to \"{room}\""),
                    None => "invited you to a room".to_owned(),
                },
                ("message", _) => match &line.room_name {
                    Some(room) => format!("wrote in \"{room}\""),
                    None => "sent you a direct message".to_owned(),
                },
                (other, _) => other.to_owned(),
            };
            body.push_str(&format!(
                "- {who} {what} ({})\r\n",
                line.created_at.format("%Y-%m-%d %H:%M UTC")
            ));
        }
        if total > DIGEST_LIST {
            body.push_str(&format!("- and {} more\r\n", total - DIGEST_LIST));
        }
        body.push_str("\r\nGET /api/notifications?unread=true lists them all.\r\n");
        let newest = self
            .lines
            .first()
            .map_or(0, |l| l.created_at.timestamp_micros());
        Mail {
            dedupe_key: Some(format!("digest:{user_id}:{newest}")),
            to: self.email.clone(),
            subject: match total {
                1 => "1 new notification on Tidings".to_owned(),
                n => format!("{n} new notifications on Tidings"),
            },
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_doubling_up_to_a_cap() {
        let pauses: Vec<u64> = (1..=4).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8]);
        assert_eq!(backoff(MAX_ATTEMPTS), MAX_BACKOFF);
        // About a day of trying in all.
        let total: Duration = (1..MAX_ATTEMPTS).map(backoff).sum();
        assert!(total > Duration::from_secs(12 * 3600), "{total:?}");
    }

    #[test]
    fn a_digest_lists_twenty_and_counts_the_rest() {
        let at = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 1, 2, 3, 4, 5).unwrap();
        let line = |kind: &str| DigestLine {
            kind: kind.into(),
            room_name: None,
            actor_username: Some("alice".into()),
            reaction: None,
            created_at: at,
        };
        let digest = Digest {
            email: "bob@example.com".into(),
            username: "bob".into(),
            lines: (0..25).map(|_| line("follow")).collect(),
        };
        let mail = digest.mail(Uuid::from_u128(1));
        assert_eq!(mail.subject, "25 new notifications on Tidings");
        assert_eq!(mail.body.matches("alice followed you").count(), DIGEST_LIST);
        assert!(mail.body.contains("and 5 more"), "{}", mail.body);
        let one = Digest {
            lines: vec![line("mention")],
            ..digest
        };
        assert_eq!(
            one.mail(Uuid::from_u128(1)).subject,
            "1 new notification on Tidings"
        );
    }
}
