-- A UAI's waiting records in arrival order from the index (pipeline.Pipeline.revive judges a UAI
-- with many in slices, its latest arrivals first): it replaces the index on uai alone, which
-- the queries by uai use as well.
CREATE INDEX attente_referentiel_uai_origin ON attente_referentiel (uai, topic, partition, "offset");
DROP INDEX attente_referentiel_uai;
