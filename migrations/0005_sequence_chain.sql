-- The sequence rule became a chain (schemas/src/sequence.rs): an event
-- applies when it is the aggregate's version + 1 and names, as `previous`,
-- the event that applied last. The projector keeps that event's id instead
-- of the commands that lost.
ALTER TABLE projected_aggregates
    ADD COLUMN last_event uuid,
    DROP COLUMN last_command,
    DROP COLUMN lost_commands;

-- Every command whose events a decider folded before its last snapshot, so
-- that a retry or a redelivery is answered with its first outcome however
-- long after it comes (the commands folded since the snapshot are in the
-- decider's memory). Kept 25 hours: a decider refuses commands issued more
-- than 24 hours ago (`command_expired`), so none of these can come back
-- after it is pruned.
CREATE TABLE decider_commands (
    command_id uuid PRIMARY KEY,
    partition  integer NOT NULL,
    -- The position token of the command's events.
    position   text NOT NULL,
    issued_at  timestamptz NOT NULL
);
CREATE INDEX decider_commands_issued ON decider_commands (partition, issued_at);
