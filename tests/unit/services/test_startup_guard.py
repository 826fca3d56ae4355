"""The startup guard's rules with stand-ins for the broker and the pool: when a service must
end, and when it must not (real processes: tests/e2e/test_startup_resilience.py)."""

import asyncio
import time
from types import SimpleNamespace

import pytest

from services.common.runtime import startup
from services.common.runtime.settings import ServiceSettings


class Stand:
    """A broker, a pool and a relay whose health the test sets; counts the watchdog's probes."""

    def __init__(self):
        self.kafka = self.database = True
        self.probes = 0
        self.consume_tasks: list[asyncio.Task] = []
        self.broker = SimpleNamespace(subscribers=[SimpleNamespace(tasks=self.consume_tasks)], ping=self.ping)
        self.pipeline = SimpleNamespace(pool=SimpleNamespace(fetchval=self.fetchval), relay=None)

    async def ping(self, timeout):
        self.probes += 1
        return self.kafka

    async def fetchval(self, sql):
        if not self.database:
            raise ConnectionRefusedError("PostgreSQL away")
        return 1


@pytest.fixture
def stand():
    s = Stand()
    yield s
    for t in s.consume_tasks:
        if t.done() and not t.cancelled():
            t.exception()  # retrieved: no "never retrieved" warning
        t.cancel()


def guard(stand: Stand, needs=("Kafka", "PostgreSQL"), **settings) -> tuple[startup.Guard, list[str]]:
    g = startup.Guard("svc", ServiceSettings(**settings), stand.broker, stand.pipeline, needs=needs)
    g.watch_period = 0.01
    failures: list[str] = []
    g._fail = failures.append
    return g, failures


async def probes(stand: Stand, n: int, watching: asyncio.Task) -> None:
    """Until the watchdog probed `n` more times (or ended)."""
    target = stand.probes + n
    deadline = time.monotonic() + 10
    while stand.probes < target and not watching.done():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)


async def test_a_consumer_task_that_returned_ends_the_service(stand):
    g, failures = guard(stand)
    stand.consume_tasks.append(asyncio.create_task(asyncio.sleep(0)))
    g.consuming = True
    await asyncio.wait_for(g.watch(time.monotonic() + 60), 10)
    assert failures == ["the Kafka consumer stopped"]


async def test_a_consume_task_replaced_after_an_error_is_not_a_stopped_consumer(stand):
    g, failures = guard(stand)

    async def boom():
        raise RuntimeError("one bad poll")

    stand.consume_tasks.append(asyncio.create_task(boom()))
    stand.consume_tasks.append(asyncio.create_task(asyncio.sleep(3600)))  # FastStream's replacement
    g.consuming = True
    watching = asyncio.create_task(g.watch(time.monotonic() + 60))
    await probes(stand, 20, watching)
    assert not watching.done() and failures == []
    watching.cancel()


async def test_a_stop_ends_the_watchdog_even_when_a_probe_swallows_its_cancellation(stand):
    """A cancellation that lands as a probe completes may be swallowed (the anyio cancel scope of
    FastStream's ping; Python 3.11's wait_for): the watchdog slept on, and the stop awaiting it,
    the service's shutdown, hung for good (an in-process test's server never stopped)."""
    g, failures = guard(stand)
    probing = asyncio.Event()

    async def ping(timeout):
        swallow = not probing.is_set()  # the first probe only
        probing.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if not swallow:
                raise
        return True  # as such a probe may, when its answer and the cancellation cross

    stand.broker.ping = ping
    g.consuming = True
    g._watch = watching = asyncio.create_task(g.watch(time.monotonic() + 60))
    await asyncio.wait_for(probing.wait(), 10)
    await asyncio.wait_for(g.stop(), 10)
    assert watching.done() and g._watch is None and failures == []


async def test_a_short_kafka_outage_does_not_end_the_service(stand):
    g, failures = guard(stand, unhealthy_exit_seconds=10)  # the outage: a few periods of 10 ms
    stand.consume_tasks.append(asyncio.create_task(asyncio.sleep(3600)))
    g.consuming = True
    watching = asyncio.create_task(g.watch(time.monotonic() + 60))
    stand.kafka = False
    await probes(stand, 3, watching)  # away for a few periods, less than 1 s
    stand.kafka = True
    await probes(stand, 3, watching)
    assert not watching.done() and failures == []
    watching.cancel()


