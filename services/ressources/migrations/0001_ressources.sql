-- The catalogue (ministère, GAR): publiee = false once withdrawn; latest event time wins
-- across ressource-publiee and ressource-retiree.
CREATE TABLE ressources (
    resource_id text        PRIMARY KEY,
    publiee     boolean     NOT NULL,
    ressource   jsonb,
    event_time  timestamptz NOT NULL
);

CREATE TABLE abonnements (
    resource_id text        NOT NULL,
    uai         text        NOT NULL,
    "start"     date        NOT NULL,
    "end"       date,
    event_time  timestamptz NOT NULL,
    PRIMARY KEY (resource_id, uai)
);
CREATE INDEX abonnements_uai ON abonnements (uai);

-- What formation and equipement publish, kept at their latest version.
CREATE TABLE profils (
    uai     text   PRIMARY KEY,
    version bigint NOT NULL,
    profil  jsonb  NOT NULL
);

CREATE TABLE couvertures (
    uai        text   PRIMARY KEY,
    version    bigint NOT NULL,
    couverture jsonb  NOT NULL
);

-- One row per (uai, resource_id, kind) ever raised; `cycle` counts raises, so the ids of
-- the events of one raise/resolve cycle are stable across replays.
CREATE TABLE alertes (
    alert_id    text        PRIMARY KEY,
    uai         text        NOT NULL,
    resource_id text        NOT NULL,
    kind        text        NOT NULL,
    ouverte     boolean     NOT NULL,
    cycle       int         NOT NULL,
    raised_at   timestamptz NOT NULL,
    resolved_at timestamptz,
    alerte      jsonb       NOT NULL
);
CREATE INDEX alertes_pair ON alertes (uai, resource_id);
CREATE INDEX alertes_resource ON alertes (resource_id);
