"""A resource's fan-out re-evaluated in the background by chunks of UAIs (handlers.Reevaluations),
against the real Kafka and PostgreSQL: exactly the expected alerts over several chunks, a worker
stopped mid-way that resumes at its cursor, profiles changing while a fan-out runs.

The établissements, their profiles and subscriptions are written straight into ressources'
tables (thousands of them, in a second); the resource goes through Kafka as the ministère sends it."""

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from typing import TypeVar

import asyncpg
import pytest

import contracts as c
import contracts.internal as internal
from contracts.internal import PROFILS, ProfilLot
from helpers import Said, TopicReader, at, event, eventually, lock_waiters, profil_lot, record_count, running, send, uai
from services.common.pipeline import Pipeline
from services.common.storage.db import POOL_SIZE, create_pool, migrate
from services.common.storage.locks import lock_keys
from services.ressources import store as store_module
from services.ressources import views
from services.ressources.app import SPEC
from services.ressources.handlers import Reevaluations, make_apply, reevaluate_chunk, request_every_pair
from services.ressources.rules import Seuils
from services.ressources.settings import RessourcesSettings
from services.ressources.store import RessourcesStore

RID = "ark:/67375/fan-out"
OLD, RECENT = "12.5", "17.1"
ETABLISSEMENT_COLUMNS = [*c.Etablissement.model_fields, "event_time"]
MANUAL = dataclasses.replace(SPEC, on_start=None)
T = TypeVar("T")  # the test drives the re-evaluations itself


def ipados(n: int) -> str:
    return OLD if n % 2 else RECENT


def uais(count: int) -> list[str]:
    return [uai(f"{3600000 + n:07d}") for n in range(count)]


async def started(pool) -> None:
    """Until the service's work at start is over: its thresholds stored and their re-evaluation of
    every pair done (else it may run over the pairs `seed` adds beside the test's, holding their
    UAIs)."""
    await eventually(lambda: pool.fetchval("SELECT count(*) = 1 FROM seuils"), what="the thresholds stored at start")
    await eventually(lambda: pool.fetchval("SELECT count(*) = 0 FROM reevaluations"), what="their re-evaluation")


async def seed(pool, codes: list[str]) -> None:
    """Open collèges, each with 30 tablets on `ipados(n)`, all subscribed to RID (not yet published)."""
    t0 = datetime(2026, 9, 1, tzinfo=UTC)
    await pool.copy_records_to_table(
        "etablissements",
        records=[(u, f"Collège {u}", "college", "public", "35238", "035", "14", "53", True, t0) for u in codes],
        columns=ETABLISSEMENT_COLUMNS,
    )
    await pool.copy_records_to_table(
        "recus",
        records=[
            (internal.PROFIL_LOT, u, "L1", 1, json.dumps(lot(u, 1, ipados(n))))
            for n, u in enumerate(codes)  # the version equipement would have published first
        ],
        columns=["type", "uai", "entity", "version", "content"],
    )
    await pool.execute(views.ENTREES_SQL, codes)  # as store_derived keeps them
    await pool.copy_records_to_table(
        "abonnements",
        records=[(RID, u, date(2026, 9, 1), None, t0) for u in codes],
        columns=["resource_id", "uai", "start", "end", "event_time"],
    )


def lot(code: str, version: int, version_os: str) -> dict:
    return {
        "uai": code,
        "lot_id": "L1",
        "version": version,
        "kind": "tablette",
        "quantity": 30,
        "os": {"name": "iPadOS", "version": version_os},
        "browsers": [],
    }


def publiee(minute: int, min_ipados: str) -> tuple[str, dict]:
    data = {
        "resource_id": RID,
        "title": "Atlas",
        "editor": "E",
        "requirements": [[{"type": "os", "name": "iPadOS", "min_version": min_ipados}]],
    }
    return RID, event(c.RESSOURCE_PUBLIEE, "/ministere", data, subject=RID, time_=at(minute))


def raised(alerts: TopicReader) -> list[str]:
    """The UAI of every alerte-levee read so far, in order."""
    return [e["data"]["uai"] for e in alerts.events(c.ALERTE_LEVEE)]


async def open_alerts(pool) -> set[str]:
    return {r["uai"] for r in await pool.fetch("SELECT uai FROM alertes WHERE ouverte")}


async def pending(pool) -> bool:
    return await pool.fetchval("SELECT EXISTS (SELECT FROM reevaluations)")


async def done(pool) -> bool:
    return not await pending(pool)


async def at_least(n: int, count) -> bool:
    return await count >= n


async def cursor(pool, part: int = 0) -> str | None:
    return await pool.fetchval("SELECT after_uai FROM reevaluations WHERE resource_id = $1 AND part = $2", RID, part)


@pytest.fixture
def one_part(monkeypatch):
    """A fan-out in one part (as one of fewer than store.PART_SIZE subscribers is): one cursor."""
    monkeypatch.setattr(store_module, "PART_SIZE", 1_000_000)


async def test_a_stricter_republication_raises_exactly_the_expected_alerts_chunk_by_chunk(kafka, settings):
    codes = uais(3000)
    settings = RessourcesSettings.of(settings).model_copy(update={"reevaluation_chunk": 200})
    bootstrap = kafka.bootstrap_servers
    async with running(SPEC, settings) as pipeline, TopicReader(bootstrap, settings.topic(c.ALERTES)) as alerts:
        await started(pipeline.pool)
        await seed(pipeline.pool, codes)
        old = [u for n, u in enumerate(codes) if ipados(n) == OLD]

        await send(bootstrap, settings.topic(c.CATALOGUE), [publiee(1, "15")])
        await alerts.wait_for(lambda _: len(raised(alerts)) >= len(old), timeout=60, what="1,500 raises")
        await send(bootstrap, settings.topic(c.CATALOGUE), [publiee(2, "17.2")])  # 17.1 falls short too
        await alerts.wait_for(lambda _: len(raised(alerts)) >= len(codes), timeout=60, what="1,500 more")

        assert sorted(raised(alerts)[: len(old)]) == sorted(old), "the first publication: iPadOS 12.5 only"
        assert sorted(raised(alerts)) == sorted(codes), "then every établissement, each raised once"
        assert alerts.events(c.ALERTE_RESOLUE) == []
        await eventually(lambda: done(pipeline.pool), what="the fan-out done")
        assert await open_alerts(pipeline.pool) == set(codes)