@pytest.mark.parametrize("away, named", [("kafka", "Kafka"), ("database", "PostgreSQL")])
async def test_a_dependency_away_longer_than_the_bound_ends_the_service_naming_it(stand, away, named):
    g, failures = guard(stand, unhealthy_exit_seconds=1)
    stand.consume_tasks.append(asyncio.create_task(asyncio.sleep(3600)))
    g.consuming = True
    setattr(stand, away, False)
    started = time.monotonic()
    await asyncio.wait_for(g.watch(started + 60), 10)
    assert time.monotonic() - started >= 1, "not before the bound"
    assert failures and failures[0].startswith(f"{named} unreachable for"), failures


async def _away(*args, **kwargs) -> None:
    raise ConnectionRefusedError("no broker listens")


async def _answers(*args, **kwargs) -> None:
    return None


async def test_a_dependency_the_service_serves_without_does_not_end_it_and_one_it_needs_counts_from_its_own_loss(
    stand, monkeypatch
):
    """ressources serves its readers without Kafka: ended, it would serve nobody until Kafka is
    back (it waits for both before it opens its port). PostgreSQL lost later still ends it,
    counted from then, not from Kafka's loss."""
    monkeypatch.setattr(startup, "kafka_answers", _away)  # away for all, a new connection too
    g, failures = guard(stand, needs=("PostgreSQL",), unhealthy_exit_seconds=0.3)
    stand.consume_tasks.append(asyncio.create_task(asyncio.sleep(3600)))
    g.consuming = True
    watching = asyncio.create_task(g.watch(time.monotonic() + 60))
    stand.kafka = False
    started = time.monotonic()
    while time.monotonic() - started < 0.6:  # twice the bound
        await probes(stand, 1, watching)
    assert not watching.done() and failures == []
    stand.database = False
    lost = time.monotonic()
    await asyncio.wait_for(watching, 10)
    assert time.monotonic() - lost >= 0.3, "counted from PostgreSQL's loss, not Kafka's"
    assert failures and failures[0].startswith("PostgreSQL unreachable for"), failures


async def test_a_dependency_it_serves_without_that_a_new_connection_reaches_ends_it_its_client_stuck(
    stand, monkeypatch
):
    """What the watchdog is for, kept for a dependency the service serves without: its own
    client says Kafka away past the bound while a new connection reaches it (review s68 F7)."""
    monkeypatch.setattr(startup, "kafka_answers", _answers)
    g, failures = guard(stand, needs=("PostgreSQL",), unhealthy_exit_seconds=0.3)
    stand.consume_tasks.append(asyncio.create_task(asyncio.sleep(3600)))
    g.consuming = True
    stand.kafka = False
    started = time.monotonic()
    await asyncio.wait_for(g.watch(started + 60), 10)
    assert time.monotonic() - started >= 0.3, "not before the bound"
    assert failures and failures[0].startswith("Kafka answering a new connection, not the service's own"), failures


@pytest.mark.parametrize("case", ["postgresql away for all", "kafka back just then"])
async def test_a_stuck_looking_client_does_not_end_it_while_a_restart_could_not_start_or_once_it_is_back(
    stand, monkeypatch, case
):
    """The passerelle serves without either: Kafka answering a new connection while PostgreSQL is
    away for all, a restart would open no port until both answer; and Kafka back for its own
    client while the new connection was tried is not a stuck client (review s68-2 #1, #2)."""

    async def back(*args, **kwargs) -> None:
        stand.kafka = True  # its own client reaches it from now on

    monkeypatch.setattr(startup, "kafka_answers", _answers if case == "postgresql away for all" else back)
    monkeypatch.setattr(startup, "postgres_answers", _away)
    g, failures = guard(stand, needs=(), unhealthy_exit_seconds=0.3)
    stand.consume_tasks.append(asyncio.create_task(asyncio.sleep(3600)))
    g.consuming = True
    watching = asyncio.create_task(g.watch(time.monotonic() + 60))
    stand.kafka = False
    stand.database = case != "postgresql away for all"
    started = time.monotonic()
    while time.monotonic() - started < 0.9:  # three times the bound
        await probes(stand, 1, watching)
    assert not watching.done() and failures == []
    watching.cancel()


async def test_a_service_not_consuming_by_the_deadline_ends(stand):
    g, failures = guard(stand)
    await asyncio.wait_for(g.watch(time.monotonic() + 0.2), 10)
    assert failures == [
        "not consuming 120 s after start, its migrations' statements not counted "
        "(its database's migrations or the broker's start did not end: see the lines above)"
    ]


class Recorder:
    def __init__(self):
        self.lines: list[tuple[str, dict]] = []

    def warning(self, event, **fields):
        self.lines.append((event, fields))

    error = info = warning


