-- The SHA-256 of the refused record's value (of nothing, for a null one): a dead letter is told
-- once by its place (topic, partition, offset), and a topic made again puts new records at the
-- places of its former ones; a refusal there whose record differs from the one logged is a new
-- one (dlq.reject). Null for the rows written before it: taken for the same record.
ALTER TABLE dead_letters ADD COLUMN empreinte bytea;
