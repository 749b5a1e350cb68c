-- Password hashes, kept out of the log: events are read by analysts and
-- exported, and a hash is a secret. The API stores a registration's hash
-- here before the registration's first command (keyed by the account id,
-- which a retry with the same Idempotency-Key reuses), and login reads it.
--
-- This is the one table NOT derived from tidings.events: a rebuild of the
-- read models into a fresh database must bring it along.
CREATE TABLE credentials (
    user_id       uuid PRIMARY KEY,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

INSERT INTO credentials (user_id, password_hash)
SELECT id, password_hash FROM accounts
ON CONFLICT (user_id) DO NOTHING;

ALTER TABLE accounts DROP COLUMN password_hash;
