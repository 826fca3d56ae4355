-- Where an alert is now, beside the event that announces it elsewhere: a resolution is
-- announced where the alert was raised, and an établissement that moved since (another
-- département, académie or responsable) has it listed at its new place. The live stream and
-- its replay give such a row to the filters of either place (NULL: the event's own).
ALTER TABLE alert_journal ADD COLUMN portee jsonb;
