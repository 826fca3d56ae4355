"""National scale: E établissements (60,000 in the national mix), one resource subscribed by all
(issue 8's fourth and fifth figures), and the peak RSS of each service (its sixth).

Setup, timed for context: the référentiel; then for each établissement one lot of 30 tablets
declared by its collectivité (iPadOS 12.5 for one half, 17.1 for the other) and one teacher
declared by its rectorat; and the resource (iPadOS >= 15). Measured, each from its first
record sent to the last alert a dashboard reads on alertes.compatibilite.v1:
- E subscriptions: one `equipement-incompatible` raised per open établissement on 12.5;
- the resource republished with stricter requirements (>= 17.2): one more per open
  établissement on 17.1;
- and, as its baseline, the same republished again: no alert to wait for, so until the
  backlog is drained (ressources committed past the record, and /health reports nothing
  pending: harness.Observer.drained).
Each step starts from a settled database: the stage's database vacuumed and analysed first (its
time printed, not counted), as autovacuum would have done long before a real republication.
Without it, autovacuum's pass over what the setup or the step before wrote fell inside a measured
step in some runs and not others (3.5 s of a core of the two in one run).
Then the floor of the first two steps: the same subscriptions, then the same republication, sent
again to topics of the bench's own and turned into the same alert records (a real alert's value
and headers, on the stream and its table) by a pass-through with no database and no rules
(passthrough.py), read by a dashboard of its own: what the steps' Kafka traffic alone takes
through Python clients on this machine, beside their targets.
Then each service's peak RSS (VmHWM): what holding the nation cost it.
"""

import asyncio
import json
import os
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaProducer, ConsumerRecord

import contracts as c
from contracts import Etablissement
from deploy.local.processes import ServiceProcesses
from deploy.referentiel.generator import generate
from deploy.referentiel.publish import publish_etablissements
from deploy.topology import TopicSpec, platform_topics
from harness import (
    FLOW,
    GC_THREADS,
    STATEMENTS,
    Observer,
    Row,
    Runtime,
    Stage,
    Tail,
    children_cpu_seconds,
    cpu_seconds,
    jit_cpu_seconds,
    jvm_threads_cpu_seconds,
    machine_busy_seconds,
    peak_rss_mb,
    produce,
    producer,
    running,
    send,
    statements_reset,
    top_statements,
    wait_until,
)
from records import T0, abonnement, affectation, lot, ressource

RESOURCE = "ark:/67375/bench-national"
OLD, RECENT = "12.5", "17.1"
SEED = 8
SUBSCRIPTIONS_TARGET, REPUBLICATION_TARGET, RSS_TARGET_MB = 5.0, 3.0, 300
SETUP_TIMEOUT, STEP_TIMEOUT = 1800, 600
"""The services measured: the records go to Kafka directly, not through the passerelle."""
PASSTHROUGH = Path(__file__).with_name("passthrough.py")
ROOT = Path(__file__).resolve().parents[2]
FLOOR_SOURCE, FLOOR_ALERTS, FLOOR_TABLE = "bench.floor.abonnements", "bench.floor.alertes", "bench.floor.alertes.etat"


def floor_topics() -> list[TopicSpec]:
    """The pass-through's topics: as those it stands in for (partitions, compaction, timestamps)."""
    platform = {t.name: t for t in platform_topics("")}
    return [
        replace(platform[c.CATALOGUE], name=FLOOR_SOURCE),
        replace(platform[c.ALERTES], name=FLOOR_ALERTS),
        replace(platform[c.ALERTES_ETAT], name=FLOOR_TABLE),
    ]


def ipados(i: int) -> str:
    return OLD if i % 2 == 0 else RECENT


