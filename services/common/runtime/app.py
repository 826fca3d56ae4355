"""Turns a service's spec into a runnable FastStream ASGI application: logging and tracing,
the broker and its consumer (consumer.py), `GET /health` (health.py), and the lifecycle:
wait for the dependencies (startup.py), open the database and migrate, run the outbox relay
and the background tasks, stop them in order.
"""

import asyncio
import base64
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Awaitable, Iterable
from typing import Any

import structlog
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.kafka import KafkaBroker
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.specification import AsyncAPI

from services.common.messaging.connection import KafkaAccess
from services.common.messaging.consumer import subscribe
from services.common.pipeline import REVIVAL_RECORDS, Pipeline
from services.common.runtime import health, metrics, startup
from services.common.runtime.certificates import log_certificate
from services.common.runtime.health import (
    NEEDS,
    Backlog,
    Readiness,
    database_gauges,
    health_report,
    readiness_report,
)
from services.common.runtime.lifecycle import Lifecycle
from services.common.runtime.logs import configure_logging
from services.common.runtime.settings import ServiceSettings, check_environment, ignored
from services.common.runtime.spec import ServiceSpec
from services.common.runtime.telemetry import configure_tracing

log = structlog.get_logger(__name__)


ALIVE = {"alive": True}
"""`/livez`'s answer: whoever answers is alive. Nothing is read: a database or a broker away is
/health's to say (503) and `/readyz`'s (out of the Service's endpoints), not a reason to restart
the process; a frozen event loop answers nothing, and the kubelet restarts it."""


class ServiceApp(AsgiFastStream):
    """The service's ASGI app, with what an HTTP API beside it needs: its pipeline and broker."""

    def __init__(
        self,
        broker: KafkaBroker,
        pipeline: Pipeline,
        backlog: Backlog = None,
        gauges: metrics.Gauges | None = None,
        readiness: Readiness = "kafka-and-database",
        **kwargs: Any,
    ):
        super().__init__(broker, **kwargs)
        self.pipeline = pipeline
        self.kafka = broker
        self.backlog = backlog
        self.gauges = gauges
        self.readiness = readiness
        if gauges is not None:
            pipeline.metrics.want_counts()

    async def health(self) -> tuple[int, dict]:
        return await health_report(self.pipeline, self.kafka, self.backlog)

    async def ready(self) -> tuple[int, dict]:
        return await readiness_report(self.pipeline, self.kafka, self.backlog, self.readiness)

    async def metrics(self) -> bytes:
        """The Prometheus text of `/metrics`, the database's figures read now (the service's own
        counts once old enough: Metrics.counts)."""
        await asyncio.gather(
            self.pipeline.metrics.refresh(lambda: database_gauges(self.pipeline, self.gauges)),
            self.pipeline.metrics.read_ends(within=health.READ_SECONDS),
        )
        return self.pipeline.metrics.render()

    def serve_probes(self, api: FastAPI) -> None:
        """`/health`, `/readyz`, `/livez` and `/metrics` on a service's own HTTP API (which serves
        instead of this app)."""

        @api.get(
            "/health",
            summary="200 quand Kafka et PostgreSQL répondent, 503 sinon",
            responses={503: {"description": "Kafka ou PostgreSQL ne répond pas : le même corps, qui dit lequel"}},
        )
        async def health() -> JSONResponse:
            status, body = await self.health()
            return JSONResponse(body, status)

        @api.get("/readyz", summary="200 quand le service peut servir ses lecteurs", include_in_schema=False)
        async def readyz() -> JSONResponse:
            status, body = await self.ready()
            return JSONResponse(body, status)

        @api.get("/livez", summary="200 tant que le service répond", include_in_schema=False)
        async def livez() -> JSONResponse:
            return JSONResponse(ALIVE)

        @api.get("/metrics", summary="Les mesures du service, au format de Prometheus", include_in_schema=False)
        async def metrics_text() -> Response:
            return Response(await self.metrics(), media_type=metrics.CONTENT_TYPE)


async def started(app: ServiceApp, start: Awaitable[object]) -> None:
    """Await `start`, the app's start; when it fails, stop the app and raise the start's error:
    FastStream runs no shutdown hook when a start fails, and what it opened would stay open."""
    try:
        await start
    except BaseException:
        try:
            await app.stop()
        except Exception as e:
            log.warning("startup.fermeture_incomplete", error=type(e).__name__)
        raise


