-- Each time a partition's position was outside what Kafka holds of it (consumer.HorsLimites).
-- Below the log start: the records between were deleted before the service read them (a
-- retention shorter than the topic's, records deleted by hand), `records_lost` of them; past the
-- log end: the topic was made again (or this is another cluster), read again from its start.
-- Kept until an operator deletes them: /health shows the latest (`positions_out_of_range`).
CREATE TABLE positions_hors_limites (
    topic        text        NOT NULL,
    partition    int         NOT NULL,
    position     bigint      NOT NULL,
    log_start    bigint      NOT NULL,
    log_end      bigint      NOT NULL,
    records_lost bigint      NOT NULL,
    found_at     timestamptz NOT NULL DEFAULT now()
);
