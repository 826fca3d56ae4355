-- Record headers are bytes, possibly null, possibly repeated (Kafka allows all three), and a
-- dead letter must keep a partner's headers byte-exact: the outbox holds them as a JSON array
-- of [name, base64 value or null] in order, instead of an object of text values.
CREATE FUNCTION pg_temp.raw_headers(h jsonb) RETURNS jsonb LANGUAGE sql AS $$
    SELECT CASE WHEN jsonb_typeof(h) = 'array' THEN h ELSE coalesce(
        (SELECT jsonb_agg(jsonb_build_array(key, translate(encode(convert_to(value, 'UTF8'), 'base64'), E'\n', ''))
                          ORDER BY key)
         FROM jsonb_each_text(h)), '[]'::jsonb) END
$$;
UPDATE outbox SET headers = pg_temp.raw_headers(headers);
UPDATE outbox_failed SET headers = pg_temp.raw_headers(headers);
ALTER TABLE outbox ALTER COLUMN headers SET DEFAULT '[]';
