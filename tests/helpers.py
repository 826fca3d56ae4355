"""Test helpers: wait on a condition with a deadline, read topics, build partner events."""

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from services.common.messaging.connection import kafka_options

T = TypeVar("T")


TEST_PARTITIONS = 6
"""Partitions of every topic a test makes (a deployment's have 12): each test has its own
topics on the session's broker."""


_HOLDS = (
    "import sys, time; from pathlib import Path; from deploy.local.datadir import DataDir; "
    "held = DataDir(Path(sys.argv[1])); held.lock({'Kafka': int(sys.argv[2])}); print('held', flush=True); "
    "time.sleep(120)"
)


@contextmanager
def platform_on(data_dir: Path, kafka_port: int = 19092) -> Iterator[int]:
    """Another process holding `data_dir` as a running platform does (DataDir.lock, its Kafka on
    `kafka_port`): its PID, for as long as the block runs."""
    root = Path(__file__).resolve().parents[1]
    with subprocess.Popen(
        [sys.executable, "-c", _HOLDS, str(data_dir), str(kafka_port)], stdout=subprocess.PIPE, text=True, cwd=root
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "held\n", "the lock not taken"
            yield holder.pid
        finally:
            holder.kill()


@contextmanager
def own_postgres(prefix: str) -> Iterator[Any]:
    """A PostgreSQL server started for the caller alone, stopped and its data removed after. Not
    under pytest's basetemp: every pytest session resets its parent to mode 0700, which would
    lock out the server's system user if two sessions run at once."""
    import shutil
    import tempfile
    from pathlib import Path

    from deploy.local.postgres import LocalPostgres

    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    server = LocalPostgres(data_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def eventually(check: Callable[[], Awaitable[T]], *, timeout: float = 30, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def event(
    type_: str,
    source: str,
    data: dict,
    *,
    subject: str | None = None,
    time_: datetime | None = None,
    id_: str | None = None,
) -> dict:
    """A CloudEvent as a partner writes it, as a plain dict."""
    return {
        "specversion": "1.0",
        "id": id_ or str(uuid.uuid4()),
        "source": source,
        "type": type_,
        "time": (time_ or datetime.now(UTC)).isoformat(),
        "subject": subject,
        "datacontenttype": "application/json",
        "data": data,
    }


def ressource(resource_id: str, title: str = "Atlas", **changes: Any) -> dict:
    """A `ressource-publiee` payload as the ministère writes it: tablets on iPadOS >= 15, 10 Mbit/s,
    CRCN 3.4 at level 2; `changes` replace fields."""
    return {
        "resource_id": resource_id,
        "title": title,
        "editor": "E",
        "requirements": [[{"type": "os", "name": "iPadOS", "min_version": "15"}]],
        "tools": [],
        "min_bandwidth_mbps": 10,
        "needs_ent": False,
        "training": {"competences": [{"code": "3.4", "level": 2}], "tools": []},
        **changes,
    }


def at(minutes: int) -> datetime:
    """A fixed instant, so tests order events by time explicitly."""
    return datetime(2026, 9, 1, 8, 0, tzinfo=UTC) + timedelta(minutes=minutes)


class Said:
    """Stands in for a module's structlog logger (monkeypatch its `log`): every line it is told,
    as a dict with `event` and `level`. structlog.testing.capture_logs does not see the loggers
    a configured structlog has cached (cache_logger_on_first_use), as a test run after another
    that configured logging finds them."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        return lambda event, *_, **values: self.lines.append({"event": event, "level": level, **values})

    def named(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["event"] == event]


class NotUtf8(str):
    """A header name that aiokafka's Python record builder writes as `\\xff\\xfe` and its
    own bytes: not UTF-8, which the broker takes (aiokafka's C builder encodes names itself)."""

    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        return b"\xff\xfe" + str(self).encode()


@contextmanager
def python_record_builder(monkeypatch: Any) -> Iterator[None]:
    """aiokafka's producers build their batches with its Python builder, which writes a
    `NotUtf8` name as it says."""
    import aiokafka.producer.message_accumulator as accumulator
    import aiokafka.producer.producer as producer
    from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

    with monkeypatch.context() as m:
        m.setattr(accumulator, "DefaultRecordBatchBuilder", _DefaultRecordBatchBuilderPy)
        m.setattr(producer, "DefaultRecordBatchBuilder", _DefaultRecordBatchBuilderPy)
        yield


async def send(
    bootstrap: str,
    topic: str,
    records: list[tuple[str, bytes | dict]],
    headers: list[tuple[str, bytes]] = (),
    *,
    partition: int | None = None,
    compression: str | None = None,
) -> None:
    """Records in order (aiokafka keeps one batch in flight per partition), acknowledged by the
    broker; on `partition`, else on their key's (Kafka's default partitioner); their batches
    compressed with `compression` (a Kafka codec: gzip, snappy, lz4, zstd)."""
    producer = AIOKafkaProducer(
        **kafka_options(bootstrap),
        acks="all",
        enable_idempotence=True,
        max_request_size=2 * 1024 * 1024,
        compression_type=compression,
    )
    await producer.start()
    try:
        sent = []
        for key, value in records:
            raw = value if isinstance(value, bytes) else json.dumps(value).encode()
            sent.append(
                await producer.send(
                    topic,
                    raw,
                    key=key.encode(),
                    partition=partition,
                    headers=[("content-type", b"application/cloudevents+json"), *headers],
                )
            )
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def send_in_transactions(bootstrap: str, topic: str, records: list[tuple[str, dict, bool]]) -> None:
    """Each record in a Kafka transaction of its own, as a partner's transactional producer writes
    (Kafka Streams, Connect's exactly-once delivery), committed when its flag says so, else aborted:
    the partition then holds its record and the transaction's marker after it."""
    producer = AIOKafkaProducer(**kafka_options(bootstrap), transactional_id=f"partner-{uuid.uuid4().hex}")
    await producer.start()
    try:
        for key, value, committed in records:
            await producer.begin_transaction()
            await producer.send_and_wait(topic, json.dumps(value).encode(), key.encode())
            await (producer.commit_transaction() if committed else producer.abort_transaction())
    finally:
        await producer.stop()


class TopicReader:
    """Reads a topic from the beginning, in the background, keeping every record."""

    def __init__(self, bootstrap: str, topic: str):
        self.records: list = []
        self._consumer = AIOKafkaConsumer(
            topic, **kafka_options(bootstrap), auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
        )
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> "TopicReader":
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        async for record in self._consumer:
            self.records.append(record)

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()

    def events(self, type_: str | None = None) -> list[dict]:
        out = [json.loads(r.value) for r in self.records]
        return [e for e in out if type_ is None or e["type"] == type_]

    async def wait_for(self, predicate: Callable[[list], bool], *, timeout: float = 30, what: str = "records") -> list:
        async def check():
            return predicate(self.records) and self.records

        return await eventually(check, timeout=timeout, what=what)


class running:
    """Runs one service in this process against the real broker and database."""

    def __init__(self, spec, settings):
        from faststream import TestApp

        from services.common.runtime.app import build_app

        self.app = build_app(spec, settings)
        self._ctx = TestApp(self.app)

    async def __aenter__(self):
        from services.common.runtime.app import started

        await started(self.app, self._ctx.__aenter__())
        return self.app.pipeline

    async def __aexit__(self, *exc):
        await self._ctx.__aexit__(*exc)


def uai(digits: str) -> str:
    """A valid UAI from its seven digits (the check letter computed)."""
    import contracts

    return digits + contracts.uai_check_letter(digits)


def college(code: str, *, dep: str = "035", academie: str = "14", region: str = "53", minute: int = 0) -> dict:
    """The référentiel entry of an open public collège, as the ministère sends it."""
    import contracts

    return event(
        contracts.ETABLISSEMENT,
        "/ministere",
        {
            "uai": code,
            "nom": f"Collège {code}",
            "type": "college",
            "statut": "public",
            "code_commune": dep[1:] + "238",
            "code_departement": dep,
            "code_academie": academie,
            "code_region": region,
            "ouvert": True,
        },
        subject=code,
        time_=at(minute),
    )


def profil_lot(
    code: str,
    version: int,
    *,
    lot_id: str = "L1",
    kind: str = "tablette",
    quantity: int = 30,
    os: dict | None = None,
    browsers: list[dict] = (),
) -> tuple[str, dict]:
    """One lot as equipement publishes it on equipement.profils.v2: (record key, event)."""
    import contracts.internal as i

    data = {
        "uai": code,
        "lot_id": lot_id,
        "version": version,
        "kind": kind,
        "quantity": quantity,
        "os": os,
        "browsers": list(browsers),
    }
    return f"{code}/{lot_id}", event(
        i.PROFIL_LOT, "/plateforme/equipement", data, subject=f"{code}/{lot_id}", time_=at(version)
    )


def profil_connectivite(code: str, version: int, bandwidth_mbps: float, ent: bool) -> tuple[str, dict]:
    import contracts.internal as i

    data = {"uai": code, "version": version, "bandwidth_mbps": bandwidth_mbps, "ent": ent}
    return code, event(i.PROFIL_CONNECTIVITE, "/plateforme/equipement", data, subject=code, time_=at(version))


def couverture(
    code: str,
    version: int,
    enseignants: int,
    competences: dict[str, list[int]],
    outils: dict[str, int] | None = None,
    *,
    group: int | None = None,
) -> list[tuple[str, dict]]:
    """A UAI's coverage as formation publishes it on formation.couvertures.v2: its records, one
    group (`group`: its number) or, as formation did before groups, none."""
    import contracts.internal as i

    records = [
        (
            code,
            event(
                i.COUVERTURE_ENSEIGNANTS,
                "/plateforme/formation",
                {"uai": code, "version": version, "enseignants": enseignants, "competences": competences},
                subject=code,
                time_=at(version),
            ),
        )
    ]
    for kind, n in (outils or {}).items():
        records.append(
            (
                f"{code}/{kind}",
                event(
                    i.COUVERTURE_OUTIL,
                    "/plateforme/formation",
                    {"uai": code, "kind": kind, "version": version, "enseignants": n},
                    subject=f"{code}/{kind}",
                    time_=at(version),
                ),
            )
        )
    for _, record in records if group else ():
        record["data"] |= {"group": group, "group_size": len(records)}
    return records


async def lock_waiters(conn) -> int:  # a connection or a pool
    """Sessions of this database waiting for a lock now. pg_stat_activity is read afresh: within
    a transaction PostgreSQL would otherwise answer from the snapshot of its first reading."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )


async def record_count(bootstrap: str, topic: str) -> int:
    """How many records `topic` holds (the sum of its partitions' end offsets): what a test
    counts to show that nothing more was published, without waiting for nothing to come."""
    producer, consumer = AIOKafkaProducer(**kafka_options(bootstrap)), AIOKafkaConsumer(**kafka_options(bootstrap))
    try:
        await producer.start()
        await consumer.start()
        partitions = [TopicPartition(topic, p) for p in await producer.partitions_for(topic)]
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()
        await producer.stop()


def still_running(pids: list[int]) -> list[int]:
    """The pids among `pids` that still run (zombies count as gone)."""
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


@asynccontextmanager
async def migrated_pool(database_url: str, spec, schema: str | None = None) -> AsyncIterator[asyncpg.Pool]:
    """A pool on `spec`'s schema (or `schema`) with its migrations applied, as the service has it."""
    from services.common.storage.db import create_pool, migrate

    name = schema or spec.name
    pool = await create_pool(database_url, name)
    try:
        await migrate(pool, name, spec.package_dir)
        yield pool
    finally:
        await pool.close()


@asynccontextmanager
async def serving(spec, settings, timeout: float = 10) -> AsyncIterator[tuple[Any, Any]]:
    """A service with an HTTP API as `python -m services.<name>` serves it (uvicorn, lifespan), in
    this process on a free port, once /health answers 200: (httpx client, api)."""
    import httpx
    import uvicorn

    from deploy.local.ports import free_port
    from services.common.runtime.app import build_app

    assert spec.http_api is not None, f"{spec.name} serves no HTTP API"
    api = spec.http_api(build_app(spec, settings), settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())

    async def healthy() -> bool:
        try:
            return (await client.get("/health")).status_code == 200
        except httpx.TransportError:
            return False

    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=timeout) as client:
            await eventually(healthy, what=f"{spec.name} to answer /health")
            yield client, api
    finally:
        server.should_exit = True
        await task


async def kill_sender(producer: AIOKafkaProducer, topic: str) -> None:
    """Ends `producer`'s background sender as an unexpected error inside aiokafka would: its next
    produce request raises, the sender's catch-all ends its task ("Unexpected error during batch
    delivery"), and every later send raises that error. Fault injection through aiokafka's
    internals (`_sender._send_produce_req`), on a started producer."""

    async def broken(node_id: int, batches: object) -> None:
        raise RuntimeError("injected into aiokafka's sender")

    producer._sender._send_produce_req = broken  # type: ignore[attr-defined]
    sent = await producer.send(topic, b"the record the sender dies on")
    try:
        await sent
    except KafkaError:
        pass
    else:
        raise AssertionError("the sender survived the injected error")
    task = producer._sender.sender_task  # type: ignore[attr-defined]
    await eventually(lambda: asyncio.sleep(0, task.done()), what="the sender's task ended")


class SilentRelay:
    """A TCP relay to `host:port` whose connections can go silent: `silence()` makes those open
    then carry nothing further either way while staying open, as when the peer went away without
    closing them (a failover, a network cut); connections made after it are relayed as usual.
    `delay`: seconds each connection waits before it is relayed (a server slow to take it, or
    not answering), read as each one comes."""

    def __init__(self, host: str, port: int, delay: float = 0.0):
        self._upstream, self.delay = (host, port), delay
        self._server: asyncio.Server | None = None
        self._silenced: list[list[bool]] = []  # one flag per connection, shared by both directions
        self._writers: list[asyncio.StreamWriter] = []
        self._relays: set[asyncio.Task] = set()
        self.port = 0

    async def __aenter__(self) -> "SilentRelay":
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._relays, return_exceptions=True)  # their sockets closed: they end

    def silence(self) -> None:
        for flag in self._silenced:
            flag[0] = True

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._relays.add(asyncio.current_task())  # type: ignore[arg-type]
        self._writers.append(writer)
        await asyncio.sleep(self.delay)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.close()
            return
        silenced = [False]
        self._silenced.append(silenced)
        self._writers.append(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    if not silenced[0]:
                        dst.write(data)
                        await dst.drain()
            except OSError:
                pass
            if not silenced[0]:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def delete_before(
    bootstrap: str | dict[str, Any], topic: str, offset: int | dict[int, int], partition: int = 0
) -> None:
    """What a retention shorter than the topic's does, or kafka-delete-records: the partition's
    log starts at `offset` (a compacted topic's only once `also_deleted_by_age`); or each
    partition's at its own, `offset` a map. `bootstrap` may be a client's whole options."""
    from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

    starts = offset if isinstance(offset, dict) else {partition: offset}
    options = bootstrap if isinstance(bootstrap, dict) else kafka_options(bootstrap)
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        await admin.delete_records(
            {TopicPartition(topic, p): RecordsToDelete(start) for p, start in starts.items()}, timeout_ms=10_000
        )
    finally:
        await admin.close()


async def alter_topics(bootstrap: str, configs: dict[str, dict[str, str]], what: str) -> None:
    """Each topic's configuration set to `configs`' (AlterConfigs replaces the whole set: pass the
    declared ones to keep them, as `kafka-configs --add-config` does), then waited for: the broker
    acknowledges an alteration before it applies it (KRaft: when the metadata record reaches it)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from deploy.topic_admin import topic_configs

    admin = AIOKafkaAdminClient(**kafka_options(bootstrap))
    await admin.start()
    try:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t, wanted) for t, wanted in configs.items()]
        )

        async def applied() -> bool:
            now = await topic_configs(admin, list(configs))
            return all(now[t].get(key) == value for t, wanted in configs.items() for key, value in wanted.items())

        await eventually(applied, what=what)
    finally:
        await admin.close()


async def also_deleted_by_age(bootstrap: str, settings: Any, topic: str) -> None:
    """The compacted `topic`'s records also deleted by age (`compact,delete`), as set by hand with
    `kafka-configs --add-config`: its other settings kept. Kafka refuses to delete records of a
    topic only compacted."""
    from deploy.topology import platform_topics

    [declared] = [s.configs() for s in platform_topics(settings.topic("")) if s.name == topic]
    wanted = {**declared, "cleanup.policy": "compact,delete"}
    await alter_topics(bootstrap, {topic: wanted}, "the topic's records deleted by age too")
