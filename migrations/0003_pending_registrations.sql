-- Accounts opened and neither activated nor abandoned yet. The registration
-- sweeper reads it to find registrations that died midway; whether one is
-- abandoned is still decided by the account's own decider, never here.
CREATE TABLE pending_registrations (
    user_id   uuid PRIMARY KEY,
    email     text NOT NULL,
    username  text NOT NULL,
    opened_at timestamptz NOT NULL
);
CREATE INDEX pending_registrations_opened_at ON pending_registrations (opened_at);
