-- Parts are taken in the order they were made (store.next_reevaluation), not by resource id:
-- the parts of a resource with a smaller id went first, and while it was republished faster
-- than a pass (each republication cutting again what its parts had passed), the fan-out of a
-- resource after it never ran (a withdrawn resource's alerts stayed open). Parts already there
-- are numbered in the order of their keys, as they were taken until now.
ALTER TABLE reevaluations ADD COLUMN tour bigint;
CREATE SEQUENCE reevaluations_tour OWNED BY reevaluations.tour;
UPDATE reevaluations SET tour = n FROM (
    SELECT resource_id, part, row_number() OVER (ORDER BY resource_id, part) AS n FROM reevaluations
) AS numbered WHERE numbered.resource_id = reevaluations.resource_id AND numbered.part = reevaluations.part;
SELECT setval('reevaluations_tour', coalesce((SELECT max(tour) FROM reevaluations), 0) + 1, false);
ALTER TABLE reevaluations ALTER COLUMN tour SET DEFAULT nextval('reevaluations_tour'), ALTER COLUMN tour SET NOT NULL;
