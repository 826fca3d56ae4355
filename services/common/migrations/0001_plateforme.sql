-- Shared by every service, each in its own schema.

-- Inbox: every accepted (source, id) once; a second arrival has no effect (CONTRACTS.md).
CREATE TABLE inbox (
    source      text        NOT NULL,
    id          text        NOT NULL,
    type        text        NOT NULL,
    subject     text,
    event_time  timestamptz NOT NULL,
    outcome     text        NOT NULL DEFAULT 'applied' CHECK (outcome IN ('applied', 'stale')),
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, id)
);

-- Records refused into a DLQ, once per (topic, partition, offset): a replay after a crash
-- between the database commit and the Kafka offset commit does not dead-letter twice.
CREATE TABLE dead_letters (
    topic       text        NOT NULL,
    partition   int         NOT NULL,
    "offset"    bigint      NOT NULL,
    reason      text        NOT NULL,
    message     text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, "offset")
);

-- Transactional outbox: rows written in the same transaction as the state they announce,
-- published in `seq` order by the relay, then deleted.
CREATE TABLE outbox (
    seq        bigserial PRIMARY KEY,
    topic      text   NOT NULL,
    key        bytea,
    value      bytea  NOT NULL,
    headers    jsonb  NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The part of the référentiel every service needs: who is where, open or closed.
CREATE TABLE etablissements (
    uai              text PRIMARY KEY,
    type             text        NOT NULL,
    statut           text        NOT NULL,
    code_commune     text        NOT NULL,
    code_departement text        NOT NULL,
    code_academie    text        NOT NULL,
    code_region      text        NOT NULL,
    ouvert           boolean     NOT NULL,
    nom              text        NOT NULL,
    event_time       timestamptz NOT NULL
);
