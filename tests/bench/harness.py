"""What every figure of `./dev bench` stands on.

One Kafka broker and one PostgreSQL server for the whole run; for each measurement a fresh
stage (the platform's topics under their own prefix, its own database), so no figure sees
another's records, offsets or state. The services run as real processes (`python -m
services.<name>`, as in production), and the bench observes them only from outside: consumer
groups' committed offsets, what `/health` reports pending, the kernel's peak RSS.
"""

import asyncio
import itertools
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from unittest.mock import patch

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

import contracts as c
from deploy.local.kafka import LocalKafka
from deploy.local.postgres import LocalPostgres
from deploy.local.processes import SERVICES, ServiceProcesses
from deploy.topic_admin import create_topics
from deploy.topology import TopicSpec, platform_topics
from services.common.messaging.connection import kafka_options
from services.specs import specs

CONSUMES = {spec.name: spec.consumes for spec in specs()}
HEADERS = [("content-type", c.CONTENT_TYPE.encode())]
# Services in the order records flow through them: a drain check follows that order.
FLOW = ("formation", "equipement", "ressources")
SERVICE_ENV = {"LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"), "LOG_FORMAT": "json"}
"""BENCH_LOG_LEVEL=INFO: the services' per-batch lines; with BENCH_LOG_DIR, their logs are kept there."""
POLL_SECONDS = 0.05
STATEMENTS = int(os.environ.get("BENCH_PG_STATEMENTS") or 0)
"""BENCH_PG_STATEMENTS=N: the bench's PostgreSQL tracks its statements (pg_stat_statements), and a
step of `national` prints its N costliest: where the database's time went, statement by statement."""

# A producer's first records to a new topic meet "not leader" answers until the partitions
# have elected theirs; aiokafka retries and logs each at WARNING, which is noise here.
logging.getLogger("aiokafka").setLevel(logging.ERROR)


@dataclass
class Row:
    """One line of the final table: what was measured, against what, for which target."""

    figure: str
    measured: str
    baseline: str
    target: str
    ok: bool  # the target is met


@dataclass
class Stage:
    """The platform's topics under `prefix` and a database of its own."""

    name: str
    bootstrap: str
    prefix: str
    database_url: str
    log_dir: Path
    partitions: dict[str, int]  # full topic name -> partitions

    def topic(self, name: str) -> str:
        return self.prefix + name

    def group(self, service: str) -> str:
        return self.prefix + service  # services.common.messaging.consumer: group = prefixed name

    def env(self) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "DATABASE_URL": self.database_url,
            "TOPIC_PREFIX": self.prefix,
            **SERVICE_ENV,
        }


class Runtime:
    def __init__(self, tmp: Path, kafka: LocalKafka, postgres: LocalPostgres):
        self.tmp, self.kafka, self.postgres = tmp, kafka, postgres
        self._count = itertools.count(1)

    async def stage(self, name: str, extra_topics: Sequence[TopicSpec] = ()) -> Stage:
        n = next(self._count)
        prefix = f"{name}-{n}."
        topics = [*platform_topics(prefix), *(replace(t, name=prefix + t.name) for t in extra_topics)]
        await create_topics(self.kafka.bootstrap_servers, topics)
        log_dir = Path(os.environ.get("BENCH_LOG_DIR") or self.tmp) / f"{name}-{n}"
        log_dir.mkdir(parents=True)
        return Stage(
            name=name,
            bootstrap=self.kafka.bootstrap_servers,
            prefix=prefix,
            database_url=await self.postgres.create_database(f"bench_{name}_{n}"),
            log_dir=log_dir,
            partitions={t.name: t.partitions for t in topics},
        )


_TRACKING = {"shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "all"}


async def statements_reset(database_url: str) -> None:
    """From now on, what pg_stat_statements reports is this step's (BENCH_PG_STATEMENTS)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await conn.execute("SELECT pg_stat_statements_reset()")
    finally:
        await conn.close()


async def top_statements(database_url: str, count: int) -> list[str]:
    """The `count` statements that took the most execution time since `statements_reset`, one
    line each: time, calls, rows, WAL written, and the statement's beginning."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(  # the stage's database's, those its clients sent (not those inside functions)
            "SELECT total_exec_time, calls, rows, wal_bytes, regexp_replace(query, '\\s+', ' ', 'g') AS query "
            "FROM pg_stat_statements WHERE toplevel "
            "AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "ORDER BY total_exec_time DESC LIMIT $1",
            count,
        )
    finally:
        await conn.close()
    return [
        f"{r['total_exec_time']:8,.0f} ms {r['calls']:6,} calls {r['rows']:8,} rows "
        f"{int(r['wal_bytes']) / 1e6:6.1f} MB WAL  {r['query'][:100]}"
        for r in rows
    ]


