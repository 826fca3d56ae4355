"""`GET /health`: what a probe, an operator and a supervisor need to know, cheaply."""

from faststream.kafka import KafkaBroker

from services.common.messaging.outbox import count_failed, count_pending
from services.common.pipeline import Pipeline

COUNT_AT_MOST = 10_000


async def health_report(pipeline: Pipeline, broker: KafkaBroker) -> tuple[int, dict]:
    """200 when the service reaches Kafka and PostgreSQL, 503 otherwise; with the outbox backlog."""
    body = {
        "service": pipeline.service,
        "kafka": await broker.ping(2.0),
        "database": False,
        "outbox_pending": None,
        "outbox_failed": None,
    }
    if pipeline.started:
        try:
            # Bounded: a probe must stay cheap even with a large backlog ("10000" means at least).
            body["outbox_pending"] = await count_pending(pipeline.pool, COUNT_AT_MOST)
            # Records Kafka refused for good: the service goes on, an operator must look (./dev outbox).
            body["outbox_failed"] = await count_failed(pipeline.pool, COUNT_AT_MOST)
            body["database"] = True
        except Exception as exc:  # reported, not raised: this is the health check
            body["error"] = str(exc)
    return (200 if body["kafka"] and body["database"] else 503), body
