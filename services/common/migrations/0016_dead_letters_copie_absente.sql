-- When a replay found no copy of the refused record on its DLQ (past the topic's retention, or a
-- refusal a rebuild dated anew): left out of later replays, which would otherwise take the same
-- oldest rows first each time and never reach the others (`./dev dead-letters list` shows it).
ALTER TABLE dead_letters ADD COLUMN copy_missing_at timestamptz;
