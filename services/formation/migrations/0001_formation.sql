-- Declared by rectorats. A teacher counts at a UAI while the latest affectation has no end.
CREATE TABLE affectations (
    teacher_id text        NOT NULL,
    uai        text        NOT NULL,
    "start"    date        NOT NULL,
    "end"      date,
    event_time timestamptz NOT NULL,
    PRIMARY KEY (teacher_id, uai)
);
CREATE INDEX affectations_uai ON affectations (uai) WHERE "end" IS NULL;

-- Trainings accumulate: the highest level reached per competence, every tool trained on.
CREATE TABLE competences (
    teacher_id text NOT NULL,
    code       text NOT NULL,
    level      int  NOT NULL,
    PRIMARY KEY (teacher_id, code)
);

CREATE TABLE outils (
    teacher_id text NOT NULL,
    kind       text NOT NULL,
    PRIMARY KEY (teacher_id, kind)
);

-- The per-UAI training coverage this service publishes; `version` orders its publications.
CREATE TABLE couvertures (
    uai        text   PRIMARY KEY,
    version    bigint NOT NULL,
    couverture jsonb  NOT NULL
);
