"""Turns a service's spec into a runnable FastStream ASGI application.

Each service consumes its topics in batches (one transaction per batch, offsets committed
after it), runs the outbox relay beside the consumer, and answers `GET /health`.
"""

import asyncio
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import structlog
from aiokafka import ConsumerRecord
from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.kafka import KafkaBroker
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from faststream.middlewares import AckPolicy
from faststream.specification import AsyncAPI
from pydantic import BaseModel

import contracts as c
from services.common import retention, startup
from services.common.db import create_pool, migrate
from services.common.logs import configure_logging
from services.common.outbox import OutboxRelay, relay_producer
from services.common.pipeline import ApplyFn, Pipeline
from services.common.settings import ServiceSettings
from services.common.telemetry import configure_tracing

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Publishes:
    """A topic the service writes, declared for the AsyncAPI document."""

    topic: str
    description: str
    schema: type[BaseModel] | None = None


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    package_dir: Path
    consumes: Sequence[str]
    publishes: Sequence[Publishes]
    apply: Callable[[ServiceSettings], ApplyFn]
    """Builds the service's use case from its settings (thresholds...)."""
    store: Callable[[asyncpg.Connection], Any]
    """The store the use case receives, over the batch's transaction."""
    dead_letters_for: Sequence[str]
    """The consumed topics whose DLQ this service writes (one writer per DLQ)."""
    parse: Callable[..., c.CloudEvent] = c.parse_event
    description: str = ""
    on_start: Callable[[Pipeline, ServiceSettings], Awaitable[None]] | None = None
    """Work run in the background once the service consumes (e.g. a re-evaluation)."""
    http_api: Callable[[AsgiFastStream, ServiceSettings], Any] | None = None
    """Builds an HTTP API (an ASGI app) that serves beside the consumer and runs its lifespan."""
    settings: type[ServiceSettings] = ServiceSettings
    """The service's settings class: the shared settings and its own."""


def _raw_records(msg) -> tuple[ConsumerRecord, ...]:
    return msg.raw_message  # the pipeline parses and validates bytes itself


def _text_headers(headers) -> tuple[tuple[str, bytes], ...]:
    return tuple((k, v) for k, v in headers if v is not None and _is_utf8(v))


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


async def _parse_batch(records: tuple[ConsumerRecord, ...], default_parser) -> Any:
    """FastStream's batch parser decodes every header value as UTF-8, so one header of other
    bytes, or a null one, failed the whole batch before our handler saw it. A record is judged
    by its value alone (CONTRACTS.md): FastStream (its logs, the tracing middleware) sees only
    the headers that are text, and the handler gets the records untouched, for the DLQ copy."""
    message = await default_parser(tuple(dataclasses.replace(r, headers=_text_headers(r.headers)) for r in records))
    message.raw_message = records
    return message


async def health_report(pipeline: Pipeline, broker: KafkaBroker) -> tuple[int, dict]:
    """200 when the service reaches Kafka and PostgreSQL, 503 otherwise; with the outbox backlog."""
    body = {"service": pipeline.service, "kafka": await broker.ping(2.0), "database": False, "outbox_pending": None,
            "outbox_failed": None}
    if pipeline.pool is not None:
        try:
            # Bounded: a probe must stay cheap even with a large backlog ("10000" means at least).
            body["outbox_pending"] = await pipeline.pool.fetchval("SELECT count(*) FROM (SELECT 1 FROM outbox LIMIT 10000) o")
            # Records Kafka refused for good: the service goes on, an operator must look (./dev outbox).
            body["outbox_failed"] = await pipeline.pool.fetchval(
                "SELECT count(*) FROM (SELECT 1 FROM outbox_failed LIMIT 10000) f")
            body["database"] = True
        except Exception as exc:  # reported, not raised: this is the health check
            body["error"] = str(exc)
    return (200 if body["kafka"] and body["database"] else 503), body


