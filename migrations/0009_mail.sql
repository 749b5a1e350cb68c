-- Passwords (reset and change) and mail. Like `credentials`, none of these
-- tables is derived from tidings.events: they are the API's and the
-- mailer's own memory, and a rebuild into a fresh database must bring
-- `pending_credentials` along with `credentials` (the rest may be lost at
-- the cost of a reset link that no longer works or a digest mailed again).

-- A new password's hash, written by the API before its command
-- `account.change_password` (`command_id`) that moves the account to
-- `token_version`. The projector, applying the `account.password_changed`
-- of that command, moves it into `credentials` in the same transaction as
-- the new token version: the event is the commit point, and a crash at any
-- step leaves either the old password and tokens or the new ones. Keyed by
-- the command, so of two changes racing for one version only the hash of
-- the one decided is applied; rows at or below an applied version are
-- deleted with it, and a row whose command was refused is never applied.
CREATE TABLE pending_credentials (
    user_id       uuid    NOT NULL,
    command_id    uuid    NOT NULL,
    token_version integer NOT NULL,
    password_hash text    NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, command_id)
);

-- Password reset tokens, by the SHA-256 of the token (the token itself is
-- only in the mail). A token is single use (`used_at`), expires, and a newer
-- one of the same user ends the older ones (their `used_at` is set too).
CREATE TABLE password_resets (
    token_hash bytea PRIMARY KEY,
    user_id    uuid  NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX password_resets_user_open ON password_resets (user_id) WHERE used_at IS NULL;
CREATE INDEX password_resets_expires_at ON password_resets (expires_at);

-- When a reset was last asked for an email, by the SHA-256 of the
-- lowercased address: kept for every address asked about, known or not, so
-- that the answer and its work are the same for both, and nobody can mail
-- an address more than once per interval. Pruned after a day.
CREATE TABLE password_forgot_limits (
    email_hash bytea PRIMARY KEY,
    last_at    timestamptz NOT NULL
);

-- The mail outbox: every mail is written here first (in the transaction
-- that decided it) and sent by the mailer, with bounded retries and
-- backoff, so neither a crash nor an SMTP server that is down loses one.
-- `dedupe_key` keeps a mail decided twice (a replayed event) from being
-- queued twice.
CREATE TABLE mail_outbox (
    id              bigserial PRIMARY KEY,
    dedupe_key      text UNIQUE,
    to_address      text NOT NULL,
    subject         text NOT NULL,
    body            text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    -- Also the lease of a mail being sent: a sender claims a mail by moving
    -- this ahead, so a sender that dies mid-send leaves it to another later.
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    -- Given up after the last attempt; kept for an operator to see why.
    failed_at       timestamptz,
    last_error      text
);
CREATE INDEX mail_outbox_due ON mail_outbox (next_attempt_at) WHERE sent_at IS NULL AND failed_at IS NULL;
CREATE INDEX mail_outbox_done ON mail_outbox (created_at) WHERE sent_at IS NOT NULL OR failed_at IS NOT NULL;

-- Notification digests: per user, when the last digest went out (at most
-- one per interval); the row is also the lock that keeps two mailers from
-- digesting one user at once.
CREATE TABLE notification_mails (
    user_id        uuid PRIMARY KEY,
    last_mailed_at timestamptz
);

-- When a notification was mailed in a digest, or seen live (pushed to an
-- open socket) so that it is never mailed: set in the transaction that
-- queues the digest, so a restart does not mail twice. Marked one by one
-- rather than "up to a time", because notifications are projected out of
-- their time order (partitions). Not derived from the log: a rebuild of
-- the read models forgets it (unread notifications of the last day may then
-- be mailed again).
ALTER TABLE notifications ADD COLUMN mailed_at timestamptz;
-- The digests look for unread notifications not mailed yet, by time.
CREATE INDEX notifications_unmailed ON notifications (created_at) WHERE read_at IS NULL AND mailed_at IS NULL;
