-- Where each applied event of an aggregate stands in the log, so that an
-- admin can fold one aggregate as of an instant (`GET
-- /api/admin/aggregates/{type}/{id}?as_of=`) by fetching just its events
-- from Kafka, without reading the log from the start. The projector writes
-- the rows of a batch in one statement, in the batch's transaction; only
-- events the sequence rule admits are indexed, so the index lists an
-- aggregate's history exactly as every reader folds it.
CREATE TABLE event_index (
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    sequence       bigint      NOT NULL,
    partition      integer     NOT NULL,
    "offset"       bigint      NOT NULL,
    occurred_at    timestamptz NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);
