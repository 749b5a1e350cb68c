-- Webhooks: the endpoints (a read model of the webhook aggregates, kept by
-- the projector), their secrets (written by the API when it registers one;
-- never in the log), and the deliveries (the dispatcher's queue and log,
-- one row per endpoint and event).
CREATE TABLE webhook_endpoints (
    id            uuid PRIMARY KEY,
    owner_id      uuid        NOT NULL,
    url           text        NOT NULL,
    event_types   text[]      NOT NULL,
    scope         text        NOT NULL CHECK (scope IN ('own', 'all')),
    status        text        NOT NULL CHECK (status IN ('active', 'disabled')),
    disabled_reason text,
    registered_at timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
CREATE INDEX webhook_endpoints_owner ON webhook_endpoints (owner_id, registered_at DESC);

CREATE TABLE webhook_secrets (
    endpoint_id uuid PRIMARY KEY,
    -- Who registered it: the cap of endpoints per user counts these rows.
    owner_id    uuid        NOT NULL,
    secret      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_secrets_owner ON webhook_secrets (owner_id);

-- Since when every attempt at an endpoint has failed (the dispatcher's,
-- not a read model): an endpoint failing longer than the limit is disabled.
CREATE TABLE webhook_failures (
    endpoint_id   uuid PRIMARY KEY,
    failing_since timestamptz NOT NULL
);

CREATE TABLE webhook_deliveries (
    id             uuid PRIMARY KEY,
    endpoint_id    uuid        NOT NULL,
    event_id       uuid        NOT NULL,
    event_type     text        NOT NULL,
    -- `<type>:<id>`: the events of one aggregate go out in log order.
    aggregate_key  text        NOT NULL,
    partition      integer     NOT NULL,
    "offset"       bigint      NOT NULL,
    body           text        NOT NULL,
    -- pending (due at next_attempt_at), delivered, failed (a final answer),
    -- dead (attempts used up, or the endpoint's queue was full).
    status         text        NOT NULL CHECK (status IN ('pending', 'delivered', 'failed', 'dead')),
    attempts       integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    leased_until   timestamptz,
    last_status    integer,
    last_error     text,
    last_latency_ms integer,
    last_response  text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_order ON webhook_deliveries (endpoint_id, aggregate_key, partition, "offset") WHERE status = 'pending';
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (endpoint_id, created_at DESC, id DESC);
