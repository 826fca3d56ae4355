-- A part whose chunk keeps failing is put off (store.postpone_reevaluation): `failures` in a
-- row, the part taken again from `retry_at` on, and the other parts meanwhile (taken first
-- again after each failure, it held every worker). A chunk done resets both.
ALTER TABLE reevaluations ADD COLUMN failures int NOT NULL DEFAULT 0, ADD COLUMN retry_at timestamptz;
