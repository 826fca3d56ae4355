-- State declared by collectivités; one row per entity, latest event time wins.
CREATE TABLE lots (
    uai        text        NOT NULL,
    lot_id     text        NOT NULL,
    kind       text        NOT NULL,
    quantity   int         NOT NULL,
    os         jsonb,
    browsers   jsonb       NOT NULL,
    event_time timestamptz NOT NULL,
    PRIMARY KEY (uai, lot_id)
);

CREATE TABLE connectivites (
    uai            text             PRIMARY KEY,
    bandwidth_mbps double precision NOT NULL,
    ent            boolean          NOT NULL,
    event_time     timestamptz      NOT NULL
);

-- The per-UAI equipment profile this service publishes; `version` orders its publications.
CREATE TABLE profils (
    uai     text   PRIMARY KEY,
    version bigint NOT NULL,
    profil  jsonb  NOT NULL
);
