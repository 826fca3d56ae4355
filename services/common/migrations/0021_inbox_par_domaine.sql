-- The inbox's key scoped by the domain of the event's type (`fr.education.<domain>.…`, one per
-- topic a partner writes): a record on `ressources.catalogue.v1`, which the GAR writes too and
-- may write as `/ministere`, no longer takes first the id of the ministère's `etablissement` on
-- `referentiel.etablissements.v1`, which ressources then dropped as a duplicate while the other
-- services took it (contract audit s69 F1). The same (source, id) within one domain is still
-- one event. Rows held keep their meaning: their type gives their domain. A column, not an
-- index on the expression: a primary key still identifies each row (logical replication, which
-- a managed server's major upgrade may use, refuses the updates and deletes of a table without
-- one). Rewrites the inbox (its retention's days of events; after a rebuild, its topics' whole
-- history): its readers and writers wait meanwhile (README, Upgrades).
ALTER TABLE inbox
    DROP CONSTRAINT inbox_pkey,
    ADD COLUMN domaine text GENERATED ALWAYS AS (split_part(type, '.', 3)) STORED,
    ADD PRIMARY KEY (source, id, domaine);
