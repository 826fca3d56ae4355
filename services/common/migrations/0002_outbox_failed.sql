-- Outbox rows Kafka will never accept (over the broker's message size, an invalid topic):
-- kept here with the error for an operator, instead of holding back every later record.
CREATE TABLE outbox_failed (
    seq        bigint      PRIMARY KEY,
    topic      text        NOT NULL,
    key        bytea,
    value      bytea       NOT NULL,
    headers    jsonb       NOT NULL,
    error      text        NOT NULL,
    created_at timestamptz NOT NULL,
    failed_at  timestamptz NOT NULL DEFAULT now()
);
