-- The broker's append instant (LogAppendTime, ms since the epoch) of the record before each
-- position, on the topics that stamp it (the partners'): which log a position belongs to. A
-- topic made again whose new log already reaches the stored position has no record with that
-- instant (consumer.StoredPositions): its records are read from its start, not skipped up to the
-- position. NULL where unknown (a topic that keeps its producers' times, a row from before).
ALTER TABLE positions ADD COLUMN appended_at_ms bigint;
