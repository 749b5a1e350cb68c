-- The spine of Tidings: everything here is derived from tidings.events and
-- can be dropped and rebuilt from it (`tidings rebuild`), except nothing:
-- the log is the only source of truth.

-- Where the projector stands in tidings.events, per partition. Written in
-- the same transaction as the rows an event produced, so a crash can neither
-- lose nor double an event: on assignment the projector seeks here.
CREATE TABLE projector_offsets (
    partition   integer PRIMARY KEY,
    next_offset bigint  NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The sequence rule, as the projector applies it: the version each aggregate
-- reached in the read models, the command of its last applied event, and the
-- recent commands that lost a race (see schemas/src/sequence.rs).
CREATE TABLE projected_aggregates (
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    version        bigint NOT NULL,
    last_command   uuid,
    lost_commands  uuid[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (aggregate_type, aggregate_id)
);

-- Accounts and profiles. Uniqueness of email and username is enforced by
-- the claim aggregates in the log, not here: these indexes are for lookups.
CREATE TABLE accounts (
    id              uuid PRIMARY KEY,
    username        text NOT NULL,
    email           text NOT NULL,
    password_hash   text NOT NULL,
    display_name    text NOT NULL,
    bio             text,
    avatar_url      text,
    -- Bumped by a password change: tokens carry the version they were issued at.
    token_version   integer NOT NULL DEFAULT 0,
    followers_count bigint NOT NULL DEFAULT 0,
    following_count bigint NOT NULL DEFAULT 0,
    posts_count     bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    -- The account aggregate's version this row reflects (cache versioning).
    version         bigint NOT NULL
);
CREATE INDEX accounts_username ON accounts (lower(username));
CREATE INDEX accounts_email ON accounts (lower(email));

-- Each realtime channel's counter and epoch. The epoch changes when a
-- channel's history is truncated, so a client knows its `since` is no longer
-- servable.
CREATE TABLE channels (
    channel text PRIMARY KEY,
    seq     bigint NOT NULL,
    epoch   bigint NOT NULL DEFAULT 1
);

-- What each channel should receive, written by the projector in its
-- transaction; the relay publishes unpublished rows to tidings.updates. A
-- client resuming with `since` is served from here.
CREATE TABLE channel_outbox (
    id           bigserial PRIMARY KEY,
    channel      text   NOT NULL,
    seq          bigint NOT NULL,
    epoch        bigint NOT NULL,
    event        text   NOT NULL,
    data         jsonb  NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    UNIQUE (channel, seq)
);
CREATE INDEX channel_outbox_unpublished ON channel_outbox (id) WHERE published_at IS NULL;

-- A decider's state of one partition of tidings.events, so that a new owner
-- folds only what came after `next_offset`.
CREATE TABLE decider_snapshots (
    partition   integer PRIMARY KEY,
    next_offset bigint NOT NULL,
    aggregates  jsonb  NOT NULL,
    taken_at    timestamptz NOT NULL
);
