-- A record refused `uai-inconnu` waits here for its établissement: once the référentiel holds
-- the UAI, the service judges it again and, accepted, applies it, in one transaction with the
-- removal of its row (pipeline.Pipeline.revive). Its key, value and headers as read (its DLQ
-- copy has them too); kept as long as its dead letter (INBOX_RETENTION_DAYS).
CREATE TABLE attente_referentiel (
    topic     text   NOT NULL,
    partition int    NOT NULL,
    "offset"  bigint NOT NULL,
    uai       text   NOT NULL,
    key       bytea,
    value     bytea  NOT NULL,
    headers   jsonb  NOT NULL,
    PRIMARY KEY (topic, partition, "offset"),
    FOREIGN KEY (topic, partition, "offset") REFERENCES dead_letters ON DELETE CASCADE
);
CREATE INDEX attente_referentiel_uai ON attente_referentiel (uai);

-- When a record refused `uai-inconnu` was judged again and accepted, its établissement having
-- arrived; judged again and refused (another reason), `reason` and `message` say why now.
ALTER TABLE dead_letters ADD COLUMN accepted_at timestamptz, ADD COLUMN rejudged_at timestamptz;
