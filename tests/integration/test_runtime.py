"""The local runtime starts real Kafka and PostgreSQL processes, serves clients,
and leaves no process behind once stopped; what it refuses before starting anything.

Each test starts its own servers in a temporary directory: these tests are
about the start/stop lifecycle itself, so they cannot share session servers.
The refusals of `python -m deploy.local up` come before any server starts, so
they run in a second each (the full runs are in tests/e2e/test_up_command.py).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from deploy.local import console, pairing
from deploy.local.datadir import DataDir, Refused
from deploy.local.kafka import KAFKA_VERSION, KafkaRuntimeError, LocalKafka
from deploy.local.kafka import jars as kafka_module
from deploy.local.ports import free_ports
from deploy.local.postgres import LocalPostgres, ensure_database
from deploy.topic_admin import create_topics
from deploy.topology import TopicSpec
from helpers import still_running
from services.common.messaging.connection import kafka_options

CLIENT_DEADLINE_SECONDS = 30


async def _topic_state(bootstrap: str, names: list[str]) -> dict[str, tuple[int, str, str]]:
    """(partition count, cleanup.policy, segment.index.bytes) of each topic, as the broker reports them."""
    admin = AIOKafkaAdminClient(**kafka_options(bootstrap))
    await admin.start()
    try:
        partitions = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)}
        responses = await admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, name, {"cleanup.policy": None, "segment.index.bytes": None})
                for name in names
            ]
        )
    finally:
        await admin.close()
    configs = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            entries = {e["config_names"]: e["config_value"] for e in resource["config_entries"]}
            configs[resource["resource_name"]] = (entries["cleanup.policy"], entries["segment.index.bytes"])
    return {name: (partitions[name], *configs[name]) for name in names}


@pytest.mark.kafka
async def test_kafka_serves_topics_and_records_then_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshots = TopicSpec("runtime.snapshots", compacted=True)
    events = TopicSpec("runtime.events")
    with LocalKafka(tmp_path / "kafka") as kafka:
        for variable, value in kafka.access.environ().items():  # its own admin, as the tools get it
            monkeypatch.setenv(variable, value)
        pid = kafka.pid
        assert pid is not None
        bootstrap = kafka.bootstrap_servers

        await create_topics(bootstrap, [snapshots, events])
        await create_topics(bootstrap, [snapshots, events])  # existing topics are fine

        # Their indexes at the broker's size, not Kafka's default 10 MiB (deploy/local/kafka/broker.py).
        index = str(1024 * 1024)
        assert await _topic_state(bootstrap, [snapshots.name, events.name]) == {
            snapshots.name: (3, "compact", index),
            events.name: (3, "delete", index),
        }

        producer = AIOKafkaProducer(**kafka_options(bootstrap))
        await producer.start()
        try:
            await producer.send_and_wait(events.name, b"hello", key=b"k1")
        finally:
            await producer.stop()

        # A consumer group exercises the single-replica __consumer_offsets topic.
        consumer = AIOKafkaConsumer(
            events.name, **kafka_options(bootstrap), group_id="runtime-test", auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            record = await asyncio.wait_for(consumer.getone(), CLIENT_DEADLINE_SECONDS)
            await consumer.commit()
        finally:
            await consumer.stop()
        assert (record.key, record.value) == (b"k1", b"hello")

    assert kafka.pid is None
    assert still_running([pid]) == []


@pytest.mark.kafka
def test_kafka_start_failure_reports_the_broker_log(tmp_path: Path) -> None:
    # Bound but not listening: the broker cannot bind the port, yet the
    # readiness probe gets a quick refusal instead of a silent peer.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        kafka = LocalKafka(tmp_path / "kafka", port=taken.getsockname()[1])
        with pytest.raises(KafkaRuntimeError, match="Address already in use"):
            kafka.start()
    assert kafka.pid is None


def test_cached_jars_are_used_without_maven(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = kafka_module.ensure_kafka_jars()
    assert list(lib.glob(f"kafka_2.13-{kafka_module.KAFKA_VERSION}.jar"))

    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError("mvn must not run once the jars are cached")

    monkeypatch.setattr(kafka_module.subprocess, "run", no_subprocess)
    assert kafka_module.ensure_kafka_jars() == lib


def test_failed_fetch_leaves_no_partial_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    mvn = fake_bin / "mvn"
    mvn.write_text("#!/bin/sh\necho '[ERROR] Could not resolve dependencies (fake mvn)'\nexit 1\n")
    mvn.chmod(mvn.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(fake_bin), prepend=":")
    monkeypatch.setenv("FEO_CACHE_DIR", str(tmp_path / "cache"))

    with pytest.raises(KafkaRuntimeError, match=r"fake mvn"):
        kafka_module.ensure_kafka_jars()
    assert "from Maven Central (first run only)" in capsys.readouterr().err
    assert list((tmp_path / "cache" / f"kafka-{kafka_module.KAFKA_VERSION}").iterdir()) == []


@pytest.mark.postgres
async def test_postgres_creates_databases_then_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with LocalPostgres(tmp_path / "pg", settings={"work_mem": "7MB"}) as postgres:
        pid = postgres.pid
        assert pid is not None
        server_processes = [pid, *(child.pid for child in psutil.Process(pid).children())]
        assert len(server_processes) > 1  # checkpointer, walwriter, ...

        url = await postgres.create_database("runtime_check")
        assert await postgres.create_database("runtime_check") == url
        assert url == f"postgresql://postgres@127.0.0.1:{postgres.port}/runtime_check"

        conn = await asyncpg.connect(url, timeout=CLIENT_DEADLINE_SECONDS)
        try:
            assert await conn.fetchval("SELECT current_database()") == "runtime_check"
            assert await conn.fetchval("SHOW work_mem") == "7MB"  # a setting given beside ours
            assert (await conn.fetchval("SHOW server_version")).startswith("18.")
        finally:
            await conn.close()

        # With DATABASE_URL set, a LocalPostgres only hands out URLs on that server.
        monkeypatch.setenv("DATABASE_URL", postgres.url())
        external = LocalPostgres(tmp_path / "unused")
        with external:
            assert external.pid is None
            assert await external.create_database("via_url") == postgres.url("via_url")
        assert not (tmp_path / "unused").exists()

    assert postgres.pid is None
    assert still_running(server_processes) == []


async def test_a_database_is_created_only_when_missing(postgres, unique):
    url = postgres.url(f"ensure_{unique}")
    assert await ensure_database(url) is True
    assert await ensure_database(url) is False
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT current_database()") == f"ensure_{unique}"
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("recorded", "schemas", "kafka_cluster", "refusal"),
    [
        (None, False, None, None),  # both start empty
        ("c1", False, "c1", None),  # the pair recorded at the first start
        ("c1", False, None, "holds the state of Kafka cluster c1, not of the Kafka in K, which starts empty"),
        ("c1", False, "c2", "holds the state of Kafka cluster c1, not of the Kafka in K (cluster c2)"),
        (None, True, None, "holds the services' state (schemas formation) but no record of its Kafka"),
        (None, False, "c2", "the Kafka in K (cluster c2) holds the records of an earlier run, but the database"),
    ],
    ids=["both-new", "paired", "kafka-emptied", "other-kafka", "unpaired-state", "database-emptied"],
)
async def test_a_database_goes_with_the_kafka_it_was_paired_with(
    database_url, recorded, schemas, kafka_cluster, refusal
):
    if recorded:
        await pairing.record(database_url, recorded)
        await pairing.record(database_url, "recorded once, never replaced")
    if schemas:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("CREATE SCHEMA formation")
        finally:
            await conn.close()
    check = pairing.check(database_url, "the database", kafka_cluster, "the Kafka in K", "do this")
    if refusal is None:
        await check
    else:
        with pytest.raises(Refused) as refused:
            await check
        assert refusal in str(refused.value) and str(refused.value).endswith("; do this")


def test_a_data_directory_is_held_by_one_platform_at_a_time(tmp_path: Path) -> None:
    first, second = DataDir(tmp_path), DataDir(tmp_path)
    first.lock({"Kafka": 9092})
    with pytest.raises(Refused, match=f"{tmp_path} is in use by the platform of PID {os.getpid()}"):
        second.lock({})
    (tmp_path / "kafka").mkdir()
    (tmp_path / "postgres").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    first.wipe()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "platform.lock"]
    first.unlock()
    second.lock({})
    second.unlock()


def test_a_write_to_a_closed_pipe_is_dropped_and_so_are_the_next_ones() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "w") as stream:
        console.write(stream, "lost\n")  # EPIPE: Python ignores SIGPIPE
        assert os.readlink(f"/proc/self/fd/{write_end}") == os.devnull
        console.write(stream, "lost as well\n")


def _up(data: Path, *args: str, env: dict[str, str], ports: tuple[int, int] | None = None) -> tuple[int, str]:
    """`up --no-services` on `data`, on free ports unless given; its exit code and stderr."""
    kafka_port, postgres_port = ports or free_ports(2)
    result = subprocess.run(
        [
            *(sys.executable, "-m", "deploy.local", "up", "--no-services", "--data-dir", str(data), *args),
            *("--kafka-port", str(kafka_port), "--postgres-port", str(postgres_port)),
        ],
        env={**{k: v for k, v in os.environ.items() if k != "DATABASE_URL"}, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, result.stderr


def _files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")} if directory.exists() else set()


def _up_refused(data: Path, *args: str, env: dict[str, str], ports: tuple[int, int] | None = None) -> str:
    """`up` that must be refused: exit 2, one line on stderr (returned), nothing started, emptied
    or stored (but its lock file)."""
    before = _files(data)
    code, said = _up(data, *args, env=env, ports=ports)
    assert code == 2, said
    assert len(said.splitlines()) == 1, said
    assert _files(data) == before | {"platform.lock"}
    return said


def test_an_unreachable_database_url_is_named_in_one_line_without_its_password(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    url = f"postgresql://feo:s3cr%40t-word@127.0.0.1:{port}/feo"
    said = _up_refused(tmp_path, env={"DATABASE_URL": url})
    assert said == f"==> error: DATABASE_URL (127.0.0.1:{port}) cannot be used: ConnectionRefusedError\n"


@pytest.mark.parametrize("fresh", [False, True], ids=["kept", "fresh"])
async def test_a_database_paired_with_another_kafka_is_refused_before_anything_is_emptied(
    tmp_path: Path, database_url: str, fresh: bool
) -> None:
    meta = tmp_path / "kafka" / "kafka-logs" / "meta.properties"
    meta.parent.mkdir(parents=True)
    meta.write_text("cluster.id=kept-cluster\nnode.id=1\n")
    await pairing.record(database_url, "another-cluster")
    said = _up_refused(tmp_path, *(["--fresh"] if fresh else []), env={"DATABASE_URL": database_url})
    kafka = f"the Kafka in {tmp_path / 'kafka'}" + (", which starts empty" if fresh else " (cluster kept-cluster)")
    remedy = (
        "name an empty database in DATABASE_URL"
        if fresh
        else "name in DATABASE_URL this Kafka's database, or an empty one and start with --fresh"
    )
    host_port, name = database_url.rsplit("@", 1)[1].split("/")
    assert said == (
        f"==> error: DATABASE_URL's database {name} ({host_port}) "
        f"holds the state of Kafka cluster another-cluster, not of {kafka}; {remedy}\n"
    )


async def test_an_embedded_postgresql_kept_without_its_kafka_is_refused_then_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    # Not under pytest's basetemp, which another session may lock to its owner (tests/conftest.py).
    data = Path(tempfile.mkdtemp(prefix="feo-test-runtime-"))
    try:
        with LocalPostgres(data / "postgres") as postgres:
            await pairing.record(await postgres.create_database("former_equiper_outiller"), "lost-cluster")
        code, said = _up(data, env={})
        assert code == 2, said
        assert said.splitlines()[0] == (
            f"==> error: the PostgreSQL in {data / 'postgres'} holds the state of Kafka cluster lost-cluster, "
            f"not of the Kafka in {data / 'kafka'}, which starts empty; start both empty with --fresh"
        )
        assert not (data / "kafka").exists()
        assert not [p for p in psutil.process_iter(["cmdline"]) if str(data) in " ".join(p.info["cmdline"] or [])]
    finally:
        shutil.rmtree(data, ignore_errors=True)


def test_a_busy_port_is_refused_never_replaced(tmp_path: Path, kafka: LocalKafka) -> None:
    (free,) = free_ports(1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        said = _up_refused(tmp_path, env={}, ports=(free, busy))
    assert f"port {busy} (PostgreSQL) is in use by another program; stop it" in said

    said = _up_refused(tmp_path, env={}, ports=(kafka.port, free))
    assert f"port {kafka.port} (Kafka) is in use: a Kafka broker answers on 127.0.0.1:{kafka.port}" in said


@pytest.mark.kafka
def test_a_first_start_stopped_once_kafka_is_formatted_leaves_a_pair_the_next_start_takes(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first start's broker never ready (here its port taken; Ctrl-C during the JVM's first
    start does the same): its storage was formatted, the database not yet paired with it, and
    every later start was refused ('holds the records of an earlier run, but the database is
    empty'). Paired once formatted, the next start goes on."""
    environ = dict(os.environ)  # start() puts its Kafka's access there, for the services it starts
    try:
        _first_start_stopped_then_the_next(tmp_path, database_url, monkeypatch)
    finally:  # whichever start got that far: the later tests' environment as it was
        os.environ.clear()
        os.environ.update(environ)


