-- Idempotency keys (API.md, Conventions; api/src/idempotency.rs). A write
-- that carries `Idempotency-Key` claims the key here before its handler
-- runs, and stores its final answer here after; a retry with the same key
-- gets that answer back instead of running again.
--
-- Unlike the read models, these rows are not derived from the log: they are
-- the API's memory of what it answered. Losing them is safe (a retry then
-- runs again, and its commands, whose ids derive from scope, key and
-- fingerprint, get their first outcomes from the deciders), only less
-- convenient.
CREATE TABLE idempotency_keys (
    -- Whose key it is: `user:<id>` for a signed-in caller, or
    -- `route:<METHOD> <route>` on an anonymous route (register, login).
    scope        text NOT NULL,
    key          text NOT NULL,
    -- HMAC-SHA256 of method, path and body under a key derived from the
    -- server's secret: bodies hold passwords, so never the body itself, nor
    -- a plain hash of it that could be guessed offline.
    fingerprint  bytea NOT NULL,
    -- The attempt that holds the key: a retry takes over a claim only once
    -- its lease ran out (its process died), and only the holder stores.
    attempt      uuid NOT NULL,
    -- Renewed by a live attempt; past it, the claim is free to take over.
    locked_until timestamptz NOT NULL,
    -- The answer, once there is one (NULL while in flight). The body holds
    -- no credential: `credentials` lists the claims (user, token version) of
    -- the tokens it had, and a replay issues fresh ones.
    status       smallint,
    headers      jsonb,
    body         bytea,
    credentials  jsonb NOT NULL DEFAULT '[]',
    created_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    -- 24 hours after the first request: an expired key is a new key, and the
    -- API prunes expired rows in small batches.
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at);
