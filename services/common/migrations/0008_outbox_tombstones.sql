-- A record may have no value: a tombstone, which ends its key on a compacted topic (the alert
-- state table, alertes.etat.v1, after a resolution). It goes through the outbox like any record.
ALTER TABLE outbox ALTER COLUMN value DROP NOT NULL;
ALTER TABLE outbox_failed ALTER COLUMN value DROP NOT NULL;
