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
-- A relay from before this migration reads neither column: it would publish the record and
-- delete the row, its twin never published. A row with a twin is deleted only by a transaction
-- that says it publishes twins (messaging/outbox.py, TWINS_PUBLISHED): such a relay's round
-- fails and is rolled back instead (its records go out again from the row, same ids).
CREATE FUNCTION outbox_twin_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('feo.outbox_twins', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'outbox row % has a twin on %: only a relay that publishes twins deletes it (migration 0015)',
            OLD.seq, OLD.twin_topic USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN OLD;
END
$$;
CREATE TRIGGER outbox_twin_guard BEFORE DELETE ON outbox
    FOR EACH ROW WHEN (OLD.twin_topic IS NOT NULL) EXECUTE FUNCTION outbox_twin_guard();