async def test_the_alerts_of_a_fan_out_continue_the_trace_of_the_change_that_requested_it(kafka, settings):
    """A resource's fan-out is evaluated in the background, chunk by chunk, outside the batch that
    read its change: its alerts carried no trace context, and the trace of the ministère's
    publication stopped at ressources. They carry it now, a republication's trace taking over
    the parts still under way."""
    codes = uais(600)
    settings = RessourcesSettings.of(settings).model_copy(update={"reevaluation_chunk": 100})
    bootstrap = kafka.bootstrap_servers
    first, second = "4bf92f3577b34da6a3ce929d0e0e4736", "0af7651916cd43dd8448eb211c80319c"
    async with running(SPEC, settings) as pipeline, TopicReader(bootstrap, settings.topic(c.ALERTES)) as alerts:
        await started(pipeline.pool)
        await seed(pipeline.pool, codes)
        old = [u for n, u in enumerate(codes) if ipados(n) == OLD]
        for trace_id, (minute, version), count in ((first, (1, "15"), len(old)), (second, (2, "17.2"), len(codes))):
            traced = [("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01".encode())]
            await send(bootstrap, settings.topic(c.CATALOGUE), [publiee(minute, version)], headers=traced)
            await alerts.wait_for(lambda _, n=count: len(raised(alerts)) >= n, timeout=60, what=f"{count} raises")
        await eventually(lambda: done(pipeline.pool), what="the fan-out done")
    parents = [dict(r.headers).get("traceparent", b"").decode().split("-")[1:2] for r in alerts.records]
    assert parents[: len(old)] == [[first]] * len(old), "the first publication's alerts: its trace"
    assert parents[len(old) :] == [[second]] * (len(alerts.records) - len(old)), "the second's: its own"


@dataclasses.dataclass
class FanOut:
    codes: list[str]
    settings: RessourcesSettings
    pipeline: Pipeline
    alerts: TopicReader


@asynccontextmanager
async def fan_out_requested(kafka, settings, chunk: int) -> AsyncIterator[FanOut]:
    """1,000 établissements subscribed, the resource published and its fan-out requested, the
    service not evaluating it (the test does, with workers of its own). Then the service is
    restarted: its workers finish the fan-out, each alert raised once."""
    codes = uais(1000)
    old = [u for n, u in enumerate(codes) if ipados(n) == OLD]
    settings = RessourcesSettings.of(settings).model_copy(update={"reevaluation_chunk": chunk})
    bootstrap = kafka.bootstrap_servers
    async with TopicReader(bootstrap, settings.topic(c.ALERTES)) as alerts:
        async with running(MANUAL, settings) as pipeline:
            await seed(pipeline.pool, codes)
            await send(bootstrap, settings.topic(c.CATALOGUE), [publiee(1, "15")])
            await eventually(lambda: pending(pipeline.pool), what="the fan-out requested")
            yield FanOut(codes, settings, pipeline, alerts)

        async with running(SPEC, settings) as pipeline:
            await alerts.wait_for(lambda _: len(raised(alerts)) >= len(old), what="every raise")
            await eventually(lambda: done(pipeline.pool), what="the fan-out done")
            await eventually(
                lambda: pipeline.pool.fetchval("SELECT count(*) = 0 FROM outbox"), what="the outbox published"
            )
        # Every record published is on the topic now: read to its end, not only as far as the
        # reader had got (a duplicate just published would not be in it yet).
        published = await record_count(bootstrap, settings.topic(c.ALERTES))
        await alerts.wait_for(lambda rs: len(rs) >= published, what="the topic read to its end")
    assert sorted(raised(alerts)) == sorted(old), "each alert raised once"


async def test_a_fan_out_stopped_mid_way_resumes_at_its_cursor_and_raises_each_alert_once(kafka, settings, one_part):
    async with fan_out_requested(kafka, settings, 200) as f:
        pool, codes = f.pipeline.pool, f.codes
        worker = Reevaluations(f.pipeline, f.settings)
        for _ in range(3):
            chunk = await worker.step()
            assert chunk is not None and (chunk.uais, chunk.last) == (200, False)
        assert await cursor(pool) == codes[599]

        # The fourth chunk is stopped inside its transaction (it waits for a UAI this test holds).
        async with pool.acquire() as conn, conn.transaction():
            await lock_keys(conn, "uai", [codes[700]])
            fourth = asyncio.create_task(worker.step())
            await eventually(lambda: lock_waiters(conn), what="the chunk waiting for the UAI")
            fourth.cancel()
            await asyncio.gather(fourth, return_exceptions=True)
        assert await cursor(pool) == codes[599], "nothing of the stopped chunk was kept"
        await f.alerts.wait_for(lambda _: len(raised(f.alerts)) == 300, what="the first three chunks' alerts")
        # Leaving: restarted, the service's own worker resumes at the cursor.


async def test_a_chunk_rolled_back_says_no_alert_and_once_committed_says_each_once(
    kafka, settings, one_part, monkeypatch
):
    """A chunk's alerts were logged inside its transaction: one rolled back after its evaluation
    (its cursor's update refused, the service stopped) logged alerts never raised, and taken
    again logged them a second time. Now they are said once the chunk commits."""
    from services.ressources import handlers

    async with fan_out_requested(kafka, settings, 200) as f:
        worker = Reevaluations(f.pipeline, f.settings)
        said = Said()
        monkeypatch.setattr(handlers, "log", said)
        advance = RessourcesStore.advance_reevaluation
        refusals = [asyncpg.DeadlockDetectedError("the cursor's update refused")]

        async def refused_once(self, part, after_uai):
            if refusals:
                raise refusals.pop()
            return await advance(self, part, after_uai)

        monkeypatch.setattr(RessourcesStore, "advance_reevaluation", refused_once)
        with pytest.raises(asyncpg.DeadlockDetectedError):
            await worker.step()
        assert said.named("alerts.evaluated") == [], "nothing raised: rolled back"
        chunk = await eventually(worker.step, what="the chunk again, once its part's pause is over")
        assert chunk.uais == 200
        [line] = said.named("alerts.evaluated")
        assert (line["pairs"], line["raised"], line["resolved"]) == (200, 100, 0)


