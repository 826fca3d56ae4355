-- The trace context (W3C traceparent) of the record that requested a part's re-evaluation (a
-- resource published or changed), which the alerts of its chunks carry: they continued no trace.
ALTER TABLE reevaluations ADD COLUMN traceparent text;
