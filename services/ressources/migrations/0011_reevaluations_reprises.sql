-- A new request for a resource whose fan-out is under way no longer starts it over from the
-- first UAI (store.request_reevaluations): while versions came faster than a pass, the last
-- UAIs were never reached. Each part keeps its range's lower bound, `start_uai`; a part under
-- way when its resource is asked again is marked `again` and, at the end of its range, goes
-- back to `start_uai` once more (those it had passed were evaluated with the former version);
-- the ranges of the parts already done are parts again.
ALTER TABLE reevaluations ADD COLUMN start_uai text, ADD COLUMN again boolean NOT NULL DEFAULT false;
UPDATE reevaluations SET start_uai = after_uai;  -- a part under way at the upgrade: from its cursor
ALTER TABLE reevaluations ALTER COLUMN start_uai SET NOT NULL, ALTER COLUMN start_uai SET DEFAULT '';
