"""What a service does once its dependencies answer, and when it stops, in order: open the
database and migrate, then run the outbox relay and the background tasks (the spec's own
start-up work, retention), and at the end stop them and close what was opened."""

import asyncio
import functools
import gc
from collections.abc import Coroutine
from typing import Any

import asyncpg
import structlog
from opentelemetry.sdk.trace import TracerProvider

import contracts as c
from services.common.messaging import routage
from services.common.messaging.connection import KafkaAccess
from services.common.messaging.outbox import OutboxRelay, relay_producer
from services.common.pipeline import Pipeline
from services.common.runtime import certificates
from services.common.runtime.settings import ServiceSettings
from services.common.runtime.spec import ServiceSpec
from services.common.runtime.startup import StartupFailed
from services.common.storage import retention
from services.common.storage.db import POOL_SIZE, Conn, create_pool, migrate, relation

GC_THRESHOLDS = (50_000, 20, 100)
"""The cyclic collector's thresholds once the service runs (Python's are 700, 10, 10). A batch
allocates tens of thousands of short-lived containers (parsed events, models, rows) that
reference counting frees; at 700 the collector ran every dozen records or so, and walked what
a batch holds each time. Measured with `./dev bench ingress national` (issue 8): ingress 3-5%
faster, ressources 5% less CPU on the national fan-out, the same peak RSS."""

REVIVAL_PERIOD_SECONDS = 60
"""How often a service looks for records refused `uai-inconnu` whose établissement has arrived,
besides right after each batch that refuses one or stores établissements (Pipeline.revive)."""

log = structlog.get_logger(__name__)

CATCH_UP_PENDING = "rattrapage_en_attente"
"""A table that `./dev restore` (deploy/sauvegarde.py) creates in each schema it restores and
drops once the schema has caught up with the log (a service's own; another is rebuilt,
deploy/reconstruire.py): while it is there, the service refuses to start (an un-caught-up
schema would hand out versions and alert ids already published)."""


async def restored_mark(conn: Conn | asyncpg.Pool, schema: str) -> str | None:
    """The table by which a restore marked `schema` as not caught up with the log, if it did."""
    return await relation(conn, schema, CATCH_UP_PENDING)


class Lifecycle:
    def __init__(
        self, spec: ServiceSpec, settings: ServiceSettings, pipeline: Pipeline, provider: TracerProvider | None
    ):
        self._spec, self._settings, self._pipeline, self._provider = spec, settings, pipeline, provider
        self._background: list[asyncio.Task] = []

    async def open_database(self) -> None:
        spec, settings = self._spec, self._settings
        schema = settings.db_schema or spec.name
        pool = await create_pool(settings.database_url, schema, max_size=POOL_SIZE + settings.background_connections)
        if await restored_mark(pool, schema):
            if spec.publishes_nothing_derived:
                await pool.execute(f"DROP TABLE IF EXISTS {CATCH_UP_PENDING}")  # (another replica's first)
            else:
                await pool.close()
                reason = (
                    f"schema {schema!r} was restored but not caught up with the log: rerun ./dev restore FILE "
                    f"(a service's own schema), or rebuild it (DB_SCHEMA={schema} ./dev rebuild {spec.name})"
                )
                log.error("startup.refused", reason=reason, table=CATCH_UP_PENDING)
                raise StartupFailed(reason)
        await migrate(pool, schema, spec.package_dir)
        new_producer = functools.partial(relay_producer, KafkaAccess.of(settings), f"feo-{spec.name}-relay")
        relay = OutboxRelay(
            pool,
            new_producer(),
            schema,
            batch=settings.outbox_batch_records,
            poll_ms=settings.outbox_poll_ms,
            published=self._pipeline.metrics.published,
            renew=new_producer,
        )
        self._pipeline.attach(pool, relay)

    async def run(self) -> None:
        spec, settings, pipeline = self._spec, self._settings, self._pipeline
        # What is loaded by now (modules, clients, pools) lives as long as the process: out of
        # the cyclic collector's way. Else every full collection walks it again, and batches of
        # hundreds of events trigger them often (a third of the CPU per event, issue 8).
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        pipeline.relay.start()
        if spec.on_start is not None:
            self._spawn(spec.on_start(pipeline, settings), f"{spec.name}-on-start")
        if spec.dead_letters_for:  # it may refuse a record for want of its UAI: judged again once it arrives
            self._spawn(pipeline.revive_continually(REVIVAL_PERIOD_SECONDS), f"{spec.name}-revival")
        if settings.inbox_retention_days:
            self._spawn(retention.run(pipeline.pool, settings.inbox_retention_days), f"{spec.name}-retention")
        if c.ALERTES_ETAT in {p.topic for p in spec.publishes}:  # its partitions beyond the routed ones
            self._spawn(routage.check(KafkaAccess.of(settings), settings.topic(c.ALERTES_ETAT)), f"{spec.name}-routage")
        if (access := KafkaAccess.of(settings)).secured:  # renewed certificates taken without a restart
            self._spawn(certificates.watch(access), f"{spec.name}-tls")
        log.info("service.started", topics=[settings.topic(t) for t in spec.consumes], http_port=settings.http_port)

    async def stop_background(self) -> None:
        """Shutdown, before the consumer stops: the background work (a re-evaluation chunk, the
        retention) is cancelled, its transaction rolled back (it resumes at the next start); the
        relay's loop halts, for `close` to publish what is left once the consumer has stopped."""
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._pipeline.started:
            await self._pipeline.relay.halt()
        log.info("service.stopping", step="background work and relay loop stopped; the consumer's batch commits next")

    async def close(self) -> None:
        """Shutdown, once the consumer has stopped (its batch committed): what the batches put in
        the outbox is published (within SHUTDOWN_GRACE_SECONDS; what is left goes out at the next
        start), then the relay and the database are closed."""
        if self._pipeline.started:
            relay = self._pipeline.relay
            try:
                async with asyncio.timeout(self._settings.shutdown_grace_seconds):
                    flushed = await relay.flush()
                log.info("outbox.flushed", records=flushed)
            except Exception as exc:  # Kafka or PostgreSQL away, or out of time: nothing is lost
                log.warning("outbox.not_flushed", error=type(exc).__name__, hint="published at the next start")
            finally:  # cancelled meanwhile too (a second signal): the producer and the pool closed
                try:
                    await relay.stop()
                finally:
                    await self._pipeline.pool.close()
        if self._provider is not None:
            self._provider.shutdown()

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self._background.append(asyncio.create_task(work, name=name))