async def test_two_workers_evaluate_two_parts_of_one_fan_out_at_once_and_each_resumes_at_its_cursor(kafka, settings):
    async with fan_out_requested(kafka, settings, 100) as f:
        pool, codes = f.pipeline.pool, f.codes
        parts = await pool.fetch("SELECT part, after_uai, up_to FROM reevaluations ORDER BY part")
        assert [tuple(p) for p in parts] == [(0, "", codes[499]), (1, codes[499], None)], "two parts of 500"

        # The first worker takes part 0 and waits inside its first chunk for a UAI this test
        # holds; meanwhile the second takes part 1 and goes on.
        first, second = Reevaluations(f.pipeline, f.settings), Reevaluations(f.pipeline, f.settings)
        async with pool.acquire() as conn, conn.transaction():
            await lock_keys(conn, "uai", [codes[20]])
            held = asyncio.create_task(first.step())
            await eventually(lambda: lock_waiters(conn), what="part 0's chunk waiting for the UAI")
            for _ in range(2):
                chunk = await second.step()
                assert chunk is not None and (chunk.part, chunk.uais, chunk.last) == (1, 100, False)
            assert (await cursor(pool, 0), await cursor(pool, 1)) == ("", codes[699])
            held.cancel()  # part 0 stopped inside its chunk
            await asyncio.gather(held, return_exceptions=True)
        assert await cursor(pool, 0) == "", "nothing of the stopped chunk was kept"
        old = [u for n, u in enumerate(codes) if ipados(n) == OLD]
        await f.alerts.wait_for(lambda _: len(raised(f.alerts)) == 100, what="part 1's two chunks' alerts")
        assert set(raised(f.alerts)) == set(old[250:350])
        # Leaving: restarted, the service's workers finish both parts, each at its cursor.


async def failing_parts(pool) -> float:
    """What /metrics says of the parts put off (feo_reevaluation_parts_failing)."""
    async with pool.acquire() as conn:
        gauges = await RessourcesStore(conn).gauges()
    return next(g.value for g in gauges if g.name == "feo_reevaluation_parts_failing")


async def test_a_part_whose_chunks_keep_failing_is_put_off_and_the_other_parts_go_on(kafka, settings, monkeypatch):
    """Part 0 fails at every chunk (a fault in what its UAIs hold, say): it is put off, one second
    then two, and the worker evaluates part 1 meanwhile (taken first again, part 0 held every
    worker); once it evaluates again, its failures are forgotten."""
    async with fan_out_requested(kafka, settings, 100) as f:
        pool, codes = f.pipeline.pool, f.codes
        worker = Reevaluations(f.pipeline, f.settings)
        subscribers = RessourcesStore.subscribers

        async def failing_in_part_0(self, part, limit):
            if part.part == 0:
                raise RuntimeError("part 0 cannot be evaluated")
            return await subscribers(self, part, limit)

        async def now() -> float:
            return await pool.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8")

        async def put_off() -> tuple:
            """The part's failures, and its retry_at (epoch seconds, the server's clock)."""
            row = await pool.fetchrow(
                "SELECT failures, extract(epoch FROM retry_at)::float8 AS retry_at "
                "FROM reevaluations WHERE resource_id = $1 AND part = 0",
                RID,
            )
            return row["failures"], row["retry_at"]

        # The put-off is dated when it is written: bracketed by the server's clock before the step
        # and after it, a pause between the two (a loaded machine) does not shorten the wait seen
        # (audit helper-189 #4).

        with monkeypatch.context() as patched:
            patched.setattr(RessourcesStore, "subscribers", failing_in_part_0)
            before = await now()
            with pytest.raises(RuntimeError, match=r"^part 0 cannot be evaluated$"):
                await worker.step()
            after = await now()
            failures, retry_at = await put_off()
            assert failures == 1 and before + 1 <= retry_at <= after + 1
            assert await failing_parts(pool) == 1
            # Put off an hour more: the six chunks below, on a slow machine, take longer than 1 s.
            await pool.execute("UPDATE reevaluations SET retry_at = retry_at + interval '1 hour' WHERE part = 0")
            chunks = [await worker.step() for _ in range(6)]  # the last, unbounded part ends on an empty chunk
            done = [(c.part, c.uais, c.last) for c in chunks if c]
            assert done == [(1, 100, False)] * 5 + [(1, 0, True)], "part 1 evaluated meanwhile"
            assert await worker.step() is None, "part 0 put off, nothing else waiting"
            await pool.execute("UPDATE reevaluations SET retry_at = clock_timestamp() WHERE part = 0")
            before = await now()
            with pytest.raises(RuntimeError, match=r"^part 0 cannot be evaluated$"):
                await worker.step()
            after = await now()
            failures, retry_at = await put_off()
            assert failures == 2 and before + 2 <= retry_at <= after + 2, "put off twice as long"
            async with pool.acquire() as conn:  # another worker failing on it meanwhile: not again
                part0 = store_module.ReevaluationPart(RID, 0, "", codes[499])
                assert await RessourcesStore(conn).postpone_reevaluation(part0) is None
            # Days of failures: still put off, by the bound (2 ** 1024 overflows PostgreSQL's float8).
            await pool.execute("UPDATE reevaluations SET failures = 2000, retry_at = clock_timestamp() WHERE part = 0")
            before = await now()
            with pytest.raises(RuntimeError, match=r"^part 0 cannot be evaluated$"):
                await worker.step()
            after = await now()
            failures, retry_at = await put_off()
            bound = store_module.RETRY_MAX_SECONDS
            assert failures == 2001 and before + bound <= retry_at <= after + bound
        await pool.execute("UPDATE reevaluations SET retry_at = clock_timestamp() WHERE part = 0")
        chunk = await worker.step()
        assert chunk is not None and (chunk.part, chunk.uais) == (0, 100)
        assert await put_off() == (0, None)
        assert await failing_parts(pool) == 0
        assert await cursor(pool, 0) == codes[99]
        # Leaving: restarted, the service's workers finish part 0.


