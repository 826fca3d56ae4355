"""A service starts whatever the order its dependencies come up in, and does not outlive them.

FastStream's ASGI app reports its startup complete before the broker connects; when Kafka
cannot be reached the broker's start fails in a background task, which uvicorn only logs: the
process then answers `/health` with 503 and never consumes, even once Kafka is back. So:

- Before FastStream starts anything, `Guard.wait_for_dependencies` (the first startup hook)
  waits for PostgreSQL, then for Kafka, retrying with a doubling delay (one line per attempt:
  what it waits for, why, the next delay), and connects the broker itself, so a failure
  surfaces as a failed startup. After `STARTUP_TIMEOUT_SECONDS` it gives up: the startup fails
  and uvicorn exits with code 3.
- A watchdog ends the process with code 1 when the service is not consuming
  `STARTUP_TIMEOUT_SECONDS` after it started (a start that failed after the wait), when its
  consumer or outbox relay task ended, or when Kafka or PostgreSQL has been unreachable for
  `UNHEALTHY_EXIT_SECONDS` (meanwhile `/health` answers 503). Clients reconnect by themselves
  after a short outage; past that bound a fresh process (whose supervisor logs the restart,
  then which waits and says what for) beats one that may never recover and says nothing. But
  only for a dependency the service cannot serve without (health.Readiness): ressources'
  readers are served without Kafka, the passerelle answers 503 without either, and a fresh
  process would serve nobody until both answer; unless its own client is stuck (every
  dependency away answering a new connection, and the one it serves without still failing
  for the service's own client: `Guard.watch`).

Only a process started by `run_server` ends itself; in-process (tests), the watchdog only logs.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import structlog
import uvicorn
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError, SaslAuthenticationFailed
from aiokafka.protocol.metadata import MetadataRequest

from services.common.messaging.connection import KafkaAccess
from services.common.runtime.health import PING_SECONDS, READ_SECONDS
from services.common.runtime.secrets import redact
from services.common.runtime.settings import ServiceSettings
from services.common.storage.db import migration_seconds

if TYPE_CHECKING:
    from faststream.kafka import KafkaBroker

    from services.common.pipeline import Pipeline

log = structlog.get_logger(__name__)

T = TypeVar("T")

FIRST_DELAY = 0.5
"""Seconds before the second attempt; the delay doubles up to MAX_DELAY."""
MAX_DELAY = 5.0
PROBE_TIMEOUT = 10.0
"""One attempt's bound: a host that drops packets must not eat the whole startup budget."""
WATCH_PERIOD = 5.0
STOP_RETRY_SECONDS = 0.1
"""How long a stop waits for the cancelled watchdog to end before cancelling it again."""
HARD_EXIT_AFTER = 30.0
"""Seconds a graceful shutdown may take once the watchdog decided to end the process."""
STARTUP_FAILURE = 3  # uvicorn's exit code when the startup fails

POSTGRES_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, unreachable, DNS, timeouts (TimeoutError is an OSError)
    asyncpg.CannotConnectNowError,  # the server is starting up or shutting down
    asyncpg.TooManyConnectionsError,
    asyncpg.PostgresConnectionError,
)
"""Errors that say PostgreSQL is not there yet; a wrong password or DSN fails at once."""


class StartupFailed(RuntimeError):
    """The service cannot start, and has said why in one line naming the setting to check:
    uvicorn need not print the traceback (`run_server`)."""


class StartupTimeout(StartupFailed):
    """A dependency did not answer within STARTUP_TIMEOUT_SECONDS."""


class DependencyRefused(StartupFailed):
    """A dependency answered with an error that waiting will not fix (a wrong password, an
    unknown database)."""


class Misconfigured(Exception):
    """A dependency that answers but refuses this service's settings: retrying cannot help.
    `variable` names the setting to check, the message the rule (never the value)."""

    def __init__(self, message: str, variable: str):
        super().__init__(message)
        self.variable = variable


class CredentialsRefused(Exception):
    """The broker refused this principal's password. Retried like an absent broker (a broker
    that is starting refuses every password until it has read its users back, and an operator
    may create the user a moment later), but each line names the settings to check."""

    variable = "KAFKA_USERNAME, KAFKA_PASSWORD"


class CertificateRefused(CredentialsRefused):
    """The broker refused this client's certificate (SSL): retried alike, naming its files."""

    variable = "KAFKA_CERT_FILE, KAFKA_KEY_FILE"


