-- A record and its twin in one row: the same value and headers also go on `twin_topic` under
-- `twin_key`, followed there by a tombstone when `twin_ends` (an alert event and its record on
-- the alerts' state table, alertes.etat.v1: one row written and deleted instead of two or three).
ALTER TABLE outbox
    ADD COLUMN twin_topic text,
    ADD COLUMN twin_key   bytea,
    ADD COLUMN twin_ends  boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT outbox_twin CHECK ((twin_topic IS NULL) = (twin_key IS NULL));
-- Set aside, the twin is superseded on its own (its topic compacted, the record's maybe not):
-- `./dev outbox retry` then puts back the record without it.
ALTER TABLE outbox_failed
    ADD COLUMN twin_topic         text,
    ADD COLUMN twin_key           bytea,
    ADD COLUMN twin_ends          boolean NOT NULL DEFAULT false,
    ADD COLUMN twin_superseded_at timestamptz;
-- Replicas from before this migration read and write `value` by name: their relay would publish
-- an alert's row without its twin, and its table record out of order with theirs. Renamed, every
-- statement they make on the outbox fails until they are replaced (their batches roll back and
-- are taken again, their relay's rounds publish nothing): a rolling upgrade loses nothing and
-- reorders nothing.
ALTER TABLE outbox RENAME COLUMN value TO record_value;
ALTER TABLE outbox_failed RENAME COLUMN value TO record_value;
