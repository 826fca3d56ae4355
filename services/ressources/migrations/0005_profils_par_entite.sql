-- What equipement and formation publish, now one record per entity (a lot, a connectivity, a
-- UAI's teachers and competences, a tool), each kept at its highest version: the mirror of
-- their `publies`. The topics are new (.v2), so the former per-UAI documents are dropped.
DROP TABLE profils;
DROP TABLE couvertures;

CREATE TABLE recus (
    type    text   NOT NULL,
    uai     text   NOT NULL,
    entity  text   NOT NULL,
    version bigint NOT NULL,
    content jsonb  NOT NULL,
    PRIMARY KEY (type, uai, entity)
);