async def setup(stage: Stage, observer: Observer, procs: ServiceProcesses, etabs: list[Etablissement]) -> None:
    """The référentiel first (a declaration about a UAI not yet known is refused), then the rest."""
    started = time.monotonic()
    await publish_etablissements(stage.bootstrap, etabs, stage.topic(c.REFERENTIEL))
    sent = time.monotonic() - started
    absorbed = await observer.wait_drained(procs, SETUP_TIMEOUT)
    print(
        f"  référentiel: {len(etabs):,} sent in {sent:.1f} s, absorbed by the services {absorbed:.1f} s later",
        flush=True,
    )
    started = time.monotonic()
    await asyncio.gather(
        produce(stage.bootstrap, stage.topic(c.EQUIPEMENT), [(e.uai, lot(e, ipados(i))) for i, e in enumerate(etabs)]),
        produce(stage.bootstrap, stage.topic(c.FORMATION), [(e.uai, affectation(e)) for e in etabs]),
        produce(stage.bootstrap, stage.topic(c.CATALOGUE), [ressource(RESOURCE, "15")]),
    )
    sent = time.monotonic() - started
    absorbed = await observer.wait_drained(procs, SETUP_TIMEOUT)
    print(f"  lots and teachers: {2 * len(etabs):,} sent in {sent:.1f} s, absorbed {absorbed:.1f} s later", flush=True)


async def settle(database_url: str) -> float:
    """The database vacuumed and analysed: what autovacuum owes the tables written so far done
    now, before a step, not during it. How long it took."""
    started = time.monotonic()
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("VACUUM (ANALYZE)")
    finally:
        await conn.close()
    return time.monotonic() - started


