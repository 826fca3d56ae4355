-- What a service derived and published, per record key, with the version of its last
-- publication (services/common/derived.py): one row per (type, uai, entity); entity is ''
-- when the type has one record per UAI. A new content is published only when it differs.
CREATE TABLE publies (
    type    text   NOT NULL,
    uai     text   NOT NULL,
    entity  text   NOT NULL,
    version bigint NOT NULL,
    content jsonb  NOT NULL,
    PRIMARY KEY (type, uai, entity)
);
