-- When an operator replayed a refused record to its topic (`./dev dead-letters replay`): a dead
-- letter is replayed once; the copy on the topic carries a `dlq-replay` header naming it.
ALTER TABLE dead_letters ADD COLUMN replayed_at timestamptz;
