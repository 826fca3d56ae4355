-- A set-aside record of a compacted topic (messaging/outbox.py, COMPACTED) after which the
-- relay published a later record of the same key: that topic keeps only a key's last record,
-- so retried it would replace the newer state for good. `./dev outbox retry` leaves it.
ALTER TABLE outbox_failed ADD COLUMN superseded_at timestamptz;