_EVERY_ANSWER = (
    (b"x-content-type-options", b"nosniff"),  # a body is what its Content-Type says, never guessed
    (b"referrer-policy", b"no-referrer"),  # a filtered view's address (its UAI, its territory) stays here
)
_NOT_FRAMED = (b"content-security-policy", b"frame-ancestors 'none'")
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def page_policy(html: bytes) -> bytes:
    """The Content-Security-Policy of an HTML page that sets none (/docs, /redoc, the home
    page): its scripts this service's own files and the inline ones it holds now (their hashes),
    nothing else; no plugin, no other base, framed by no site. A text the page ever quoted from
    data (a description) could not become script (security audit s69 F7). ReDoc runs its
    search in a worker made from a blob."""
    hashes = b"".join(
        b" 'sha256-" + base64.b64encode(hashlib.sha256(script).digest()) + b"'"
        for script in _INLINE_SCRIPT.findall(html)
    )
    return (
        b"script-src 'self'" + hashes + b"; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; "
        b"frame-ancestors 'none'"
    )


async def internal_error(request: Any, exc: Exception) -> JSONResponse:
    """The answer of an error no handler took, in French, with AnswerHeaders' headers: Starlette
    sends it from its outermost middleware, past AnswerHeaders. It still raises the exception
    after this answer: the server logs it with its traceback."""
    headers = {name.decode(): value.decode() for name, value in (*_EVERY_ANSWER, _NOT_FRAMED)}
    return JSONResponse(
        {"detail": "erreur interne du service (le détail est dans son journal)"},
        500,
        headers={**headers, "cache-control": "no-store"},
    )