async def test_profiles_changing_during_a_fan_out_end_as_a_from_scratch_evaluation(kafka, settings, one_part):
    codes = uais(1000)
    settings = RessourcesSettings.of(settings).model_copy(update={"reevaluation_chunk": 50})
    bootstrap = kafka.bootstrap_servers
    async with running(SPEC, settings) as pipeline, TopicReader(bootstrap, settings.topic(c.ALERTES)) as alerts:
        await started(pipeline.pool)
        await seed(pipeline.pool, codes)
        # Every tenth établissement gets its other OS while the fan-out runs: some before its
        # cursor, some after, some in the chunk being evaluated.
        changed = {u: (RECENT if ipados(n) == OLD else OLD) for n, u in enumerate(codes) if n % 10 == 3}
        updates = [profil_lot(u, 2, os={"name": "iPadOS", "version": v}) for u, v in changed.items()]

        # The fan-out is held inside its eleventh chunk (codes 500-549) by a UAI this test locks,
        # so the profiles surely come while it runs; the batch carrying them then waits for the
        # chunk's UAIs it shares, and the chunk goes on once the test lets go.
        async with pipeline.pool.acquire() as conn, conn.transaction():
            await lock_keys(conn, "uai", [codes[520]])
            await send(bootstrap, settings.topic(c.CATALOGUE), [publiee(1, "15")])
            await eventually(lambda: lock_waiters(conn), what="the eleventh chunk waiting for the UAI")
            assert await cursor(pipeline.pool) == codes[499]
            await send(bootstrap, settings.topic(PROFILS), updates)
            await eventually(lambda: at_least(2, lock_waiters(conn)), what="the profiles waiting for the chunk")
        await eventually(
            lambda: pipeline.pool.fetchval("SELECT count(*) = $1 FROM recus WHERE version = 2", len(changed)),
            what="the new profiles",
        )
        await eventually(lambda: done(pipeline.pool), what="the fan-out done")

        final = {u: changed.get(u, ipados(n)) for n, u in enumerate(codes)}
        expected = {u for u, version in final.items() if version == OLD}
        assert await open_alerts(pipeline.pool) == expected
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 0 FROM outbox"), what="the outbox drained")
        await alerts.wait_for(
            lambda _: len(raised(alerts)) - len(alerts.events(c.ALERTE_RESOLUE)) == len(expected),
            what="the topic telling the same",
        )
    last: dict[str, str] = {}
    for e in alerts.events():
        assert last.get(e["data"]["alert_id"]) != e["type"], f"{e['type']} twice in a row for {e['data']['uai']}"
        last[e["data"]["alert_id"]] = e["type"]


async def test_a_republication_changing_only_the_title_requests_no_fan_out(kafka, settings):
    codes = uais(200)
    old = [u for n, u in enumerate(codes) if ipados(n) == OLD]
    settings = RessourcesSettings.of(settings).model_copy(update={"reevaluation_chunk": 50})
    bootstrap = kafka.bootstrap_servers
    async with running(SPEC, settings) as pipeline, TopicReader(bootstrap, settings.topic(c.ALERTES)) as alerts:
        await started(pipeline.pool)
        await seed(pipeline.pool, codes)
        await send(bootstrap, settings.topic(c.CATALOGUE), [publiee(1, "15")])
        await alerts.wait_for(lambda _: len(raised(alerts)) >= len(old), what="the first raises")
        await eventually(lambda: done(pipeline.pool), what="the first fan-out done")

        # A fan-out requested now would wait in its first chunk for the UAI this test holds, so
        # its request would still be there once the new title is stored (same transaction).
        renamed = publiee(2, "15")
        renamed[1]["data"]["title"] = "Atlas, nouvelle édition"
        async with pipeline.pool.acquire() as conn, conn.transaction():
            await lock_keys(conn, "uai", [codes[0]])
            await send(bootstrap, settings.topic(c.CATALOGUE), [renamed])
            await eventually(lambda: title_is(pipeline.pool, "Atlas, nouvelle édition"), what="the new title stored")
            assert not await pending(pipeline.pool), "no fan-out for a new title"

        await send(bootstrap, settings.topic(c.CATALOGUE), [publiee(3, "17.2")])  # 17.1 falls short too
        await alerts.wait_for(lambda _: len(raised(alerts)) >= len(codes), what="the stricter version's raises")
        await eventually(lambda: done(pipeline.pool), what="that fan-out done")
    assert sorted(raised(alerts)) == sorted(codes), "each établissement raised once, none twice"


async def title_is(pool, title: str) -> bool:
    return await pool.fetchval("SELECT ressource->>'title' = $1 FROM ressources WHERE resource_id = $2", title, RID)


class Paused(RessourcesStore):
    """A store that stops after one of its readings (`_after`), until `go` is set."""

    def __init__(self, conn, read: asyncio.Event, go: asyncio.Event):
        super().__init__(conn)
        self._read, self._go = read, go

    async def _after(self, reading: Awaitable[T]) -> T:
        result = await reading
        self._read.set()
        await self._go.wait()
        return result


class PausedAfterReading(Paused):
    """A chunk's store that stops once it has read the profiles."""

    async def load_inputs(self, uais):
        return await self._after(super().load_inputs(uais))


async def test_a_batch_on_a_uai_waits_for_the_chunk_evaluating_it(database_url):
    """Without the schema's writer lock: the batch bringing a new profile waits for the UAI lock of
    the chunk that read the former one, then evaluates after it, so the alert the chunk raised on
    the former profile is resolved (were they interleaved, it would stay open)."""
    [_, code] = codes = uais(2)
    read, go = asyncio.Event(), asyncio.Event()
    pool = await create_pool(database_url, "ressources")
    try:
        await migrate(pool, "ressources", SPEC.package_dir)
        await seed(pool, codes)
        assert ipados(1) == OLD
        apply = make_apply(Seuils())
        ressource = c.RessourcePubliee.model_validate(publiee(1, "15")[1]["data"])
        async with pool.acquire() as conn, conn.transaction():
            await apply(RessourcesStore(conn), [c.make_event(c.RESSOURCE_PUBLIEE, ressource, source="/gar")], set())

        async def chunk() -> list:
            async with pool.acquire() as conn, conn.transaction():
                done = await reevaluate_chunk(PausedAfterReading(conn, read, go), Seuils(), 10)
            return [o.event.type for o in done.outgoing if o.topic == c.ALERTES]

        async def batch() -> list:
            data = ProfilLot.model_validate(lot(code, 2, RECENT))
            profil = c.make_event(internal.PROFIL_LOT, data, source="/plateforme/equipement")
            async with pool.acquire() as conn, conn.transaction():
                applied = await apply(RessourcesStore(conn), [profil], set())
            return [o.event.type for o in applied.outgoing if o.topic == c.ALERTES]

        chunk_task = asyncio.create_task(chunk())
        await asyncio.wait_for(read.wait(), timeout=10)
        batch_task = asyncio.create_task(batch())
        await eventually(lambda: lock_waiters(pool), timeout=10, what="the batch waiting for the UAI")
        go.set()
        assert await chunk_task == [c.ALERTE_LEVEE], "the chunk, on iPadOS 12.5"
        assert await batch_task == [c.ALERTE_RESOLUE], "the batch, after it, on iPadOS 17.1"
        assert await pool.fetchval("SELECT count(*) FROM alertes WHERE ouverte") == 0
    finally:
        go.set()  # a failure above must not leave the chunk's transaction waiting
        await pool.close()


