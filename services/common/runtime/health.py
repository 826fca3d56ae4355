"""`GET /health`: what a probe, an operator and a supervisor need to know, cheaply."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import structlog
from faststream.kafka import KafkaBroker

from services.common.messaging import dlq
from services.common.messaging.outbox import count_failed, count_pending, oldest_pending_age
from services.common.pipeline import Pipeline
from services.common.runtime.metrics import Failing, Gauge, Gauges
from services.common.runtime.secrets import redact
from services.common.storage import positions
from services.common.storage.db import DATABASE_AWAY

log = structlog.get_logger(__name__)

COUNT_AT_MOST = 10_000
READ_SECONDS = 4
"""How long /health and /metrics wait for the database (a probe's own timeout is 5 s, the
Kubernetes manifests'): past it, the database counts as not answering. /health asks Kafka
meanwhile, not after: the probe's answer comes within the longer of the two."""
PING_SECONDS = 2.0
"""How long /health waits for Kafka's answer."""
Backlog = Callable[[Any], Awaitable[dict[str, int]]] | None
"""A service's own held-back work (ServiceSpec.backlog), counted with its store."""
Readiness = Literal["kafka-and-database", "database", "started"]
"""What a replica needs to be sent requests (`/readyz`, readiness_report), which are also the
dependencies whose loss for UNHEALTHY_EXIT_SECONDS ends it (startup.Guard, NEEDS): a replica
that still serves without one is not ended for it, since restarted it would open no port until
every dependency answers (startup.Guard waits for them), its clients losing what it still gave
them. `kafka-and-database`: the consumers (/health's answer). `database`: ressources, whose read
API and alert stream answer from PostgreSQL while Kafka is away. `started`: the passerelle, which
answers each request itself while Kafka or PostgreSQL is away (503 with Retry-After): taken out
of a Kubernetes Service, every replica at once (they share both), partners met the ingress's
own error page or refused connections instead (ops audit s68 #2)."""
NEEDS: dict[Readiness, tuple[str, ...]] = {
    "kafka-and-database": ("Kafka", "PostgreSQL"),
    "database": ("PostgreSQL",),
    "started": (),
}


async def health_report(pipeline: Pipeline, broker: KafkaBroker, backlog: Backlog = None) -> tuple[int, dict]:
    """200 when the service reaches Kafka and PostgreSQL, 503 otherwise; with the outbox backlog,
    the records that wait for their établissement, and the service's own (`backlog`)."""

    async def kafka() -> bool:  # one ping at a time, however many requests ask, as for the database
        try:
            return await pipeline.metrics.shared("ping", lambda: broker.ping(PING_SECONDS), within=READ_SECONDS)
        except TimeoutError:
            return False

    reached, read = await asyncio.gather(
        kafka(), _database(pipeline, "health", lambda body: _read_health(pipeline, backlog, body))
    )
    body = {
        "service": pipeline.service,
        "kafka": reached,
        "database": False,
        "database_read_only": None,
        "outbox_pending": None,
        "outbox_oldest_s": None,
        "outbox_failed": None,
        "revivals_pending": None,
        "awaiting_referentiel": None,
        "positions_out_of_range": None,
    } | read
    # Partitions waiting at a batch the broker served damaged: the service goes on with the
    # others and reads it again every minute; an operator must look (its broker's storage).
    body["unreadable_batches"] = pipeline.metrics.unreadable()
    # Batches failing one after another (PostgreSQL refusing writes: a full disk, a read-only
    # server): the service reaches both and handles nothing; an operator must look.
    body["batches_failing"] = _since(pipeline.metrics.failing)
    # The stored positions unreadable at an assignment (the table's rights revoked, the table
    # damaged: PostgreSQL answers the rest): its partitions stay paused until they are read.
    body["positions_unreadable"] = _since(pipeline.metrics.positions_failing)
    # The partitions of each topic this replica's consumer holds: 0 for every one, it reads
    # nothing (stopped, or its group gave them all to other replicas); the answer says so, 200
    # all the same (more replicas than partitions leave some with none, rightly).
    body["assigned_partitions"] = pipeline.metrics.assigned()
    return (200 if body["kafka"] and body["database"] else 503), body


def _since(failing: Failing | None) -> dict | None:
    if failing is None:
        return None
    body: dict[str, Any] = {"since": failing.since.isoformat(), "seconds": failing.seconds(), "error": failing.error}
    if failing.latest:  # where the latest batch that failed is: a record to skip is there
        body["partitions"] = list(failing.latest)
    return body


_NOT_IN_TIME = "PostgreSQL n'a pas répondu en {} s"


async def readiness_report(
    pipeline: Pipeline, broker: KafkaBroker, backlog: Backlog, readiness: Readiness
) -> tuple[int, dict]:
    """`/readyz`, the readiness probe's: whether the service should be sent requests (Readiness).
    For most, /health's answer (200 when Kafka and PostgreSQL answer). For ressources, whether
    PostgreSQL answers: Kafka away, its readers are still served (what they read stops
    changing). For the passerelle, whether it has started: it answers every request itself."""
    if readiness == "started":
        return (200 if pipeline.started else 503), {"service": pipeline.service, "ready": pipeline.started}
    if readiness == "kafka-and-database":
        status, health = await health_report(pipeline, broker, backlog)
        return status, {"service": pipeline.service, "ready": status == 200, "kafka": health["kafka"]} | {
            k: health[k] for k in ("database", "error") if k in health
        }
    body = {"service": pipeline.service, "database": False} | await _database(
        pipeline, "ready", lambda _: pipeline.pool.fetchval("SELECT 1")
    )
    body["ready"] = body["database"]
    return (200 if body["ready"] else 503), body


async def _database(pipeline: Pipeline, what: str, read: Callable[[dict], Awaitable[Any]]) -> dict:
    """A report's database part: `read(body)` adds what it reads to `body`, `database` true once
    it is done; nothing before the pipeline is started. One read of each kind at a time, however
    many requests ask (Metrics.shared), each waiting READ_SECONDS at most."""
    if not pipeline.started:
        return {}
    try:
        return await pipeline.metrics.shared(what, lambda: _database_read(read), within=READ_SECONDS)
    except TimeoutError:
        return {"error": _NOT_IN_TIME.format(READ_SECONDS)}


async def _database_read(read: Callable[[dict], Awaitable[Any]]) -> dict:
    """`read`'s body, within READ_SECONDS (or as long as asyncpg takes to cancel a query
    PostgreSQL stopped answering: the caller waits READ_SECONDS at most)."""
    body: dict[str, Any] = {"database": False}
    try:
        async with asyncio.timeout(READ_SECONDS):
            await read(body)
        body["database"] = True
    except TimeoutError:
        body["error"] = _NOT_IN_TIME.format(READ_SECONDS)
    except Exception as exc:  # reported, not raised: this is a probe
        body["error"] = redact(str(exc))  # an answer anyone who reaches the port reads
    return body


async def _read_health(pipeline: Pipeline, backlog: Backlog, body: dict) -> None:
    # Answering reads, refusing writes (a standby behind a stale endpoint after a failover, a
    # managed server full): every batch fails, the relay publishes nothing (outbox.DatabaseReadOnly).
    body["database_read_only"] = await pipeline.pool.fetchval("SELECT current_setting('transaction_read_only') = 'on'")
    # Bounded: a probe must stay cheap even with a large backlog ("10000" means at least).
    body["outbox_pending"] = await count_pending(pipeline.pool, COUNT_AT_MOST)
    # Growing while the service answers 200: its relay is stalled (Kafka refusing every round,
    # or another replica holding the relay's turn without publishing).
    body["outbox_oldest_s"] = round(await oldest_pending_age(pipeline.pool), 1)
    # Records Kafka refused for good: the service goes on, an operator must look (./dev outbox).
    body["outbox_failed"] = await count_failed(pipeline.pool, COUNT_AT_MOST)
    # Refused uai-inconnu, waiting for their établissement; UAIs come since, to look at.
    body["awaiting_referentiel"] = await dlq.count_awaiting(pipeline.pool, COUNT_AT_MOST)
    # Positions found outside their partition's log (records deleted before they were read, a
    # topic made again), the latest first: kept until an operator deletes them.
    body["positions_out_of_range"] = await positions.latest_out_of_range(pipeline.pool)
    body["revivals_pending"] = pipeline.revivals_pending
    if backlog is not None:
        body |= await pipeline.run(backlog)


async def database_gauges(pipeline: Pipeline, gauges: Gauges | None = None) -> list[Gauge]:
    """What /metrics reads from the database at each scrape: the outbox, and the service's own
    figures (`gauges`) once those kept are old enough (Metrics.counts); when the database does
    not answer the outbox's, that it does not, and every figure as last read: a series gone
    from the scrapes resolved the alerts on it for as long (`feo_reevaluation_parts_failing`,
    `feo_outbox_oldest_age_seconds`: ops audit s68 #6), `feo_database_reachable` 0 saying they
    are old."""
    if not pipeline.started:
        return [_reached(0)]
    metrics = pipeline.metrics
    try:
        read = await metrics.shared("metrics", lambda: _outbox_gauges(pipeline), within=READ_SECONDS)
    except TimeoutError:
        read = [_reached(0)]
    if read[0].value == 0:
        return [read[0], *metrics.kept_outbox, *(metrics.kept_counts if gauges is not None else ())]
    metrics.kept_outbox = read[1:]
    if gauges is None:
        return read
    return read + await _own_gauges(pipeline, gauges)


async def _outbox_gauges(pipeline: Pipeline) -> list[Gauge]:
    try:
        async with asyncio.timeout(READ_SECONDS), pipeline.pool.acquire() as conn:
            pending = await count_pending(conn)
            oldest = await oldest_pending_age(conn)
            failed = await count_failed(conn)
            awaiting = await dlq.count_awaiting(conn)
    except Exception as exc:  # reported as a figure: a scrape must answer while the database is away
        if not isinstance(exc, DATABASE_AWAY):  # what an operator must look at, not the database gone
            log.warning("metrics.database_unread", error=type(exc).__name__, detail=redact(str(exc)))
        return [_reached(0)]
    return [
        _reached(1),
        Gauge("feo_outbox_pending", "rows in the outbox, waiting for the relay", {}, pending),
        Gauge("feo_outbox_oldest_age_seconds", "age of the oldest record in the outbox (0: empty)", {}, oldest),
        Gauge(
            "feo_outbox_failed", "records Kafka refused for good, set aside for an operator (./dev outbox)", {}, failed
        ),
        Gauge(
            "feo_awaiting_referentiel",
            "records refused uai-inconnu waiting for their établissement, to be judged again once it comes",
            {},
            awaiting,
        ),
    ]


async def _own_gauges(pipeline: Pipeline, gauges: Gauges) -> list[Gauge]:
    """The service's own figures (Metrics.counts), apart from the outbox's: a count longer than
    READ_SECONDS (it ends all the same, kept for the scrapes after) or one that fails (logged)
    leaves those kept before, and the rest of the scrape as read. Within the outbox's wait, it
    made the whole scrape say the database unreachable, every other figure gone with it."""
    max_age = pipeline.settings.metrics_counts_max_age_seconds
    try:
        return await pipeline.metrics.shared(
            "counts", lambda: pipeline.metrics.counts(lambda: pipeline.run(gauges), max_age), within=READ_SECONDS
        )
    except TimeoutError:
        return pipeline.metrics.kept_counts
    except Exception as exc:
        log.warning("metrics.counts_unread", error=type(exc).__name__, detail=redact(str(exc)))
        return pipeline.metrics.kept_counts


def _reached(value: int) -> Gauge:
    return Gauge("feo_database_reachable", _REACHABLE, {}, value)


_REACHABLE = "1 when the service's database answered this scrape's queries, else 0"