@asynccontextmanager
async def runtime() -> AsyncIterator[Runtime]:
    """A broker and a PostgreSQL of the bench's own; its admin's access (KAFKA_*) in the
    environment while they run, for the bench's clients and the services it starts."""
    if STATEMENTS and os.environ.get("DATABASE_URL"):
        raise SystemExit(
            "BENCH_PG_STATEMENTS needs the bench's own PostgreSQL, started with pg_stat_statements: unset DATABASE_URL"
        )
    with (
        tempfile.TemporaryDirectory(prefix="feo-bench-") as tmp,
        LocalPostgres(Path(tmp) / "pg", settings=_TRACKING if STATEMENTS else None) as pg,
        LocalKafka(Path(tmp) / "kafka") as kafka,
        patch.dict(os.environ, kafka.access.environ()),
    ):
        yield Runtime(Path(tmp), kafka, pg)


@asynccontextmanager
async def running(
    stage: Stage, names: tuple[str, ...] = SERVICES, env: dict[str, str] | None = None
) -> AsyncIterator[ServiceProcesses]:
    """The services as real processes, healthy; stopped (SIGTERM, then SIGKILL) on exit;
    `env`: settings of their own beside the stage's."""
    async with replicated(stage, names, 1, env) as (procs,):
        yield procs


@asynccontextmanager
async def replicated(
    stage: Stage, names: tuple[str, ...], count: int, env: dict[str, str] | None = None, *, instances: bool = False
) -> AsyncIterator[list[ServiceProcesses]]:
    """`count` replicas of the services, all started before any is awaited (so none runs alone
    for long), sharing the stage's database and consumer groups; each replica logs apart.
    `instances`: each replica a static member of the groups (CONSUMER_INSTANCE_ID `{name}-{n}`)."""
    replicas = []
    for replica in range(count):
        log_dir = stage.log_dir / f"replica-{replica}"
        log_dir.mkdir(exist_ok=True)
        replicas.append(
            ServiceProcesses(
                {**stage.env(), **(env or {})},
                log_dir=log_dir,
                names=names,
                instance=str(replica) if instances else None,
            )
        )
    try:
        for procs in replicas:
            procs.start()
        for procs in replicas:
            await asyncio.to_thread(procs.wait_healthy, 120)
        yield replicas
    finally:
        for procs in replicas:
            await asyncio.to_thread(procs.stop)


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM): the kernel's own high-water mark, no sampling."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmHWM line")


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) the process has used so far, from /proc/PID/stat."""
    return _cpu(Path(f"/proc/{pid}/stat").read_text())


def _children_stats(pid: int) -> dict[int, str]:
    """/proc/PID/stat of each child of the process alive now, by pid."""
    stats = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):  # a process that just ended
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:  # its parent
            stats[int(proc.name)] = stat
    return stats


def children(pid: int) -> list[int]:
    """The pids of the process's children alive now."""
    return sorted(_children_stats(pid))


def children_cpu_seconds(pid: int) -> float:
    """The CPU time the process's children alive now have used (PostgreSQL's postmaster: its
    backends, one per connection); 0 for a process without children."""
    return sum(_cpu(stat) for stat in _children_stats(pid).values())


def machine_busy_seconds() -> float:
    """The CPU time every core of the machine has spent busy so far (user, system, interrupts;
    not idle or I/O wait), from /proc/stat: what the budget of a step is taken from."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


JIT_THREADS = ("C1 CompilerThre", "C2 CompilerThre")
"""HotSpot's JIT compiler threads ("C1 CompilerThread0", "C2 …"; /proc shows 15 characters)."""
GC_THREADS = ("GC Thread", "G1 ")
"""G1's collector threads: "GC Thread#0" (pauses), "G1 Conc#0", "G1 Main Marker", "G1 Refine#0"…"""


def jvm_threads_cpu_seconds(pid: int, names: tuple[str, ...]) -> float:
    """The CPU time the JVM's threads whose names start with one of `names` have used so far,
    from /proc/PID/task/*/stat; 0 for a process without them."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:  # a thread that just ended
            continue
        if stat[stat.index("(") + 1 :].startswith(names):
            total += _cpu(stat)
    return total


def jit_cpu_seconds(pid: int) -> float:
    """The CPU time a JVM's JIT compiler threads have used so far."""
    return jvm_threads_cpu_seconds(pid, JIT_THREADS)


def _cpu(stat: str) -> float:
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


