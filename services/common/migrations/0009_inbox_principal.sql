-- Who was authenticated when the event came in (the ingestion service's `auth-principal`
-- header: the token's subject), kept with the event so that who sent what stays auditable.
-- Null for an event that came in without it (written to Kafka by a partner's own principal).
ALTER TABLE inbox ADD COLUMN principal text;