def _first_start_stopped_then_the_next(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from deploy.local.platform import Platform, Ports

    monkeypatch.setenv("DATABASE_URL", database_url)
    kafka_port, http = free_ports(2)
    ports = Ports(kafka=kafka_port, http=http)
    first = Platform(DataDir(tmp_path), ports, services=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", kafka_port))
        monkeypatch.setattr("deploy.local.platform._refuse_busy", lambda claimed: None)  # found at the JVM's bind
        try:
            with pytest.raises(KafkaRuntimeError, match="Address already in use"):
                first.start()
        finally:
            first.stop()
    monkeypatch.undo()
    monkeypatch.setenv("DATABASE_URL", database_url)
    assert first.kafka.cluster_id is not None, "formatted"
    second = Platform(DataDir(tmp_path), ports, services=False)
    try:
        second.start()
        assert second.kafka.cluster_id == first.kafka.cluster_id
    finally:
        second.stop()


def test_a_cache_directory_that_cannot_be_made_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """An unwritable FEO_CACHE_DIR (or the disk full) raised an OSError that `up` printed as a
    traceback; it is one error line, and what was started is stopped."""
    (tmp_path / "a-file").write_text("")
    cache = tmp_path / "a-file" / "cache"
    code, said = _up(tmp_path / "data", env={"FEO_CACHE_DIR": str(cache)})
    assert code == 1, said
    assert "Traceback" not in said
    assert f"==> error: [Errno 20] Not a directory: '{cache / f'kafka-{KAFKA_VERSION}'}'" in said.splitlines(), said
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]


@pytest.mark.parametrize(
    ("said", "refused"),
    [
        ('openjdk version "11.0.22" 2024-01-16', True),
        ('java version "1.8.0_401"', True),
        ('openjdk version "17.0.15" 2025-04-15', False),
        ('openjdk version "21" 2023-09-19', False),
    ],
)
def test_an_older_java_is_named_before_kafka_s_storage_is_touched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, said: str, refused: bool
) -> None:
    """Java 11 failed the storage's formatting with a raw UnsupportedClassVersionError under
    'formatting the Kafka storage failed', which invited --fresh."""
    from deploy.local.kafka.broker import require_java

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").write_text(f"#!/bin/sh\necho '{said}' >&2\n")
    (bin_dir / "java").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    if not refused:
        assert require_java() == str(bin_dir / "java")
        return
    with pytest.raises(KafkaRuntimeError) as error:
        LocalKafka(tmp_path / "kafka").start()
    assert str(error.value).startswith(f"{bin_dir / 'java'} is not Java 17 or later ({said}); Kafka ")
    assert not (tmp_path / "kafka").exists()


