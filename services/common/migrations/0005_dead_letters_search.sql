-- Who sent a refused record, for an operator to find it (`./dev dead-letters`): its CloudEvents
-- attributes as far as they could be read from the value (NULL when it is not a JSON object or
-- the attribute not a string) and its key (text, or \x and hex when not UTF-8), each shortened
-- to 256 characters; the value itself stays in `<topic>.dlq` only. Rows from before: NULL.
ALTER TABLE dead_letters
    ADD COLUMN source  text,
    ADD COLUMN id      text,
    ADD COLUMN type    text,
    ADD COLUMN subject text,
    ADD COLUMN key     text;

-- Newest first, alone or after a filter; text_pattern_ops serve both `=` and a prefix (`UAI/%`).
CREATE INDEX dead_letters_received_at ON dead_letters (received_at);
CREATE INDEX dead_letters_source ON dead_letters (source, received_at);
CREATE INDEX dead_letters_reason ON dead_letters (reason, received_at);
CREATE INDEX dead_letters_key ON dead_letters (key text_pattern_ops);
CREATE INDEX dead_letters_subject ON dead_letters (subject text_pattern_ops);
