-- 0015_outbox_twins.sql was rewritten after it was first committed (3 December 2026): a schema
-- its earlier texts migrated has it recorded as applied but kept `value` (the outbox's and the
-- set-aside records'), and one of those texts added a trigger refusing to delete a twin row
-- unless `feo.outbox_twins` is on, which no relay sets. Either way every batch and every relay
-- round failed for good, and nothing said why. Made here what 0015's final text makes; nothing
-- to do on a schema it migrated.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'outbox'::regclass AND attname = 'value' AND NOT attisdropped) THEN
        ALTER TABLE outbox RENAME COLUMN value TO record_value;
    END IF;
    IF EXISTS (
        SELECT FROM pg_attribute WHERE attrelid = 'outbox_failed'::regclass AND attname = 'value' AND NOT attisdropped
    ) THEN
        ALTER TABLE outbox_failed RENAME COLUMN value TO record_value;
    END IF;
END
$$;
DROP TRIGGER IF EXISTS outbox_twin_guard ON outbox;
DROP FUNCTION IF EXISTS outbox_twin_guard();
