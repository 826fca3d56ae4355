"""`./dev up` as a developer runs it (`python -m deploy.local up`, a real process): its data is
kept across restarts until --fresh, a second platform is refused rather than moved elsewhere,
and however it is ended (Ctrl-C with its output gone, a closed terminal, SIGTERM, even SIGKILL)
no process it started remains.

Every run is on free ports and in a temporary directory, never on a developer's defaults.
"""

import signal
import subprocess
import sys

import asyncpg
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

import contracts as c
from deploy.local.datadir import DataDir
from deploy.local.kafka import LocalKafka
from deploy.local.kafka.credentials import broker_access
from deploy.local.ports import port_free
from deploy.local.processes import SERVICES
from deploy.topic_admin import create_topics
from deploy.topology import TopicSpec
from helpers import eventually, still_running
from local_runtime import ROOT, Runtime, runtime_env, runtime_ports, scratch_dir
from services.common.messaging.connection import kafka_options

pytestmark = pytest.mark.e2e

KEPT = TopicSpec("runtime.kept")


def _port(options: list[str], name: str) -> int:
    return int(options[options.index(f"--{name}-port") + 1])


def _refusal(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "deploy.local", "up", "--no-services", *args],
        cwd=ROOT,
        env=runtime_env(env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    return result


def _as_admin_of(data: DataDir, port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """This test's clients (create_topics, kafka_options) as `admin` of the run's secured broker."""
    for variable, value in broker_access(data.kafka, port).environ().items():
        monkeypatch.setenv(variable, value)


async def _kept_records(bootstrap: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(KEPT.name, **kafka_options(bootstrap), auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=10_000)
    finally:
        await consumer.stop()
    return [r.value for records in batch.values() for r in records]


async def _topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(**kafka_options(bootstrap))
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def test_up_keeps_its_data_across_restarts_refuses_a_second_platform_and_starts_empty_when_fresh(monkeypatch):
    with scratch_dir() as tmp_path:
        env = {"FEO_DATA_DIR": str(tmp_path / "root")}  # the default data directory is then ROOT/platform
        data = DataDir(tmp_path / "root" / "platform")
        ports = runtime_ports()
        bootstrap = f"127.0.0.1:{_port(ports, 'kafka')}"
        url = f"postgresql://postgres@127.0.0.1:{_port(ports, 'postgres')}/former_equiper_outiller"

        first = Runtime("up", "--no-services", *ports, env=env)
        try:
            first.wait_for("running;")
            _as_admin_of(data, _port(ports, "kafka"), monkeypatch)
            await create_topics(bootstrap, [KEPT])
            producer = AIOKafkaProducer(**kafka_options(bootstrap), acks="all")
            await producer.start()
            try:
                await producer.send_and_wait(KEPT.name, b"kept")
            finally:
                await producer.stop()
            conn = await asyncpg.connect(url)
            try:
                await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('row')")
            finally:
                await conn.close()
            cluster_id = LocalKafka(data.kafka).cluster_id
            first.process.send_signal(signal.SIGINT)
            assert first.wait(90) == 0, first.output
        finally:
            first.stop()
        assert f"stopped; data kept in {data.path}" in first.output
        assert data.lock_file.read_text() == ""  # nobody runs there

        second = Runtime("up", "--no-services", *ports, env=env)
        try:
            second.wait_for("running;")
            _as_admin_of(data, _port(ports, "kafka"), monkeypatch)
            assert "created database" not in second.output and "empty storage" not in second.output
            assert LocalKafka(data.kafka).cluster_id == cluster_id
            assert await _kept_records(bootstrap) == [b"kept"]
            conn = await asyncpg.connect(url)
            try:
                assert await conn.fetchval("SELECT v FROM kept") == "row"
            finally:
                await conn.close()

            # A second platform, on the same data directory or on the same ports, is refused in one
            # line naming the running one; it starts nothing, and never moves to other ports.
            pid = second.process.pid
            same_dir = _refusal(*runtime_ports(), env=env)
            assert f"{data.path} is in use by the platform of PID {pid}" in same_dir.stderr
            same_ports = _refusal("--data-dir", str(tmp_path / "other"), *ports, env=env)
            assert (
                f"ports {_port(ports, 'kafka')} (Kafka), {_port(ports, 'postgres')} (PostgreSQL) are taken by "
                f"the platform of PID {pid} (data in {data.path})"
            ) in same_ports.stderr
            assert not (tmp_path / "other" / "kafka").exists()

            second.process.send_signal(signal.SIGTERM)
            assert second.wait(90) == 0, second.output
        finally:
            second.stop()

        fresh = Runtime("up", "--no-services", "--fresh", *ports, env=env)
        try:
            fresh.wait_for("running;")
            _as_admin_of(data, _port(ports, "kafka"), monkeypatch)
            assert f"starting from empty storage in {data.path}" in fresh.output
            assert "created database former_equiper_outiller" in fresh.output
            assert LocalKafka(data.kafka).cluster_id not in (None, cluster_id)
            assert KEPT.name not in await _topics(bootstrap)
            conn = await asyncpg.connect(url)
            try:
                assert await conn.fetchval("SELECT to_regclass('kept')") is None
            finally:
                await conn.close()
            fresh.process.send_signal(signal.SIGINT)
            assert fresh.wait(90) == 0, fresh.output
        finally:
            fresh.stop()


@pytest.mark.parametrize("ending", ["Ctrl-C, its output gone", "its terminal closed", "SIGKILL"])
async def test_however_up_is_ended_no_process_it_started_remains(ending, postgres, unique):
    with scratch_dir() as tmp_path:
        env = {"FEO_DATA_DIR": str(tmp_path / "root")}
        if ending == "Ctrl-C, its output gone":
            # Also: the database DATABASE_URL names is the one used, created since it is missing.
            database = f"up_{unique}"
            env["DATABASE_URL"] = postgres.url(database)
        data = DataDir(tmp_path / "data")
        run = Runtime(
            "up", "--data-dir", str(data.path), *runtime_ports(), env=env, terminal=ending == "its terminal closed"
        )
        try:
            run.wait_for("running;")
            started = run.descendants()
            commands = [" ".join(p.cmdline()) for p in started]
            assert any("kafka.Kafka" in c for c in commands), commands
            assert sum("-m services." in c for c in commands) == len(SERVICES), commands
            if "DATABASE_URL" in env:
                assert f"created database {database} named in DATABASE_URL" in run.output
                conn = await asyncpg.connect(env["DATABASE_URL"])
                try:
                    schemas = await conn.fetchval(
                        "SELECT array_agg(nspname::text ORDER BY nspname) FROM pg_namespace "
                        "WHERE nspname IN ('equipement', 'formation', 'passerelle', 'plateforme', 'ressources')"
                    )
                finally:
                    await conn.close()
                assert schemas == ["equipement", "formation", "passerelle", "plateforme", "ressources"]
            else:
                assert any(f"{data.postgres}/pgdata" in c for c in commands), commands

            if ending == "SIGKILL":
                run.process.kill()
                assert run.wait(10) == -signal.SIGKILL
            else:
                run.close_output()  # a pipe breaks; a terminal hangs up, which sends SIGHUP
                if ending == "Ctrl-C, its output gone":
                    run.process.send_signal(signal.SIGINT)
                assert run.wait(90) == 0
        finally:
            run.stop()

        pids = [p.pid for p in started]
        if ending == "SIGKILL":  # the kernel sent each child its stop signal: they stop by themselves

            async def all_gone() -> bool:
                return not still_running(pids)

            await eventually(all_gone, timeout=60, what="the children of the killed runtime to stop")
        left = still_running(pids)
        assert left == [], [psutil.Process(pid).cmdline() for pid in left]
        assert LocalKafka(data.kafka).cluster_id is not None  # the data stays
        data.lock({})  # and the directory is free for the next run
        data.unlock()


async def test_up_with_three_brokers_runs_a_cluster_every_topic_on_three_nodes(monkeypatch):
    """`./dev up --brokers 3`: three KRaft nodes on the Kafka port and the next two, every platform
    topic with three replicas, two in sync for a write; stopped like one (exit 0, no JVM left)."""
    with scratch_dir() as tmp_path:
        env = {"FEO_DATA_DIR": str(tmp_path / "root")}
        data = DataDir(tmp_path / "root" / "platform")
        while True:  # the Kafka port and the next two free
            ports = runtime_ports()
            first = _port(ports, "kafka")
            if (
                first < 65534
                and all(port_free(first + n) for n in (1, 2))
                and _port(ports, "postgres") - first not in (1, 2)
            ):
                break
        run = Runtime("up", "--no-services", "--brokers", "3", *ports, env=env)
        try:
            run.wait_for("running;")
            assert "KRaft, 3 nodes, each topic on three" in run.output, run.output
            bootstrap = ",".join(f"127.0.0.1:{first + n}" for n in range(3))
            assert f"KAFKA_BOOTSTRAP_SERVERS={bootstrap} " in run.output, run.output
            _as_admin_of(data, first, monkeypatch)
            admin = AIOKafkaAdminClient(**kafka_options(bootstrap))
            await admin.start()
            try:
                [topic] = await admin.describe_topics([c.EQUIPEMENT])
                assert {len(p["replicas"]) for p in topic["partitions"]} == {3}, topic
                [config] = await admin.describe_configs([ConfigResource(ConfigResourceType.BROKER, "1")])
                entries = config.to_object()["resources"][0]["config_entries"]
                settings = {e["config_names"]: e["config_value"] for e in entries}
                assert settings["min.insync.replicas"] == "2", entries[:3]
            finally:
                await admin.close()
            jvms = [p for p in psutil.Process(run.process.pid).children(recursive=True) if "kafka.Kafka" in p.cmdline()]
            assert len(jvms) == 3, jvms
            run.process.send_signal(signal.SIGINT)
            assert run.wait(120) == 0, run.output
        finally:
            run.stop()
        assert still_running([p.pid for p in jvms]) == []