@asynccontextmanager
async def producer(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """A partner's producer, connected (TLS, SASL) and started: what `send` sends with."""
    started = AIOKafkaProducer(
        **kafka_options(bootstrap), acks="all", enable_idempotence=True, linger_ms=20, max_batch_size=256 * 1024
    )
    await started.start()
    try:
        yield started
    finally:
        await started.stop()


async def send(
    producer: AIOKafkaProducer,
    topic: str,
    records: Iterable[tuple[str, bytes]],
    headers: list[tuple[str, bytes]] = HEADERS,
) -> list:
    """Every record, acknowledged by the broker (acks=all); their RecordMetadata, in order."""
    sent = [await producer.send(topic, value, key=key.encode(), headers=headers) for key, value in records]
    return list(await asyncio.gather(*sent))


async def produce(
    bootstrap: str, topic: str, records: Iterable[tuple[str, bytes]], headers: list[tuple[str, bytes]] = HEADERS
) -> list:
    """`send` with a producer of its own, started and stopped around it."""
    async with producer(bootstrap) as started:
        return await send(started, topic, records, headers)


async def wait_until(check: Callable[[], Awaitable[bool] | bool], *, timeout: float, what: str) -> float:
    """Seconds until `check` holds, polled every POLL_SECONDS; TimeoutError naming `what` past `timeout`."""
    start = time.monotonic()
    while True:
        done = check()
        if not isinstance(done, bool):
            done = await done
        if done:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not after {timeout:.0f} s")
        await asyncio.sleep(POLL_SECONDS)


class Observer:
    """What a stage's consumer groups have committed, how far behind they are, and what the
    services hold back (`/health`), all seen from outside the services."""

    def __init__(self, stage: Stage):
        self.stage = stage
        self._admin = AIOKafkaAdminClient(**kafka_options(stage.bootstrap))
        self._ends = AIOKafkaConsumer(**kafka_options(stage.bootstrap), enable_auto_commit=False)
        self._http = httpx.AsyncClient(timeout=5)

    async def __aenter__(self) -> "Observer":
        await self._admin.start()
        await self._ends.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()
        await self._ends.stop()
        await self._admin.close()

    def _partitions(self, topic: str) -> list[TopicPartition]:
        return [TopicPartition(topic, p) for p in range(self.stage.partitions[topic])]

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        """Partition -> the group's committed offset on `topic` (0 where it committed nothing)."""
        offsets = await self._admin.list_consumer_group_offsets(group, partitions=self._partitions(topic))
        return {tp.partition: max(0, om.offset) for tp, om in offsets.items()}

    async def end(self, topic: str) -> dict[int, int]:
        offsets = await self._ends.end_offsets(self._partitions(topic))
        return {tp.partition: offset for tp, offset in offsets.items()}

    async def lag(self, service: str) -> int:
        """Records of the service's topics its group has not committed past yet."""
        behind = 0
        for name in CONSUMES[service]:
            topic = self.stage.topic(name)
            committed, end = await self.committed(self.stage.group(service), topic), await self.end(topic)
            behind += sum(end[p] - committed.get(p, 0) for p in end)
        return behind

    async def pending(self, procs: ServiceProcesses, service: str) -> int:
        """What the service's /health reports waiting: `outbox_pending`, plus any other
        `*_pending` count it reports (work a service defers past its commit, such as a
        re-evaluation in the background, is invisible from outside unless /health names it)."""
        response = await self._http.get(f"http://127.0.0.1:{procs.ports[service]}/health")
        body = response.json()
        if body.get("outbox_pending") is None:
            raise RuntimeError(f"{service}: /health reports no outbox_pending (no database?): {response.text}")
        return sum(int(v) for k, v in body.items() if k.endswith("_pending") and v is not None)

    async def drained(self, procs: ServiceProcesses) -> bool:
        """Nothing left anywhere: checked in the order records flow (a service's lag, then what
        it holds back, then the next service's lag), so a record moving on meanwhile is still seen."""
        for service in (s for s in FLOW if s in procs.names):
            if await self.lag(service) or await self.pending(procs, service):
                return False
        return True

    async def wait_drained(self, procs: ServiceProcesses, timeout: float) -> float:
        return await wait_until(
            lambda: self.drained(procs), timeout=timeout, what=f"{', '.join(procs.names)} draining their backlog"
        )


class Tail:
    """Reads a topic from its end at start, in the background: each record with the moment
    it arrived (time.monotonic). What a dashboard following the alerts sees."""

    def __init__(self, stage: Stage, topic: str):
        self.topic = topic
        self.partitions = [TopicPartition(topic, p) for p in range(stage.partitions[topic])]
        self.records: list[tuple[float, ConsumerRecord]] = []
        self._consumer = AIOKafkaConsumer(**kafka_options(stage.bootstrap), enable_auto_commit=False)
        self._start: dict[int, int] = {}
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> "Tail":
        await self._consumer.start()
        self._consumer.assign(self.partitions)
        await self._consumer.seek_to_end(*self.partitions)
        self._start = {tp.partition: await self._consumer.position(tp) for tp in self.partitions}
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            for records in (await self._consumer.getmany(timeout_ms=100)).values():
                now = time.monotonic()
                self.records += [(now, r) for r in records]

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None, "entered"
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()

    async def caught_up(self, observer: Observer, timeout: float = 60) -> None:
        """Until every record the topic holds now has been read."""
        end = await observer.end(self.topic)
        await wait_until(
            lambda: len(self.records) >= sum(end[p] - self._start[p] for p in end),
            timeout=timeout,
            what=f"reading {self.topic} to its end",
        )