async def republish(pool, minute: int, min_ipados: str) -> None:
    ressource = c.RessourcePubliee.model_validate(publiee(minute, min_ipados)[1]["data"])
    async with pool.acquire() as conn, conn.transaction():
        await make_apply(Seuils())(
            RessourcesStore(conn), [c.make_event(c.RESSOURCE_PUBLIEE, ressource, source="/gar", time=at(minute))], set()
        )


@asynccontextmanager
async def seeded(database_url: str, codes: list[str]) -> AsyncIterator[asyncpg.Pool]:
    """ressources' schema migrated, with these établissements seeded (`seed`): its pool, closed after."""
    pool = await create_pool(database_url, "ressources")
    try:
        await migrate(pool, "ressources", SPEC.package_dir)
        await seed(pool, codes)
        yield pool
    finally:
        await pool.close()


async def one_chunk(pool, size: int):
    async with pool.acquire() as conn, conn.transaction():
        return await reevaluate_chunk(RessourcesStore(conn), Seuils(), size)


async def test_versions_coming_faster_than_a_pass_still_reach_every_subscriber(database_url, one_part):
    """Each new version started the fan-out over from the first UAI: while versions came faster
    than a pass (here one chunk of ten between two), the last UAIs were never evaluated."""
    codes = uais(25)
    async with seeded(database_url, codes) as pool:
        for minute in range(1, 7):  # 15, 17.2, 15...: iPadOS 12.5 meets neither
            await republish(pool, minute, "15" if minute % 2 else "17.2")
            await one_chunk(pool, 10)
        old = {u for n, u in enumerate(codes) if ipados(n) == OLD}
        assert old <= await open_alerts(pool), "every subscriber on iPadOS 12.5 reached"
        await fan_out(pool, Seuils())
        assert await open_alerts(pool) == set(codes), "as the last version says: 17.1 < 17.2"


async def test_a_new_version_after_some_parts_are_done_evaluates_their_ranges_again(database_url, monkeypatch):
    monkeypatch.setattr(store_module, "PART_SIZE", 10)
    codes = uais(25)
    async with seeded(database_url, codes) as pool:
        await republish(pool, 1, "15")
        for _ in range(2):  # parts 0 and 1 done (ten UAIs each), part 2 not started
            await one_chunk(pool, 20)
        assert len(await open_alerts(pool)) == 10
        await republish(pool, 2, "12")  # 12.5 meets it
        parts = await pool.fetch("SELECT part, after_uai, up_to FROM reevaluations ORDER BY part")
        assert [tuple(p) for p in parts] == [(2, codes[19], None), (3, "", codes[9]), (4, codes[9], codes[19])], (
            "the range of parts 0 and 1 cut again by PART_SIZE: two workers can take it"
        )
        await fan_out(pool, Seuils())
        assert await open_alerts(pool) == set(), "those parts 0 and 1 raised, resolved"


async def test_a_chunk_that_reaches_its_part_s_bound_ends_the_part(database_url, monkeypatch):
    """Not left at its bound for an empty chunk, one more transaction, to delete."""
    monkeypatch.setattr(store_module, "PART_SIZE", 10)
    codes = uais(20)
    async with seeded(database_url, codes) as pool:
        await republish(pool, 1, "15")
        chunk = await one_chunk(pool, 10)
        assert chunk is not None and chunk.last and chunk.uais == 10
        parts = await pool.fetch("SELECT part, after_uai, up_to FROM reevaluations ORDER BY part")
        assert [tuple(p) for p in parts] == [(1, codes[9], None)]


async def test_a_failed_chunk_puts_off_its_part_only_as_it_read_it(database_url, one_part):
    """The part is put off in a transaction after the failed chunk's: meanwhile another worker
    may have moved its cursor, or done it and a republication made a part of the same number
    again. Neither failed: not put off (it was, a second's pause and a failure shown)."""
    codes = uais(25)

    async def store_says(what):
        async with pool.acquire() as conn, conn.transaction():
            return await what(RessourcesStore(conn))

    async def put_off() -> tuple:
        row = await pool.fetchrow("SELECT failures, retry_at IS NOT NULL AS later FROM reevaluations")
        return row["failures"], row["later"]

    async with seeded(database_url, codes) as pool:
        await republish(pool, 1, "15")
        failed = await store_says(lambda store: store.next_reevaluation())  # its chunk failed, rolled back
        await one_chunk(pool, 10)  # another worker's chunk on it
        assert await store_says(lambda store: store.postpone_reevaluation(failed)) is None
        assert await put_off() == (0, False), "its cursor moved: not put off"

        await fan_out(pool, Seuils())  # done
        await republish(pool, 2, "16")  # the same part number again, from the first UAI
        again = await store_says(lambda store: store.next_reevaluation())
        assert (again.part, again.after_uai) == (failed.part, failed.after_uai)
        assert await store_says(lambda store: store.postpone_reevaluation(failed)) is None
        assert await put_off() == (0, False), "another part of that number: not put off"

        assert await store_says(lambda store: store.postpone_reevaluation(again)) == (1, 1.0)
        assert await put_off() == (1, True), "the part as read: put off"


async def test_the_upgrade_comparing_names_as_the_contract_says_evaluates_every_pair_again(database_url):
    """The alerts held were judged with names trimmed and their spaces collapsed: upgraded, the
    schema requests every subscribed pair again (a fresh one, subscribed to nothing, does not)."""
    async with seeded(database_url, uais(3)) as pool:
        assert not await pending(pool), "made with nothing subscribed: nothing to evaluate again"
        await pool.execute("DELETE FROM schema_migrations WHERE name LIKE '%0015_noms_comme_le_contrat.sql'")
        await migrate(pool, "ressources", SPEC.package_dir)  # a schema of the version before, upgraded
        parts = await pool.fetch("SELECT resource_id, part, after_uai, up_to FROM reevaluations")
        assert [tuple(p) for p in parts] == [(store_module.EVERY_RESOURCE, 0, "", None)]
        await fan_out(pool, Seuils())
        assert not await pending(pool)