async def test_an_interrupted_initdb_leaves_no_half_cluster_for_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """initdb writes PG_VERSION early: interrupted (Ctrl-C reaches it), it left a cluster half
    made that every later start took for whole (it skips initdb when PG_VERSION is there) and
    failed to start. The next start makes the cluster again."""
    from deploy.local import postgres as module
    from deploy.local.postgres import PostgresRuntimeError

    def interrupted(argv: list[str], failure: str, error: type[Exception], **popen: object) -> None:
        (Path(argv[argv.index("-D") + 1]) / "PG_VERSION").write_text("18\n")
        raise error(f"{failure} (exit 130): interrupted")

    monkeypatch.delenv("DATABASE_URL", raising=False)
    postgres = LocalPostgres(tmp_path / "pg")
    with monkeypatch.context() as m:
        m.setattr(module, "run_tool", interrupted)
        with pytest.raises(PostgresRuntimeError, match="interrupted"):
            postgres.start()
    with postgres:
        conn = await asyncpg.connect(postgres.url(), timeout=CLIENT_DEADLINE_SECONDS)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
    assert not (tmp_path / "pg" / "pgdata.initdb").exists()


def test_a_stop_interrupted_while_it_waits_leaves_no_server_behind(tmp_path: Path) -> None:
    """Ctrl-C while a stop waited for the server to end (a start that failed on its own, then
    stopped): the SIGKILL after the grace was skipped, and a server deaf to its stop signal was
    left running, its runtime gone."""
    from deploy.local.server_process import ServerProcess

    server = ServerProcess("deaf", tmp_path / "deaf.log", RuntimeError)
    server.start(
        ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"],
        ready=lambda: True,
        not_ready="",
        timeout=5,
        poll_seconds=0.05,
    )
    process = server._process
    assert process is not None
    waited = process.wait

    def interrupted(timeout: float | None = None) -> int:
        if timeout is not None:
            raise KeyboardInterrupt
        return waited()

    process.wait = interrupted  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            server.stop()
        assert process.poll() is not None, "killed"
        assert still_running([process.pid]) == []
    finally:  # not left running by a failure here either
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            waited()
