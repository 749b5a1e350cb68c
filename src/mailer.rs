//! The mailer: sends the mail outbox (`tidings_projections::mail`) through
//! SMTP, and queues the notification digests.
//!
//! Both run with the projector role, any number of processes at once: a
//! mail is claimed with a lease (`FOR UPDATE SKIP LOCKED`) and a digest
//! under its user's row lock, so no two processes send the same one. A
//! failed send is retried after a doubling pause, up to
//! `mail::MAX_ATTEMPTS`; an SMTP server that is down only delays mail.
//!
//! Digests go to users with unread notifications and no socket open on any
//! gateway ([`Presence`]), at most one per user per interval, listing what
//! came since the last one. Notifications created while the user was online
//! count as seen (they were pushed). While Redis cannot tell who is online,
//! no digest goes out.

use std::time::Duration;

use anyhow::Context as _;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sqlx::PgPool;
use tidings_projections::{credentials, mail};
use tidings_realtime::presence::Presence;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::settings::MailSettings;

/// Mails claimed per round.
const SEND_BATCH: i64 = 16;
/// How often the outbox is looked at when it had nothing due.
const SEND_POLL: Duration = Duration::from_millis(500);
/// The longest one SMTP exchange may take (well under the claim's lease).
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Users looked at per digest round.
const DIGEST_BATCH: i64 = 100;
/// Notifications older than this are never mailed.
const DIGEST_LOOKBACK: Duration = Duration::from_secs(24 * 3600);
/// How often sent mail, old reset tokens and rate-limit entries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Sends due mail until `stop`.
pub async fn send(
    db: PgPool,
    settings: MailSettings,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let url = settings
        .smtp_url
        .as_deref()
        .context("no TIDINGS_SMTP_URL to send mail through")?;
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
        .context("TIDINGS_SMTP_URL is not an SMTP URL")?
        .timeout(Some(SMTP_TIMEOUT))
        .build();
    let from: Mailbox = settings
        .mail_from
        .parse()
        .context("TIDINGS_MAIL_FROM is not a mail address")?;
    loop {
        let batch = mail::claim_due(&db, SEND_BATCH).await?;
        for queued in &batch {
            send_one(&db, &transport, &from, queued).await?;
        }
        if batch.len() as i64 == SEND_BATCH {
            continue;
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(SEND_POLL) => {}
        }
    }
}

async fn send_one(
    db: &PgPool,
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    from: &Mailbox,
    queued: &mail::Queued,
) -> anyhow::Result<()> {
    let message = match message(from, queued) {
        Ok(message) => message,
        Err(error) => {
            // No retry mends an address that does not parse.
            tracing::warn!(mail = queued.id, %error, "a mail that cannot be written is given up");
            metrics::counter!("tidings_mail_failed_total").increment(1);
            return Ok(mail::mark_failed(db, queued, &error.to_string(), true).await?);
        }
    };
    match transport.send(message).await {
        Ok(_) => {
            metrics::counter!("tidings_mail_sent_total").increment(1);
            mail::mark_sent(db, queued.id).await?;
        }
        Err(error) => {
            let permanent = error.is_permanent();
            tracing::warn!(mail = queued.id, attempt = queued.attempts, permanent, %error, "sending a mail");
            metrics::counter!("tidings_mail_send_errors_total").increment(1);
            if permanent || queued.attempts >= mail::MAX_ATTEMPTS {
                metrics::counter!("tidings_mail_failed_total").increment(1);
            }
            mail::mark_failed(db, queued, &error.to_string(), permanent).await?;
        }
    }
    Ok(())
}

/// The queued mail as a message. Its `Message-ID` derives from the row, so
/// a mail sent twice (its sender died after the server took it and before
/// it was marked) is the same message to whoever dedupes.
fn message(from: &Mailbox, queued: &mail::Queued) -> anyhow::Result<Message> {
    let to: Mailbox = queued.to_address.parse()?;
    Ok(Message::builder()
        .from(from.clone())
        .to(to)
        .subject(queued.subject.clone())
        .message_id(Some(format!(
            "<{}.{}@tidings>",
            queued.id,
            queued.created_at.timestamp_micros()
        )))
        .header(ContentType::TEXT_PLAIN)
        .body(queued.body.clone())?)
}

/// Queues notification digests (when an interval is set) and prunes what
/// the mail tables no longer need, until `stop`.
pub async fn upkeep(
    db: PgPool,
    presence: Presence,
    settings: MailSettings,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let interval = settings.notification_interval();
    // Often enough that a digest is at most a fraction of the interval late.
    let tick = (interval / 4).clamp(Duration::from_millis(200), Duration::from_secs(30));
    let mut pruned = Instant::now() - PRUNE_EVERY;
    loop {
        if pruned.elapsed() >= PRUNE_EVERY {
            mail::prune(&db).await?;
            credentials::prune_resets(&db).await?;
            pruned = Instant::now();
        }
        if !interval.is_zero() {
            digests(&db, &presence, interval, settings.mail_queue_max).await?;
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

/// One round of digests.
async fn digests(
    db: &PgPool,
    presence: &Presence,
    interval: Duration,
    queue_max: i64,
) -> anyhow::Result<()> {
    // A full queue takes no digests: they wait (the notifications stay
    // unmailed) rather than push out what is already queued.
    if mail::waiting(db).await? >= queue_max {
        return Ok(());
    }
    for user in mail::digest_candidates(db, interval, DIGEST_LOOKBACK, DIGEST_BATCH).await? {
        let Some(online) = presence.is_online(user).await else {
            return Ok(());
        };
        let mut tx = db.begin().await?;
        let Some(digest) = mail::take_digest(&mut tx, user, interval, DIGEST_LOOKBACK).await?
        else {
            continue;
        };
        // Online, the notifications were pushed: marked, not mailed.
        if !online {
            mail::enqueue(&mut *tx, &digest.mail(user)).await?;
            mail::digest_mailed(&mut tx, user).await?;
            metrics::counter!("tidings_notification_digests_total").increment(1);
        }
        tx.commit().await?;
    }
    Ok(())
}