class TopicsAbsent(Exception):
    """The broker answers, but some topics this service reads do not exist (not created by the
    operator or Strimzi's Topic Operator yet, or named under another TOPIC_PREFIX), or its
    principal may not see them (its ACLs not applied yet). Retried until STARTUP_TIMEOUT_SECONDS:
    started anyway, a service under a mistyped TOPIC_PREFIX answered /health 200 and read
    nothing, saying nothing."""

    variable = "TOPIC_PREFIX"


KAFKA_UNAVAILABLE: tuple[type[BaseException], ...] = (OSError, KafkaError, CredentialsRefused, TopicsAbsent)
UNKNOWN_TOPIC, TOPIC_AUTHORIZATION_FAILED = 3, 29  # Kafka's error codes in a metadata answer


class StartupAborted(StartupFailed):
    """The process was asked to stop while it waited."""


_server: uvicorn.Server | None = None
"""The server of this process, set by `run_server`: the process is ours to end."""
_failure: str | None = None


def backoff(first: float = FIRST_DELAY, cap: float = MAX_DELAY) -> Iterator[float]:
    delay = first
    while True:
        yield delay
        delay = min(cap, delay * 2)


def _why(exc: BaseException) -> str:
    return redact(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def _stopping() -> bool:
    return _server is not None and _server.should_exit


async def _sleep_unless_stopping(seconds: float) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if _stopping():
            raise StartupAborted("asked to stop while waiting for its dependencies")
        await asyncio.sleep(min(0.1, left))


async def wait_for(
    what: str,
    attempt: Callable[[], Awaitable[T]],
    *,
    variable: str,
    deadline: float,
    retry_on: tuple[type[BaseException], ...],
    first: float = FIRST_DELAY,
    cap: float = MAX_DELAY,
) -> T:
    """`attempt()` until it returns, retrying on `retry_on` with a doubling delay until the
    monotonic `deadline`; one warning per failed attempt, StartupTimeout after the last, and
    DependencyRefused at once on another error. Each line names the `variable` to check."""
    started = time.monotonic()
    culprit = variable
    for n, delay in enumerate(backoff(first, cap), start=1):
        if _stopping():
            raise StartupAborted(f"asked to stop while waiting for {what}")
        try:
            async with asyncio.timeout(max(0.1, min(PROBE_TIMEOUT, deadline - time.monotonic()))):
                return await attempt()
        except retry_on as exc:
            left = deadline - time.monotonic()
            if not isinstance(exc, TimeoutError):  # a probe cut short by the deadline says nothing new
                culprit = getattr(exc, "variable", variable)
            if left <= 0:
                waited = round(time.monotonic() - started, 1)
                log.error(
                    "startup.gave_up", waiting_for=what, variable=culprit, attempts=n, waited_s=waited, error=_why(exc)
                )
                raise StartupTimeout(
                    f"{what} did not answer in {waited:.0f} s ({n} attempts): {_why(exc)} (check {culprit})"
                ) from None
            delay = min(delay, left)
            log.warning(
                "startup.waiting",
                waiting_for=what,
                variable=culprit,
                attempt=n,
                error=_why(exc),
                retry_in_s=round(delay, 1),
            )
            await _sleep_unless_stopping(delay)
        except Exception as exc:
            culprit = exc.variable if isinstance(exc, Misconfigured) else variable
            log.error("startup.refused", waiting_for=what, variable=culprit, error=_why(exc))
            raise DependencyRefused(f"{what}: {_why(exc)} (check {culprit})") from None
    raise AssertionError("unreachable")  # backoff() never ends


async def postgres_answers(url: str) -> None:
    try:
        conn = await asyncpg.connect(url, timeout=PROBE_TIMEOUT)
    except asyncpg.ClientConfigurationError:  # its message names the option and the rule
        raise
    except ValueError:  # asyncpg's reading of the URL: its message may quote a piece of the password
        raise Misconfigured("asyncpg cannot read it as a PostgreSQL URL", "DATABASE_URL") from None
    await conn.close()


async def kafka_answers(access: KafkaAccess, topics: Sequence[str] = ()) -> None:
    """A broker serves metadata to this access' principal, `topics` among it (TopicsAbsent). A
    plain TCP connection comes first:
    aiokafka logs each refused connection as an error, which would double every waiting line.
    Then, over SASL_SSL or SSL, one authenticated connection to that broker: aiokafka's bootstrap
    reports a refused password or certificate as a broker it could not reach; this names the
    setting to check: an untrusted broker certificate or unreadable TLS files stop the start at
    once (Misconfigured), a refused password or client certificate is retried (CredentialsRefused)."""
    for host, port, _ in collect_hosts(access.bootstrap_servers):
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            continue
        writer.close()
        break
    else:
        raise ConnectionRefusedError(f"no broker listens at {access.bootstrap_servers}")
    if access.secured:
        await _authenticates(access, host, port)
    admin = AIOKafkaAdminClient(**access.aiokafka(), request_timeout_ms=int(PROBE_TIMEOUT * 1000))
    try:
        await admin.start()
        await admin.describe_cluster()
        if topics:
            # Not describe_topics: its request lets a broker left at Kafka's default create them
            # (auto.create.topics.enable), under a mistyped prefix too.
            asked = MetadataRequest(list(topics), allow_auto_topic_creation=False)
            described = (await admin._send_request(asked)).to_object()["topics"]
            absent = sorted(
                t["topic"] for t in described if t["error_code"] in (UNKNOWN_TOPIC, TOPIC_AUTHORIZATION_FAILED)
            )
            if absent:
                raise TopicsAbsent(f"topics absent, or not readable by this principal: {', '.join(absent)}")
    finally:
        await admin.close()


async def _authenticates(access: KafkaAccess, host: str, port: int) -> None:
    for variable, value in access.credentials:
        if value is None:  # aiokafka's SCRAM then failed on None.encode(), the error blaming the bootstrap servers
            raise Misconfigured(
                f"no {variable} given: required over {access.security_protocol} (KAFKA_SECURITY_PROTOCOL)", variable
            )
    try:
        options = access.aiokafka()  # its SSL context made of the files once per attempt
    except OSError as exc:  # an SSLError too
        variables, why = access.tls_files_refused(exc)
        raise Misconfigured(why, variables) from None
    del options["bootstrap_servers"]
    try:
        # Its first request (API versions) inside: over TLS 1.3 the broker refuses a client
        # certificate after the handshake, closing the connection when that request comes.
        conn = await create_conn(host, port, request_timeout_ms=int(PROBE_TIMEOUT * 1000), **options)
    except ssl.SSLCertVerificationError:
        raise Misconfigured(
            f"the certificate of the broker at {host}:{port} is not signed by a trusted CA", "KAFKA_CA_FILE"
        ) from None
    except SaslAuthenticationFailed:
        raise CredentialsRefused(f"the broker refused the SCRAM credentials of principal {access.username!r}") from None
    except (KafkaConnectionError, ssl.SSLError) as exc:  # TLS 1.2 refuses in the handshake
        if access.scram:
            raise
        raise CertificateRefused(
            f"the broker at {host}:{port} closed the connection at once ({type(exc).__name__}): "
            "a client certificate it does not accept, or a broker stopping"
        ) from None
    conn.close()


class Guard:
    """One per service: waits for its dependencies at start, then watches it (module doc)."""

    def __init__(
        self,
        service: str,
        settings: ServiceSettings,
        broker: KafkaBroker,
        pipeline: Pipeline,
        topics: Sequence[str] = (),
        needs: Sequence[str] = ("Kafka", "PostgreSQL"),
    ):
        """`topics`: those the service reads, which must exist before it consumes; `needs`: the
        dependencies whose loss for UNHEALTHY_EXIT_SECONDS ends it (health.NEEDS), the others'
        said all the same (`dependencies.lost`)."""
        self.service = service
        self.topics = topics
        self.needs = needs
        self.settings = settings
        self.broker = broker
        self.pipeline = pipeline
        self.consuming = False
        limit = settings.unhealthy_exit_seconds
        self.watch_period = max(0.5, min(WATCH_PERIOD, limit / 5)) if limit else WATCH_PERIOD
        self._since = time.monotonic()
        self._watch: asyncio.Task | None = None

    async def wait_for_dependencies(self) -> None:
        """Startup hook, before the database and the broker start."""
        s = self.settings
        self._since = time.monotonic()
        deadline = self._since + s.startup_timeout_seconds
        await wait_for(
            f"PostgreSQL at {redact(s.database_url)}",
            lambda: postgres_answers(s.database_url),
            variable="DATABASE_URL",
            deadline=deadline,
            retry_on=POSTGRES_UNAVAILABLE,
        )
        await wait_for(
            f"Kafka at {s.kafka_bootstrap_servers}",
            lambda: kafka_answers(KafkaAccess.of(s), self.topics),
            variable="KAFKA_BOOTSTRAP_SERVERS",
            deadline=deadline,
            retry_on=KAFKA_UNAVAILABLE,
        )
        # Connected here, a broker gone again fails the startup; FastStream's own start, in a
        # background task of the ASGI lifespan, finds it connected.
        await self.broker.connect()
        self._watch = asyncio.create_task(self.watch(deadline), name=f"{self.service}-watchdog")

    async def started(self) -> None:
        """After-startup hook, last: the consumer and the relay run."""
        self.consuming = True
        log.info("startup.consuming", after_s=round(time.monotonic() - self._since, 1))

    async def stop(self) -> None:
        """Shutdown hook, first: a stopping service is not a dead one. The watchdog is cancelled
        until it has ended: a cancellation landing as one of its probes completes may be
        swallowed (FastStream's ping runs in an anyio cancel scope; Python 3.11's wait_for, no
        longer used here, did it too), and the watchdog slept on while the shutdown, awaiting
        it, hung for good."""
        if self._watch is not None:
            while not self._watch.done():
                self._watch.cancel()
                await asyncio.wait([self._watch], timeout=STOP_RETRY_SECONDS)
            if not self._watch.cancelled():
                self._watch.exception()  # retrieved: an error of its own is not logged as never retrieved
            self._watch = None

    def _ended_task(self) -> str | None:
        for sub in self.broker.subscribers:
            # FastStream replaces a consume task that raised (the old one stays listed, done);
            # one that returned is not replaced: the subscriber no longer consumes.
            tasks = getattr(sub, "tasks", ())
            if tasks and all(t.done() for t in tasks):
                return "the Kafka consumer"
        relay_task = getattr(self.pipeline.relay, "_task", None)
        if relay_task is not None and relay_task.done():
            return "the outbox relay"
        return None

    async def _unreachable(self) -> list[str]:
        down = [] if await self.broker.ping(PING_SECONDS) else ["Kafka"]
        try:
            # As long as /health waits for it: a slow database, its pool's connections held by long
            # batches, was called unreachable here while /health said 200 (ops audit s68 #7).
            async with asyncio.timeout(READ_SECONDS):  # not wait_for: in Python 3.11 it may swallow a cancellation
                await self.pipeline.pool.fetchval("SELECT 1")
        except Exception:
            down.append("PostgreSQL")
        return down

    async def watch(self, deadline: float) -> None:
        """Until the process must end (then `_fail`): started by the deadline, consumer and relay
        running, the dependencies it needs (`needs`) not away for UNHEALTHY_EXIT_SECONDS."""
        limit = self.settings.unhealthy_exit_seconds
        migrated_before = migration_seconds()
        while not self.consuming:
            if time.monotonic() > deadline + migration_seconds() - migrated_before:
                return self._fail(
                    f"not consuming {self.settings.startup_timeout_seconds:g} s after start, its migrations' "
                    "statements not counted (its database's migrations or the broker's start did not end: see "
                    "the lines above)"
                )
            await asyncio.sleep(min(0.5, self.watch_period))
        since: float | None = None  # some dependency away since
        needed_since: float | None = None  # some of those it needs (`needs`) away since
        away_since: dict[str, float] = {}  # each one away, since
        ended_before: str | None = None
        down_before: list[str] = []
        while True:
            await asyncio.sleep(self.watch_period)
            ended = self._ended_task()
            if ended and ended == ended_before:  # twice in a row: not a task being replaced
                return self._fail(f"{ended} stopped")
            ended_before = ended
            down = await self._unreachable()
            needed = [d for d in down if d in self.needs]
            now = time.monotonic()
            needed_since = (needed_since or now) if needed else None
            away_since = {d: away_since.get(d, now) for d in down}
            if not down:
                if since is not None:
                    log.info("dependencies.back", after_s=round(now - since, 1))
                since = None
            elif down != down_before:
                since = since or now
                # null: not for an outage (one it serves without ends it only if its own client is stuck)
                left = limit - (now - needed_since) if needed_since is not None and limit else None
                log.warning("dependencies.lost", unreachable=down, exits_in_s=None if left is None else round(left, 1))
            down_before = down
            if needed_since is not None and limit and now - needed_since >= limit:
                return self._fail(f"{' and '.join(needed)} unreachable for {now - needed_since:.0f} s")
            # One it serves without, away as long: ended all the same if a new connection reaches
            # it, its own client stuck (what the watchdog is for), not while it is away for all;
            # nor while another is (restarted, it would open no port until both answer: review
            # s68-2 #1), nor if its own client reached it meanwhile (back just then: #2).
            long = [d for d in down if d not in self.needs and now - away_since[d] >= limit] if limit else []
            if long and await self._answering_afresh(down) == down and set(long) <= set(await self._unreachable()):
                return self._fail(
                    f"{' and '.join(long)} answering a new connection, not the service's own, "
                    f"for {now - min(away_since[d] for d in long):.0f} s"
                )

    async def _answering_afresh(self, names: Sequence[str]) -> list[str]:
        """Those of `names` ("Kafka", "PostgreSQL") that a new connection reaches now."""
        s = self.settings
        checks = {
            "Kafka": lambda: kafka_answers(KafkaAccess.of(s)),
            "PostgreSQL": lambda: postgres_answers(s.database_url),
        }
        answering = []
        for name in names:
            try:
                async with asyncio.timeout(READ_SECONDS):
                    await checks[name]()
            except Exception:  # away (or refusing this service): not a stuck client's doing
                continue
            answering.append(name)
        return answering

    def _fail(self, reason: str) -> None:
        global _failure
        if _server is None:
            log.error("service.failing", reason=reason, hint="in-process: nothing ends")
            return
        _failure = reason
        log.error("service.exiting", reason=reason, exit_code=1)
        _server.should_exit = True
        timer = threading.Timer(HARD_EXIT_AFTER, os._exit, args=(1,))  # if the graceful shutdown hangs
        timer.daemon = True
        timer.start()


def _without_known_tracebacks(app: Any) -> Any:
    """`app`, except that a startup failing with StartupFailed, which the guard has already
    said in one line, does not give uvicorn its traceback to print."""

    async def wrapped(scope: dict, receive: Callable, send: Callable) -> None:
        async def send_quietly(message: dict) -> None:
            if message["type"] == "lifespan.startup.failed" and isinstance(sys.exc_info()[1], StartupFailed):
                message = {**message, "message": ""}
            await send(message)

        await app(scope, receive, send_quietly if scope["type"] == "lifespan" else send)

    return wrapped


def _drained(signum: int, frame: Any) -> None:
    raise SystemExit(0)


class _Server(uvicorn.Server):
    """uvicorn's server, which first runs the app's `state.before_shutdown` callbacks when asked
    to stop: it then waits for every open connection to end before the app's own shutdown, and
    a stream that never ends by itself (ressources' live alerts) would hold the stop until the
    process is killed, nothing drained."""

    def __init__(self, config: uvicorn.Config, app: Any):
        super().__init__(config)
        self._app = app

    async def shutdown(self, sockets: Any = None) -> None:
        for callback in getattr(getattr(self._app, "state", None), "before_shutdown", ()):
            try:
                await callback()
            except Exception:
                log.exception("shutdown.callback_failed")
        await super().shutdown(sockets)


def run_server(app: Any, settings: ServiceSettings) -> None:
    """`uvicorn.run`, keeping hold of the server so that the guard can end the process, which
    then exits with code 1 (code 3 when the startup failed, as with uvicorn.run). uvicorn's
    loggers are left to the root logger (logs.py); no access log."""
    global _server
    config = uvicorn.Config(
        _without_known_tracebacks(app),
        host=settings.http_host,
        port=settings.http_port,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=math.ceil(settings.requests_grace_seconds),  # typed int
    )
    _server = _Server(config, app)
    # uvicorn shuts down gracefully on SIGTERM, then raises it again for the default action,
    # which would end the process as killed: a stop that drained is a clean exit, code 0.
    signal.signal(signal.SIGTERM, _drained)
    try:
        _server.run()
    except KeyboardInterrupt:
        pass
    if _failure is not None:
        sys.exit(1)
    if not _server.started:
        sys.exit(STARTUP_FAILURE)
