"""`GET /health`: what a probe, an operator and a supervisor need to know, cheaply."""

from faststream.kafka import KafkaBroker

from services.common.pipeline import Pipeline


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
            body["outbox_pending"] = await pipeline.pool.fetchval(
                "SELECT count(*) FROM (SELECT 1 FROM outbox LIMIT 10000) o"
            )
            # Records Kafka refused for good: the service goes on, an operator must look (./dev outbox).
            body["outbox_failed"] = await pipeline.pool.fetchval(
                "SELECT count(*) FROM (SELECT 1 FROM outbox_failed LIMIT 10000) f"
            )
            body["database"] = True
        except Exception as exc:  # reported, not raised: this is the health check
            body["error"] = str(exc)
    return (200 if body["kafka"] and body["database"] else 503), body