async def test_a_resource_nobody_subscribes_to_makes_no_part(database_url):
    """Its publication leaves nothing for a worker to take (it left an empty part, one
    transaction to delete it)."""
    async with seeded(database_url, uais(3)) as pool:
        async with pool.acquire() as conn, conn.transaction():
            await RessourcesStore(conn).request_reevaluations(["ark:/67375/personne", RID])
        parts = await pool.fetch("SELECT resource_id, part, after_uai, up_to FROM reevaluations")
        assert [tuple(p) for p in parts] == [(RID, 0, "", None)]


async def test_a_part_under_way_carries_the_trace_of_the_latest_request(database_url):
    """A part's remaining UAIs are evaluated with the resource as it is when they are reached:
    the latest change's, whose trace they continue (a part made now, and one already under way)."""
    first, latest = (f"00-{n:032x}-00f067aa0ba902b7-01" for n in (1, 2))
    async with seeded(database_url, uais(3)) as pool:
        async with pool.acquire() as conn, conn.transaction():
            await RessourcesStore(conn).request_reevaluations([RID], {RID: first})
        await one_chunk(pool, 1)  # under way: its cursor past the first UAI
        async with pool.acquire() as conn, conn.transaction():
            await RessourcesStore(conn).request_reevaluations([RID], {RID: latest})
        rows = await pool.fetch("SELECT part, after_uai, traceparent FROM reevaluations ORDER BY part")
        assert [r["part"] for r in rows] == [0, 1] and rows[0]["after_uai"] != "", "one under way, one made now"
        assert {r["traceparent"] for r in rows} == {latest}
        async with pool.acquire() as conn, conn.transaction():
            part = await RessourcesStore(conn).next_reevaluation()
        assert part is not None and part.traceparent == latest


LATER = "ark:/67375/zz-plus-loin"  # after RID by id: taken after it, whenever requested, before
T0 = datetime(2026, 9, 1, tzinfo=UTC)