class Step:
    """One measured step: from its first record sent to its last alert read (without alerts: to
    the backlog drained), and how many. It ends once the expected alerts have arrived and the
    backlog is drained: the alerts are waited for, not the backlog alone, for a service may do
    part of the work after its commit (a re-evaluation in the background)."""

    def __init__(
        self,
        tail: Tail,
        observer: Observer,
        procs: ServiceProcesses,
        expected: int,
        database_url: str,
        postgres: int | None,
        kafka: int | None = None,
    ):
        self.tail, self.observer, self.procs, self.expected = tail, observer, procs, expected
        self.database_url = database_url
        """The stage's database: where the WAL the step wrote is read (pg_stat_wal, the whole
        server's: with DATABASE_URL, other databases' writes count too)."""
        self.postgres = postgres
        """The postmaster's pid: its backends' CPU is counted (None with DATABASE_URL)."""
        self.kafka = kafka
        """The broker's pid (None with KAFKA_BOOTSTRAP_SERVERS)."""

    def _cpu(self) -> tuple[float, float, float, float, float, float]:
        """CPU seconds used so far by ressources, by PostgreSQL's backends, by the broker, by
        the broker's JIT compilers and its garbage collector, and by the whole machine (every
        process, this bench included)."""
        backends = children_cpu_seconds(self.postgres) if self.postgres else 0.0
        broker, jit, gc = (
            (cpu_seconds(self.kafka), jit_cpu_seconds(self.kafka), jvm_threads_cpu_seconds(self.kafka, GC_THREADS))
            if self.kafka
            else (0.0, 0.0, 0.0)
        )
        return cpu_seconds(self.procs.process("ressources").pid), backends, broker, jit, gc, machine_busy_seconds()

    async def _wal(self) -> tuple[int, int, int]:
        """WAL records and full-page images the server has counted so far (pg_stat_wal: a
        backend reports its own at most once a second, so these lag a little), and where its WAL
        ends now (exact: a step's bytes are the distance between two of these)."""
        conn = await asyncpg.connect(self.database_url)
        try:
            row = await conn.fetchrow("SELECT wal_records, wal_fpi, pg_current_wal_lsn() AS lsn FROM pg_stat_wal")
            assert row is not None  # a view of one row
            return (int(row["wal_records"]), int(row["wal_fpi"]), int(row["lsn"]))
        finally:
            await conn.close()

    async def __aenter__(self) -> "Step":
        self.settled = await settle(self.database_url)
        if STATEMENTS:
            await statements_reset(self.database_url)
        self.seen_before = len(self.tail.records)
        self.wal_before = await self._wal()
        self.cpu_before = self._cpu()
        self.started = time.monotonic()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if exc[0] is not None:
            return
        await wait_until(
            lambda: len(self.tail.records) - self.seen_before >= self.expected,
            timeout=STEP_TIMEOUT,
            what=f"{self.expected:,} alerts on {self.tail.topic}",
        )
        await self.observer.wait_drained(self.procs, STEP_TIMEOUT)
        await self.tail.caught_up(self.observer)
        alerts = self.tail.records[self.seen_before :]
        self.raised = sum(json.loads(r.value)["type"] == c.ALERTE_LEVEE for _, r in alerts)
        self.alerts = len(alerts)
        self.seconds = (alerts[-1][0] if alerts else time.monotonic()) - self.started
        after = self._cpu()
        self.until_drained = time.monotonic() - self.started
        used = [a - b for a, b in zip(after, self.cpu_before, strict=True)]
        self.ressources_cpu, self.postgres_cpu, self.kafka_cpu, self.jit_cpu, self.gc_cpu, self.machine_cpu = used
        self.wal = [a - b for a, b in zip(await self._wal(), self.wal_before, strict=True)]
        self.statements = await top_statements(self.database_url, STATEMENTS) if STATEMENTS else []

    def describe(self) -> str:
        count = f"{self.alerts:,} alerts" + ("" if self.alerts == self.expected else f", expected {self.expected:,}")
        return f"{self.seconds:.1f} s ({count})"

    def cpu(self) -> str:
        """The CPU the step cost ressources, PostgreSQL and the broker (until drained, so a little
        idle time too): less noisy than its duration on a shared machine, to compare two
        versions. And the machine's budget: how busy all its cores were over the step, out of
        what they could give (a step whose cores were all busy is bound by the sum of the CPU
        every process needs, not by any one of them)."""
        backends = f", PostgreSQL {self.postgres_cpu:.1f} s" if self.postgres else ""
        broker = (
            f", Kafka {self.kafka_cpu:.1f} s (its JIT {self.jit_cpu:.1f} s, GC {self.gc_cpu:.1f} s)"
            if self.kafka
            else ""
        )
        cores = os.cpu_count() or 1
        machine = f"machine busy {self.machine_cpu:.1f} of {cores * self.until_drained:.1f} core-s"
        records, fpi, size = self.wal
        wal = f"; WAL {size / 1e6:,.0f} MB ({records:,} records, {fpi:,} full pages)"
        statements = "".join(f"\n      {line}" for line in self.statements)
        settled = f"; settled before in {self.settled:.1f} s (VACUUM ANALYZE, not counted)"
        return f"CPU: ressources {self.ressources_cpu:.1f} s{backends}{broker}; {machine}{wal}{settled}{statements}"

    def as_expected(self) -> bool:
        return self.alerts == self.raised == self.expected


@dataclass
class Floor:
    """One step through the pass-through: how long, how many alerts of how many expected, the
    CPU seconds it cost the pass-through, the broker and this bench (the partner's producer and
    the dashboards), and how busy the machine's cores were, out of what they could give."""

    seconds: float
    alerts: int
    expected: int
    cpu: float
    kafka_cpu: float
    bench_cpu: float
    machine_cpu: float
    machine_seconds: float

    def describe(self) -> str:
        count = f"{self.alerts:,} alerts" + ("" if self.as_expected() else f", expected {self.expected:,}")
        return (
            f"{self.seconds:.1f} s ({count}); CPU: pass-through {self.cpu:.1f} s, Kafka {self.kafka_cpu:.1f} s, "
            f"bench {self.bench_cpu:.1f} s; machine busy {self.machine_cpu:.1f} of {self.machine_seconds:.1f} core-s"
        )

    def as_expected(self) -> bool:
        return self.alerts == self.expected