async def test_waiting_retries_with_a_doubling_delay_says_so_each_time_then_gives_up(monkeypatch):
    said = Recorder()
    monkeypatch.setattr(startup, "log", said)
    attempts = 0

    async def refused():
        nonlocal attempts
        attempts += 1
        raise ConnectionRefusedError("nothing listens")

    started = time.monotonic()
    with pytest.raises(startup.StartupTimeout, match="Kafka at here did not answer"):
        await startup.wait_for(
            "Kafka at here",
            refused,
            variable="KAFKA_BOOTSTRAP_SERVERS",
            deadline=started + 2.0,  # the third delay not cut by it, on a busy machine too
            retry_on=(OSError,),
            first=0.1,
            cap=0.4,
        )
    assert time.monotonic() - started >= 2.0
    waits = [fields for event, fields in said.lines if event == "startup.waiting"]
    assert len(waits) == attempts - 1 and attempts >= 4
    assert [w["retry_in_s"] for w in waits[:3]] == [0.1, 0.2, 0.4]
    assert all(w["retry_in_s"] <= 0.4 and w["waiting_for"] == "Kafka at here" for w in waits)
    assert waits[0]["error"] == "ConnectionRefusedError: nothing listens"
    assert all(w["variable"] == "KAFKA_BOOTSTRAP_SERVERS" for w in waits)
    gave_up, fields = said.lines[-1]
    assert gave_up == "startup.gave_up" and fields["attempts"] == attempts
    assert fields["variable"] == "KAFKA_BOOTSTRAP_SERVERS"


async def test_an_error_that_is_not_unavailability_fails_at_once_naming_the_variable_and_not_the_password(monkeypatch):
    said = Recorder()
    monkeypatch.setattr(startup, "log", said)

    async def wrong_password():
        raise PermissionError("password authentication failed for postgresql://feo:s3cret@db/feo")

    started = time.monotonic()
    with pytest.raises(startup.DependencyRefused, match=r"\(check DATABASE_URL\)$") as refused:
        await startup.wait_for(
            "PostgreSQL", wrong_password, variable="DATABASE_URL", deadline=started + 60, retry_on=(ConnectionError,)
        )
    assert time.monotonic() - started < 1
    assert "s3cret" not in str(refused.value)
    [(event, fields)] = said.lines
    assert event == "startup.refused" and fields["variable"] == "DATABASE_URL"
    assert fields["error"] == "PermissionError: password authentication failed for postgresql://feo:***@db/feo"


@pytest.mark.parametrize(
    "url",
    ["postgresql://feo:S3cr/et@db.invalid:5432/feo", "postgresql://feo:p?ss@db.invalid/feo", "postgresql:///feo?x"],
)
async def test_a_url_asyncpg_cannot_read_is_refused_without_its_pieces(monkeypatch, url):
    """asyncpg's own error quoted what it could not read: a piece of the password when a `/`
    or a `?` in it was not percent-encoded (the settings check refuses those first)."""
    said = Recorder()
    monkeypatch.setattr(startup, "log", said)
    with pytest.raises(startup.DependencyRefused) as refused:
        await startup.wait_for(
            "PostgreSQL",
            lambda: startup.postgres_answers(url),
            variable="DATABASE_URL",
            deadline=time.monotonic() + 60,
            retry_on=startup.POSTGRES_UNAVAILABLE,
        )
    [(event, fields)] = said.lines
    assert event == "startup.refused" and fields["variable"] == "DATABASE_URL"
    for said_it in (fields["error"], str(refused.value)):
        assert "S3cr" not in said_it and "ss@db" not in said_it and "'x'" not in said_it, said_it
        assert "cannot read it as a PostgreSQL URL" in said_it


class Opened:
    """An app whose start fails after opening something, and whose stop closes it (or fails)."""

    def __init__(self, stop_fails: bool = False):
        self.open = False
        self.stop_fails = stop_fails

    async def start(self):
        self.open = True
        raise ConnectionRefusedError("Kafka away")

    async def stop(self):
        if self.stop_fails:
            raise OSError("closing failed")
        self.open = False


async def test_a_failed_start_closes_what_it_opened_and_raises_its_own_error():
    from services.common.runtime.app import started

    app = Opened()
    with pytest.raises(ConnectionRefusedError, match="Kafka away"):
        await started(app, app.start())
    assert not app.open


async def test_a_failed_close_after_a_failed_start_is_said_and_the_start_error_raised():
    from structlog.testing import capture_logs

    from services.common.runtime.app import started

    app = Opened(stop_fails=True)
    with capture_logs() as logs, pytest.raises(ConnectionRefusedError, match="Kafka away"):
        await started(app, app.start())
    assert [(e["event"], e["log_level"], e["error"]) for e in logs] == [
        ("startup.fermeture_incomplete", "warning", "OSError")
    ]
