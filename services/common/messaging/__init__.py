"""Kafka: the batch consumer, the transactional outbox and its relay, dead letters, and the
operator command for records Kafka refused for good (outbox_failed)."""
