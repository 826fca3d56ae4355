-- A re-evaluation in parts (store.request_reevaluations): its subscribed UAIs cut into ranges
-- when it is requested, each range with its own cursor, so that several workers (in one
-- service and over its replicas) evaluate one fan-out at once, each holding its part's row.
-- Part `part` covers the UAIs after `after_uai` (its cursor, which starts at the range's
-- lower bound) up to `up_to`; NULL: no upper bound (the last part). A new request for the
-- resource replaces its parts; the last chunk of a part deletes its row.
ALTER TABLE reevaluations DROP CONSTRAINT reevaluations_pkey;
ALTER TABLE reevaluations ADD COLUMN part int NOT NULL DEFAULT 0, ADD COLUMN up_to text;
ALTER TABLE reevaluations ADD PRIMARY KEY (resource_id, part);