def build_app(spec: ServiceSpec, settings: ServiceSettings | None = None) -> AsgiFastStream:
    settings = spec.settings.of(settings) if settings is not None else spec.settings()
    schema = settings.db_schema or spec.name
    configure_logging(spec.name, settings.log_format, settings.log_level)
    provider = configure_tracing(spec.name, settings)

    broker = KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=f"feo-{spec.name}",
        enable_idempotence=True,  # with acks=all: no duplicate or reordered record on retry
        log_level=logging.DEBUG,  # FastStream's per-batch Received/Processed lines: our own logs say more
        middlewares=[KafkaTelemetryMiddleware(tracer_provider=provider)],
        description=spec.description,
    )
    pipeline = Pipeline(spec.name, settings, spec.apply(settings), spec.store, spec.parse, spec.dead_letters_for)

    @broker.subscriber(
        *[settings.topic(t) for t in spec.consumes],
        batch=True,
        group_id=settings.topic(spec.name),
        auto_offset_reset="earliest",
        max_records=settings.batch_max_records,
        ack_policy=AckPolicy.NACK_ON_ERROR,
        parser=_parse_batch,
        decoder=_raw_records,
        title=f"{spec.name}:consume",
        description=f"{spec.name} consumes {', '.join(spec.consumes)}; bad records go to <topic>.dlq",
    )
    async def consume(records: list) -> None:
        await pipeline.handle(records)

    for p in spec.publishes:
        broker.publisher(settings.topic(p.topic), title=f"{spec.name}:{p.topic}", description=p.description, schema=p.schema)

    @get(description="200 when the service reaches Kafka and PostgreSQL, 503 otherwise")
    async def health(scope) -> AsgiResponse:
        status, body = await health_report(pipeline, broker)
        return AsgiResponse(json.dumps(body).encode(), status, headers={"content-type": "application/json"})

    async def start_database() -> None:
        pipeline.pool = await create_pool(settings.database_url, schema)
        await migrate(pipeline.pool, schema, spec.package_dir)
        producer = relay_producer(settings.kafka_bootstrap_servers, f"feo-{spec.name}-relay")
        pipeline.relay = OutboxRelay(pipeline.pool, producer, schema, batch=settings.outbox_batch_records,
                                     poll_ms=settings.outbox_poll_ms)

    background: list[asyncio.Task] = []

    async def start_relay() -> None:
        pipeline.relay.start()
        if spec.on_start is not None:
            background.append(asyncio.create_task(spec.on_start(pipeline, settings), name=f"{spec.name}-on-start"))
        if settings.inbox_retention_days:
            background.append(asyncio.create_task(retention.run(pipeline.pool, settings.inbox_retention_days)))
        log.info("service.started", topics=[settings.topic(t) for t in spec.consumes], http_port=settings.http_port)

    async def stop() -> None:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if pipeline.relay:
            await pipeline.relay.stop()
        if pipeline.pool:
            await pipeline.pool.close()
        provider.shutdown()

    guard = startup.Guard(spec.name, settings, broker, pipeline)  # waits for Kafka and PostgreSQL, then watches
    app = AsgiFastStream(
        broker,
        asgi_routes=[("/health", health)],
        on_startup=[guard.wait_for_dependencies, start_database],
        after_startup=[start_relay, guard.started],
        on_shutdown=[guard.stop, stop],
        specification=AsyncAPI(broker, title=f"former-équiper-outiller: {spec.name}", description=spec.description),
    )
    app.pipeline = pipeline  # tests and HTTP APIs reach the pool and relay through it

    return app


def serve(spec: ServiceSpec) -> None:
    """Entry point of `python -m services.<name>`: the ASGI app under uvicorn."""
    settings = spec.settings()
    app = build_app(spec, settings)
    if spec.http_api is not None:
        app = spec.http_api(app, settings)
    startup.run_server(app, settings)  # uvicorn; exits non-zero when the service cannot run
