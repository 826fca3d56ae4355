-- The inbox's key scoped by the domain of the event's type (`fr.education.<domain>.…`, one per
-- topic): a record on `ressources.catalogue.v1`, which the GAR writes too and may write as
-- `/ministere`, no longer takes first the id of the ministère's `etablissement` on
-- `referentiel.etablissements.v1`, which ressources then dropped as a duplicate while the other
-- services took it (contract audit s69 F1). The same (source, id) within one domain is still
-- one event. Rows held keep their meaning: their type gives their domain. Building the index
-- reads the inbox once (its retention's days of events), writes to it waiting meanwhile.
ALTER TABLE inbox DROP CONSTRAINT inbox_pkey;
CREATE UNIQUE INDEX inbox_key ON inbox (source, id, split_part(type, '.', 3));
