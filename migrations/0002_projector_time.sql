-- When the last event the projector applied on a partition happened: with
-- the partition's lag, how far behind in time the read models are.
ALTER TABLE projector_offsets ADD COLUMN last_event_at timestamptz;
