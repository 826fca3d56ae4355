-- A journal row is dated when it is written (stream.notify, under the journal's lock), not when
-- its transaction began: the purge cuts by age a prefix of seq, and a row dated from a long
-- transaction's start, journalled after shorter ones, took them with it (audit s69 F6).
-- stream.notify gives the date itself, once per statement; the default, for any other writer.
ALTER TABLE alert_journal ALTER COLUMN created_at SET DEFAULT clock_timestamp();