class PassThrough:
    """The pass-through (passthrough.py) on the bench's floor topics, in place of the platform,
    read by a dashboard of its own; `step` times one of the national steps through it. Its
    errors go to `passthrough.log` in the stage's log directory."""

    def __init__(self, stage: Stage, alerting: list[str], fanout: list[str], alert: ConsumerRecord, kafka: int | None):
        self.stage, self.kafka = stage, kafka
        self.config = {
            "source": stage.topic(FLOOR_SOURCE),
            "partitions": stage.partitions[stage.topic(FLOOR_SOURCE)],
            "alerts": stage.topic(FLOOR_ALERTS),
            "table": stage.topic(FLOOR_TABLE),
            "group": stage.prefix + "passthrough",
            "alerting": alerting,
            "fanout": fanout,
            "alert": alert.value.hex(),
            "headers": [(name, value.hex()) for name, value in alert.headers],
        }
        self._stack = AsyncExitStack()
        self.log = stage.log_dir / "passthrough.log"

    async def __aenter__(self) -> "PassThrough":
        config = self.stage.log_dir / "passthrough.json"
        config.write_text(json.dumps(self.config))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
        log = self.log
        async with AsyncExitStack() as stack:
            with log.open("wb") as errors:  # the child has its own copy of the file once started
                self.process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    str(PASSTHROUGH),
                    str(config),
                    stdout=asyncio.subprocess.PIPE,
                    stderr=errors,
                    env=env,
                )
            stack.push_async_callback(self._end)
            assert self.process.stdout is not None
            ready = await asyncio.wait_for(self.process.stdout.readline(), timeout=60)
            if ready.strip() != b"ready":
                raise RuntimeError(f"the pass-through did not start (exit code {await self.process.wait()}; see {log})")
            self.tail = await stack.enter_async_context(Tail(self.stage, self.stage.topic(FLOOR_ALERTS)))
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def _ended(self) -> RuntimeError:
        return RuntimeError(f"the pass-through ended (exit code {self.process.returncode}; see {self.log})")

    async def _end(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
        await self.process.wait()

    def _used(self) -> tuple[float, float, float, float, float]:
        broker = cpu_seconds(self.kafka) if self.kafka else 0.0
        bench = cpu_seconds(os.getpid())
        return cpu_seconds(self.process.pid), broker, bench, machine_busy_seconds(), time.monotonic()

    async def step(self, gar: AIOKafkaProducer, records: list[tuple[str, bytes]], expected: int) -> Floor:
        """From the first of `records` sent to the last of the `expected` alert records they make."""
        if self.process.returncode is not None:
            raise self._ended()
        seen = len(self.tail.records)
        before = self._used()
        await send(gar, self.stage.topic(FLOOR_SOURCE), records)
        await wait_until(
            lambda: len(self.tail.records) - seen >= expected or self.process.returncode is not None,
            timeout=STEP_TIMEOUT,
            what=f"{expected:,} alerts on {self.tail.topic}",
        )
        if self.process.returncode is not None:
            raise self._ended()
        after = self._used()
        cpu, broker, bench, machine, elapsed = (a - b for a, b in zip(after, before, strict=True))
        seconds = self.tail.records[-1][0] - before[-1]  # to the last alert read
        alerts = len(self.tail.records) - seen
        cores = os.cpu_count() or 1
        return Floor(seconds, alerts, expected, cpu, broker, bench, machine, cores * elapsed)


async def figure(runtime: Runtime, count: int) -> list[Row]:
    print(f"\n== national: {count:,} établissements, one resource subscribed by all", flush=True)
    etabs = list(generate(count, SEED))
    open_ = [(i, e) for i, e in enumerate(etabs) if e.ouvert]
    stage = await runtime.stage("national", extra_topics=floor_topics())
    catalogue = stage.topic(c.CATALOGUE)
    postgres, kafka = runtime.postgres.pid, runtime.kafka.pid
    async with running(stage, FLOW) as procs, Observer(stage) as observer:
        await setup(stage, observer, procs, etabs)
        # Each step times the platform from its first record sent: the records are built, and
        # the partner's producer connected and told the topic's partitions, before it starts.
        subscribed = [abonnement(RESOURCE, e) for e in etabs]
        stricter_one = [ressource(RESOURCE, "17.2", T0 + timedelta(minutes=1))]
        unchanged_one = [ressource(RESOURCE, "17.2", T0 + timedelta(minutes=2))]
        async with Tail(stage, stage.topic(c.ALERTES)) as tail, producer(stage.bootstrap) as gar:
            await gar.partitions_for(catalogue)
            expected = sum(ipados(i) == OLD for i, _ in open_)
            async with Step(tail, observer, procs, expected, stage.database_url, postgres, kafka) as subscriptions:
                await send(gar, catalogue, subscribed)
                produced = time.monotonic() - subscriptions.started
            print(
                f"  {count:,} subscriptions -> last alert    {subscriptions.describe()}; sent in {produced:.1f} s; "
                + subscriptions.cpu(),
                flush=True,
            )
            expected = sum(ipados(i) == RECENT for i, _ in open_)
            async with Step(tail, observer, procs, expected, stage.database_url, postgres, kafka) as stricter:
                await send(gar, catalogue, stricter_one)
            print(f"  stricter republication -> last alert  {stricter.describe()}; {stricter.cpu()}", flush=True)
            async with Step(tail, observer, procs, 0, stage.database_url, postgres, kafka) as unchanged:
                await send(gar, catalogue, unchanged_one)
            print(f"  no-change republication -> drained    {unchanged.describe()}; {unchanged.cpu()}", flush=True)
            floors = ("no floor: no alert to copy", "no floor")
            if subscriptions.alerts:
                alerting = [e.uai for i, e in open_ if ipados(i) == OLD]
                fanout = [e.uai for i, e in open_ if ipados(i) == RECENT]
                template = tail.records[subscriptions.seen_before][1]  # a subscription's alert, as ressources sent it
                async with PassThrough(stage, alerting, fanout, template, kafka) as passthrough:
                    floor = await passthrough.step(gar, subscribed, len(alerting))
                    print(f"  pass-through floor: subscriptions -> last alert   {floor.describe()}", flush=True)
                    stricter_floor = await passthrough.step(gar, stricter_one, len(fanout))
                    print(
                        f"  pass-through floor: republication -> last alert   {stricter_floor.describe()}", flush=True
                    )
                floors = (
                    f"pass-through floor {floor.seconds:.1f} s",
                    f"pass-through floor {stricter_floor.seconds:.1f} s",
                )
        rss = {name: peak_rss_mb(procs.process(name).pid) for name in procs.names}
    print("  peak RSS  " + "   ".join(f"{name} {mb:,.0f} MB" for name, mb in rss.items()))
    return [
        Row(
            f"national: {count:,} subscriptions -> last alert",
            subscriptions.describe(),
            f"sent in {produced:.1f} s; {floors[0]}",
            f"<= {SUBSCRIPTIONS_TARGET:g} s",
            subscriptions.as_expected() and subscriptions.seconds <= SUBSCRIPTIONS_TARGET,
        ),
        Row(
            "national: stricter republication -> last alert",
            stricter.describe(),
            f"no-change republication {unchanged.seconds:.1f} s; {floors[1]}",
            f"<= {REPUBLICATION_TARGET:g} s",
            stricter.as_expected() and unchanged.as_expected() and stricter.seconds <= REPUBLICATION_TARGET,
        ),
    ] + [
        Row(
            f"peak RSS {name}, {count:,} établissements",
            f"{mb:,.0f} MB",
            "-",
            f"<= {RSS_TARGET_MB} MB",
            mb <= RSS_TARGET_MB,
        )
        for name, mb in rss.items()
    ]