class AnswerHeaders:
    """ASGI middleware: `Cache-Control: no-store` on every JSON answer that sets none. An API's
    answers are read live (alerts and their counts, the stream's position to resume from, a
    declaration's outcome, the probes): a shared cache between a client and the service (a
    proxy caching 200s by default) served an earlier one. On every answer, `nosniff` and no
    Referer; and, on those that set no Content-Security-Policy (the dashboard's page sets its own),
    one that no other site may frame them by (the JSON answers), with the scripts it may run for
    an HTML page (`page_policy`: /docs, /redoc, the home page; read whole, to hash its scripts)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        start: dict | None = None  # an HTML page's, held until its body is read
        body: list[bytes] = []

        async def sending(message: dict) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                names = {name.lower(): value for name, value in headers}
                added = [header for header in _EVERY_ANSWER if header[0] not in names]
                if b"cache-control" not in names and b"json" in names.get(b"content-type", b""):
                    added.append((b"cache-control", b"no-store"))
                message = {**message, "headers": [*headers, *added]}
                if b"content-security-policy" not in names:
                    if names.get(b"content-type", b"").startswith(b"text/html"):
                        start = message
                        return
                    message["headers"].append(_NOT_FRAMED)
            elif start is not None and message["type"] == "http.response.body":
                body.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                page = b"".join(body)
                policy = (b"content-security-policy", page_policy(page))
                await send({**start, "headers": [*start["headers"], policy]})
                message, start = {**message, "body": page}, None
            await send(message)

        await self.app(scope, receive, sending)


def build_app(spec: ServiceSpec, settings: ServiceSettings | None = None) -> ServiceApp:
    settings = spec.settings.of(settings) if settings is not None else spec.settings()
    configure_logging(spec.name, settings.log_format, settings.log_level, settings.library_log_level)
    # A span links each trace context among its records: a batch's, or a revival part's.
    provider = configure_tracing(spec.name, settings, max_links=max(settings.batch_max_records, REVIVAL_RECORDS))

    broker = KafkaBroker(
        settings.kafka_bootstrap_servers.split(","),  # FastStream takes one string as one host
        security=KafkaAccess.of(settings).faststream_security(),  # None over PLAINTEXT
        client_id=f"feo-{spec.name}",
        enable_idempotence=True,  # with acks=all: no duplicate or reordered record on retry
        logger=logging.getLogger("faststream.kafka"),  # through the root logger (logs.py), not its own handler
        log_level=logging.DEBUG,  # FastStream's per-batch Received/Processed lines: our own logs say more
        description=spec.description,
        graceful_timeout=settings.shutdown_grace_seconds,  # stopping, the batch in flight commits
    )
    pipeline = Pipeline(spec.name, settings, spec.apply(settings), spec.store, spec.parse, spec.dead_letters_for)
    # FastStream's consumer metrics beside the platform's, in the service's registry.
    broker.add_middleware(KafkaPrometheusMiddleware(registry=pipeline.metrics.registry, app_name=spec.name))

    subscribe(broker, spec, settings, pipeline)

    for p in spec.publishes:
        broker.publisher(
            settings.topic(p.topic), title=f"{spec.name}:{p.topic}", description=p.description, schema=p.schema
        )

    @get(description="200 when the service reaches Kafka and PostgreSQL, 503 otherwise")
    async def health(scope) -> AsgiResponse:
        status, body = await app.health()
        return AsgiResponse(json.dumps(body).encode(), status, headers={"content-type": "application/json"})

    @get(description="200 when the service should be sent requests (Kubernetes' readiness), 503 otherwise")
    async def readyz(scope) -> AsgiResponse:
        status, body = await app.ready()
        return AsgiResponse(json.dumps(body).encode(), status, headers={"content-type": "application/json"})

    @get(description="200 while the service answers at all: its event loop turns (Kubernetes' liveness)")
    async def livez(scope) -> AsgiResponse:
        return AsgiResponse(json.dumps(ALIVE).encode(), 200, headers={"content-type": "application/json"})

    @get(description="the service's figures, in Prometheus' text format")
    async def metrics_route(scope) -> AsgiResponse:
        return AsgiResponse(await app.metrics(), 200, headers={"content-type": metrics.CONTENT_TYPE})

    lifecycle = Lifecycle(spec, settings, pipeline, provider)
    # Waits for Kafka, PostgreSQL and the topics the service reads, then watches.
    guard = startup.Guard(
        spec.name, settings, broker, pipeline, [settings.topic(t) for t in spec.consumes], NEEDS[spec.readiness]
    )
    app = ServiceApp(
        broker,
        pipeline,
        spec.backlog,
        spec.gauges,
        spec.readiness,
        asgi_routes=[("/health", health), ("/readyz", readyz), ("/livez", livez), ("/metrics", metrics_route)],
        on_startup=[guard.wait_for_dependencies, lifecycle.open_database],
        after_startup=[lifecycle.run, guard.started],
        # The consumer stops between the two: its batch in flight commits (graceful_timeout).
        on_shutdown=[guard.stop, lifecycle.stop_background],
        after_shutdown=[lifecycle.close],
        specification=AsyncAPI(broker, title=f"former-équiper-outiller: {spec.name}", description=spec.description),
    )
    return app


def _misspelled(environ: Iterable[str]) -> list[tuple[str, str]]:
    """The variables taken for a setting misspelled, whose default is in force:
    INBOX_RETENTION_DAY=7 kept personal data 30 days without a word."""
    from services.specs import misspelled_settings  # it imports this module

    return misspelled_settings(environ)


def warn_misspelled(environ: Iterable[str]) -> None:
    """A WARNING for each variable taken for a setting misspelled, once logs are set up."""
    for variable, closest in _misspelled(environ):
        log.warning("settings.ignored", variable=variable, closest=closest, hint="not a setting: its default in force")


def serve(spec: ServiceSpec) -> None:
    """Entry point of `python -m services.<name>`: the ASGI app under uvicorn. Bad settings end
    it before it connects anywhere: one line per problem on stderr, exit code 2; TLS files that
    cannot be read too (the broker's client is made with them)."""
    if problems := check_environment(os.environ, [spec.settings]):  # TLS files that cannot be used too
        # A misspelling first: it may be why a setting is missing (KAFKA_CERT_FIEL: KAFKA_CERT_FILE not given).
        print("\n".join([*(ignored(*found) for found in _misspelled(os.environ)), *problems]), file=sys.stderr)
        sys.exit(2)
    settings = spec.settings()
    app = build_app(spec, settings)
    warn_misspelled(os.environ)
    log_certificate(KafkaAccess.of(settings))
    if spec.http_api is not None:
        app = spec.http_api(app, settings)
    startup.run_server(app, settings)  # uvicorn; exits non-zero when the service cannot run
