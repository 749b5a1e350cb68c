-- The relay keeps one position in the outbox instead of marking each row it
-- publishes: marking rewrote every row (its `data` with it) once more, the
-- largest share of the outbox's writes.
--
-- A row carries the transaction that wrote it (`tx`). A transaction older
-- than every one still running has committed or rolled back, so the rows of
-- such transactions are all there is of them: the relay reads, in
-- (`tx`, `id`) order, only rows of transactions older than the oldest one
-- running, and no row can appear behind its position afterwards.
ALTER TABLE channel_outbox ADD COLUMN tx xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX channel_outbox_relay ON channel_outbox (tx, id);

-- Every row at or before (`tx`, `id`) has been published; one row.
CREATE TABLE outbox_relay (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    tx           xid8        NOT NULL,
    id           bigint      NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now()
);

-- The rows already here were all written with this migration's transaction
-- id: the position stands just before the first unpublished one.
INSERT INTO outbox_relay (tx, id)
SELECT pg_current_xact_id(),
       coalesce((SELECT min(id) - 1 FROM channel_outbox WHERE published_at IS NULL),
                (SELECT max(id) FROM channel_outbox),
                0);

DROP INDEX channel_outbox_unpublished;
ALTER TABLE channel_outbox DROP COLUMN published_at;