async def request(pool, rid: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await RessourcesStore(conn).request_reevaluations([rid])


async def test_parts_are_taken_in_the_order_they_were_made_whatever_their_resource(database_url, one_part):
    """Taken by resource id, the parts of a resource republished faster than its pass (each
    version cutting again what its parts had passed) held every worker: the fan-out of a resource
    after it never ran, and a withdrawal's alerts stayed open."""
    codes = uais(3)
    async with seeded(database_url, codes) as pool:
        await pool.copy_records_to_table(
            "abonnements",
            records=[(LATER, u, date(2026, 9, 1), None, T0) for u in codes],
            columns=["resource_id", "uai", "start", "end", "event_time"],
        )
        await request(pool, RID)
        await one_chunk(pool, 1)  # its part under way, past the first UAI
        await request(pool, LATER)
        await request(pool, RID)  # a new version: what its part passed, cut again
        taken = []
        while (chunk := await one_chunk(pool, 10)) is not None:
            taken.append((chunk.resource_id, chunk.part))
        assert taken == [(RID, 0), (LATER, 0), (RID, 1)]


async def test_parts_pending_when_the_order_of_turns_came_keep_the_order_they_had(database_url, monkeypatch):
    """Migration 0013 numbers the parts already there in the order they were taken until then."""
    from services.common.storage import db

    every = db._migration_files
    monkeypatch.setattr(db, "_migration_files", lambda d: [m for m in every(d) if "reevaluations_tour" not in m[0]])
    async with seeded(database_url, uais(2)) as pool:
        await pool.executemany(
            "INSERT INTO reevaluations (resource_id, part, after_uai) VALUES ($1, $2, '')",
            [(LATER, 0), (RID, 1), (RID, 0)],
        )
        monkeypatch.setattr(db, "_migration_files", every)
        await migrate(pool, "ressources", SPEC.package_dir)
        rows = await pool.fetch("SELECT resource_id, part FROM reevaluations ORDER BY tour")
        assert [tuple(r) for r in rows] == [(RID, 0), (RID, 1), (LATER, 0)]
        first = "ark:/67375/a"  # a part made now comes after them, whatever its resource's id
        await pool.execute("INSERT INTO reevaluations (resource_id, part, after_uai) VALUES ($1, 0, '')", first)
        assert await pool.fetchval("SELECT resource_id FROM reevaluations ORDER BY tour DESC LIMIT 1") == first


async def fan_out(pool, seuils: Seuils) -> None:
    """Every chunk of the re-evaluations waiting, as a worker takes them."""
    while True:
        async with pool.acquire() as conn, conn.transaction():
            if await reevaluate_chunk(RessourcesStore(conn), seuils, 10) is None:
                return


async def in_turn(
    pool, paused: asyncio.Task, go: asyncio.Event, other: asyncio.Task, seuils: Seuils, what: str
) -> None:
    """`other` started while `paused` stops after a reading: `other` waiting for it (or done), a
    worker's chunks meanwhile, then `paused` let go, both ended, and the fan-outs finished."""

    async def waiting_or_done() -> bool:
        return other.done() or bool(await lock_waiters(pool))

    await eventually(waiting_or_done, timeout=10, what=what)
    await fan_out(pool, seuils)  # what a worker may do meanwhile
    go.set()
    await asyncio.wait_for(asyncio.gather(paused, other), timeout=10)
    await fan_out(pool, seuils)


class PausedAfterResource(Paused):
    """A batch's store that stops once it has read its resources."""

    async def load_ressources(self, ids):
        return await self._after(super().load_ressources(ids))


async def test_a_subscription_and_a_stricter_republication_of_its_resource_take_turns(database_url):
    """The fan-out of a republication sees only subscriptions committed: a batch subscribing a UAI
    that read the resource before it changed, and committed after the fan-out passed the UAI,
    would leave the pair on the former verdict. The two take turns on the resource: the
    republication waits for the subscription, and its fan-out then evaluates the new pair."""
    codes = uais(2)
    [code, _] = codes
    assert ipados(0) == RECENT  # compatible with iPadOS >= 15, not >= 17.2
    read, go = asyncio.Event(), asyncio.Event()
    apply = make_apply(Seuils())

    def publication(minute: int, min_ipados: str) -> c.CloudEvent:
        data = c.RessourcePubliee.model_validate(publiee(minute, min_ipados)[1]["data"])
        return c.make_event(c.RESSOURCE_PUBLIEE, data, source="/ministere", time=at(minute))

    pool = await create_pool(database_url, "ressources")
    try:
        await migrate(pool, "ressources", SPEC.package_dir)
        await seed(pool, codes)
        await pool.execute("DELETE FROM abonnements WHERE uai = $1", code)  # subscribed by the batch below
        async with pool.acquire() as conn, conn.transaction():
            await apply(RessourcesStore(conn), [publication(1, "15")], set())

        await fan_out(pool, Seuils())

        async def subscription() -> None:
            data = c.Abonnement(resource_id=RID, uai=code, start=date(2026, 9, 1))
            abonnement = c.make_event(c.ABONNEMENT, data, source="/gar", time=at(2))
            async with pool.acquire() as conn, conn.transaction():
                await apply(PausedAfterResource(conn, read, go), [abonnement], set())

        async def republication() -> None:
            async with pool.acquire() as conn, conn.transaction():
                await apply(RessourcesStore(conn), [publication(3, "17.2")], set())

        subscribing = asyncio.create_task(subscription())
        await asyncio.wait_for(read.wait(), timeout=10)  # it has read the resource as published at first
        republishing = asyncio.create_task(republication())
        await in_turn(pool, subscribing, go, republishing, Seuils(), "the republication waiting, or done")
        assert await open_alerts(pool) == set(codes), "the new pair on the stricter resource too"
    finally:
        go.set()  # a failure above must not leave the batch's transaction waiting
        await pool.close()


async def test_a_replica_evaluates_with_the_thresholds_the_latest_one_to_start_stored(database_url):
    """During a rolling change of the thresholds, a replica still on the former ones takes part of
    the re-evaluation a new replica requested: it evaluates with the new ones, stored by that
    replica, else those pairs would keep the former verdicts once every replica is new."""
    [code] = codes = uais(1)
    assert ipados(0) == RECENT
    former, new = Seuils(min_compatible_share=0.5), Seuils(min_compatible_share=0.9)
    async with seeded(database_url, codes) as pool:
        # A second lot of 30 tablets on iPadOS 12.5: half the tablets run the resource.
        await pool.execute(
            "INSERT INTO recus (type, uai, entity, version, content) VALUES ($1, $2, 'L2', 1, $3)",
            internal.PROFIL_LOT,
            code,
            json.dumps(lot(code, 1, OLD) | {"lot_id": "L2"}),
        )
        await pool.execute(views.ENTREES_SQL, codes)
        async with pool.acquire() as conn, conn.transaction():
            ressource = c.RessourcePubliee.model_validate(publiee(1, "15")[1]["data"])
            await make_apply(former)(
                RessourcesStore(conn), [c.make_event(c.RESSOURCE_PUBLIEE, ressource, source="/gar")], set()
            )
            await RessourcesStore(conn).save_seuils(new)  # as the new replica, starting meanwhile
        async with pool.acquire() as conn, conn.transaction():
            assert await reevaluate_chunk(RessourcesStore(conn), former, 10) is not None  # the former replica's worker
        kinds = await pool.fetch("SELECT kind FROM alertes WHERE ouverte")
        assert [k["kind"] for k in kinds] == ["equipement-partiel"], "30/60 compatible < 90%"


class OnePool:
    """What Reevaluations needs of the service's pipeline, on `pool`, with `store`'s stores."""

    def __init__(self, pool: asyncpg.Pool, store=RessourcesStore):
        self._pool, self._store = pool, store

    async def run(self, work):
        async with self._pool.acquire() as conn:
            return await work(self._store(conn))

    async def run_exclusive(self, work):
        async with self._pool.acquire() as conn, conn.transaction():
            return len(await work(self._store(conn)))


class PausedAfterThresholds(Paused):
    """A batch's store that stops once it has read the thresholds in force."""

    async def seuils(self):
        return await self._after(super().seuils())


async def test_new_thresholds_and_a_new_subscription_take_turns(database_url):
    """A batch subscribing a UAI that read the former thresholds, and committed after the
    re-evaluation the new ones request had passed the UAI (its subscription not committed yet),
    left the pair on the former verdict. The change of thresholds waits for such batches."""
    [code] = codes = uais(1)
    assert ipados(0) == RECENT
    former, new = Seuils(min_compatible_share=0.5), RessourcesSettings(min_compatible_share=0.9)
    read, go = asyncio.Event(), asyncio.Event()
    pool = await create_pool(database_url, "ressources")
    try:
        await migrate(pool, "ressources", SPEC.package_dir)
        await seed(pool, codes)
        await pool.execute("DELETE FROM abonnements WHERE uai = $1", code)  # subscribed by the batch below
        await pool.execute(  # a second lot of 30 on iPadOS 12.5: half the tablets run the resource
            "INSERT INTO recus (type, uai, entity, version, content) VALUES ($1, $2, 'L2', 1, $3)",
            internal.PROFIL_LOT,
            code,
            json.dumps(lot(code, 1, OLD) | {"lot_id": "L2"}),
        )
        await pool.execute(views.ENTREES_SQL, codes)
        apply = make_apply(former)
        async with pool.acquire() as conn, conn.transaction():
            ressource = c.RessourcePubliee.model_validate(publiee(1, "15")[1]["data"])
            await apply(RessourcesStore(conn), [c.make_event(c.RESSOURCE_PUBLIEE, ressource, source="/gar")], set())
            await RessourcesStore(conn).save_seuils(former)

        async def subscription() -> None:
            data = c.Abonnement(resource_id=RID, uai=code, start=date(2026, 9, 1))
            abonnement = c.make_event(c.ABONNEMENT, data, source="/gar", time=at(2))
            async with pool.acquire() as conn, conn.transaction():
                await apply(PausedAfterThresholds(conn, read, go), [abonnement], set())

        subscribing = asyncio.create_task(subscription())
        await asyncio.wait_for(read.wait(), timeout=10)  # it has read 50%
        changing = asyncio.create_task(Reevaluations(OnePool(pool), new).reconcile_seuils())  # type: ignore[arg-type]
        await in_turn(pool, subscribing, go, changing, former, "the change of thresholds waiting, or done")
        kinds = await pool.fetch("SELECT kind FROM alertes WHERE ouverte")
        assert [k["kind"] for k in kinds] == ["equipement-partiel"], "30/60 compatible < 90%"
    finally:
        go.set()  # a failure above must not leave the batch's transaction waiting
        await pool.close()


async def test_a_replica_whose_thresholds_are_not_those_in_force_says_so_until_they_are(database_url, monkeypatch):
    """The latest replica to start stores its thresholds: a former one restarted after a rolling
    change put the former thresholds back for every replica, and nothing said so."""
    from services.ressources import handlers

    monkeypatch.setattr(handlers, "SEUILS_CHECK_SECONDS", 0.05)
    logs = Said()
    monkeypatch.setattr(handlers, "log", logs)
    reads, read = 0, RessourcesStore.seuils

    async def counted(self: RessourcesStore) -> tuple[float, float] | None:
        nonlocal reads
        held = await read(self)
        reads += 1
        return held

    monkeypatch.setattr(RessourcesStore, "seuils", counted)
    new = RessourcesSettings(min_compatible_share=0.9)
    async with seeded(database_url, uais(1)) as pool:
        async with pool.acquire() as conn:
            await RessourcesStore(conn).save_seuils(Seuils(min_compatible_share=0.5))  # a former replica's
        watching = asyncio.create_task(Reevaluations(OnePool(pool), new)._watch_seuils())  # type: ignore[arg-type]

        async def checked(times: int) -> None:
            since = reads
            await eventually(lambda: asyncio.sleep(0, reads >= since + times), what=f"{times} checks more")

        try:
            said = lambda: logs.named("seuils.differents")  # noqa: E731
            await eventually(
                lambda: asyncio.sleep(0, len(said()) >= 2), what="the replica saying so, check after check"
            )
            assert {line["level"] for line in said()} == {"warning"}
            assert said()[0]["en_vigueur"]["min_compatible_share"] == 0.5
            assert said()[0]["cette_replique"]["min_compatible_share"] == 0.9
            async with pool.acquire() as conn:
                await RessourcesStore(conn).save_seuils(new.seuils)  # a replica with them restarted
            # The check under way as they were saved may have read the former ones, and says so
            # after its read is counted; the one after it starts once that is said.
            await checked(2)
            logs.lines.clear()
            await checked(3)  # each read them once saved
            assert not said() and not watching.done()
        finally:
            watching.cancel()


class PausedAfterRequest(Paused):
    """A store that stops once it has written the parts of the re-evaluation it requests."""

    async def request_reevaluations(self, resource_ids, traceparents=None):
        return await self._after(super().request_reevaluations(resource_ids, traceparents))


async def test_two_replicas_starting_together_with_the_same_new_thresholds_request_every_pair_once(
    database_url, monkeypatch
):
    """Both read the former thresholds at their start; the second, once the first has requested
    every pair, reads them again and leaves it there (it requested a second pass over the
    country, for nothing)."""
    from services.ressources import handlers

    logs = Said()
    monkeypatch.setattr(handlers, "log", logs)
    new = RessourcesSettings(min_compatible_share=0.9)
    read, go = asyncio.Event(), asyncio.Event()
    async with seeded(database_url, uais(3)) as pool:
        async with pool.acquire() as conn:
            await RessourcesStore(conn).save_seuils(Seuils(min_compatible_share=0.5))
        first = Reevaluations(OnePool(pool, lambda conn: PausedAfterRequest(conn, read, go)), new)  # type: ignore[arg-type]
        starting = asyncio.create_task(first.reconcile_seuils())
        try:
            await asyncio.wait_for(read.wait(), timeout=10)  # every pair requested, not committed
            second = asyncio.create_task(Reevaluations(OnePool(pool), new).reconcile_seuils())  # type: ignore[arg-type]
            await eventually(lambda: lock_waiters(pool), timeout=10, what="the second waiting for the first")
        finally:
            go.set()  # a failure above must not leave the first transaction waiting
        await asyncio.wait_for(asyncio.gather(starting, second), timeout=10)
        assert len(logs.named("seuils.reevaluation")) == 1
        assert await pool.fetchval("SELECT count(*) FROM reevaluations") == 1, "one part over every UAI, once"


async def test_a_catch_up_and_a_change_of_thresholds_requesting_every_pair_take_turns(database_url):
    """A catch-up (deploy/rattrapage.py) requests every pair's re-evaluation, as a change of
    thresholds does. Both at once, without taking turns, cut the same first parts, and the
    second failed on their keys once the first committed. Here the second waits for the first,
    then cuts again what the first left out (nothing: its parts cover every UAI)."""
    codes = uais(3)
    read, go = asyncio.Event(), asyncio.Event()
    async with seeded(database_url, codes) as pool:

        async def requesting(store_class, seuils: Seuils) -> None:
            async with pool.acquire() as conn, conn.transaction():
                await request_every_pair(store_class(conn), seuils)

        changing = asyncio.create_task(
            requesting(lambda conn: PausedAfterRequest(conn, read, go), Seuils(min_compatible_share=0.9))
        )
        try:
            await asyncio.wait_for(read.wait(), timeout=10)  # its parts written, not committed
            catching_up = asyncio.create_task(requesting(RessourcesStore, Seuils()))
            await eventually(lambda: lock_waiters(pool), timeout=10, what="the catch-up waiting for the change")
            assert not catching_up.done()
        finally:
            go.set()  # a failure above must not leave the first transaction waiting
        await asyncio.wait_for(asyncio.gather(changing, catching_up), timeout=10)
        parts = await pool.fetch("SELECT after_uai, up_to FROM reevaluations ORDER BY part")
        assert [(p["after_uai"], p["up_to"]) for p in parts] == [("", None)], "one part over every UAI, once"
        assert await pool.fetchval("SELECT min_compatible_share FROM seuils") == Seuils().min_compatible_share


async def test_each_reevaluation_worker_has_a_connection_beside_the_service_s_own(kafka, settings):
    settings = RessourcesSettings.of(settings).model_copy(update={"reevaluation_workers": 3})
    async with running(MANUAL, settings) as pipeline:
        assert pipeline.pool.get_max_size() == POOL_SIZE + 3
