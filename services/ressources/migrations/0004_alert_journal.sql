-- The alert events the SSE stream delivers, appended in the transaction that raises or
-- resolves the alerts. NOTIFY only wakes the listeners (its payload is limited to 8,000
-- bytes, an alert event is not); they read the rows after the last seq they delivered.
-- `seq` is also the SSE `id:`, so a client resumes with `Last-Event-ID`.
CREATE TABLE alert_journal (
    seq        bigserial   PRIMARY KEY,
    event_id   text        NOT NULL,
    alert_id   text        NOT NULL,
    event      jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_journal_created ON alert_journal (created_at);

-- Rows are purged after SSE_JOURNAL_RETENTION_HOURS, always a prefix of seq: every seq up to
-- `purged_through` may be gone, so a client resuming from before it is told it missed some.
CREATE TABLE alert_journal_horizon (
    id             int    PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    purged_through bigint NOT NULL
);
INSERT INTO alert_journal_horizon (purged_through) VALUES (0);
