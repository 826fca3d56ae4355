"""The local runtime starts real Kafka and PostgreSQL processes, serves clients,
and leaves no process behind once stopped.

Each test starts its own servers in a temporary directory: these tests are
about the start/stop lifecycle itself, so they cannot share session servers.
"""

from __future__ import annotations

import asyncio
import socket
import stat
from pathlib import Path

import asyncpg
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from deploy.local.kafka import KafkaRuntimeError, LocalKafka
from deploy.local.kafka import jars as kafka_module
from deploy.local.postgres import LocalPostgres
from deploy.topic_admin import create_topics
from deploy.topology import TopicSpec

CLIENT_DEADLINE_SECONDS = 30


def _still_running(pids: list[int]) -> list[int]:
    """The pids among `pids` that still run (zombies count as gone)."""
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


async def _topic_state(bootstrap: str, names: list[str]) -> dict[str, tuple[int, str]]:
    """(partition count, cleanup.policy) of each topic, as the broker reports them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        partitions = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)}
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, {"cleanup.policy": None}) for name in names]
        )
    finally:
        await admin.close()
    policies = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            entries = {e["config_names"]: e["config_value"] for e in resource["config_entries"]}
            policies[resource["resource_name"]] = entries["cleanup.policy"]
    return {name: (partitions[name], policies[name]) for name in names}


@pytest.mark.kafka
async def test_kafka_serves_topics_and_records_then_stops(tmp_path: Path) -> None:
    snapshots = TopicSpec("runtime.snapshots", compacted=True)
    events = TopicSpec("runtime.events")
    with LocalKafka(tmp_path / "kafka") as kafka:
        pid = kafka.pid
        assert pid is not None
        bootstrap = kafka.bootstrap_servers

        await create_topics(bootstrap, [snapshots, events])
        await create_topics(bootstrap, [snapshots, events])  # existing topics are fine

        assert await _topic_state(bootstrap, [snapshots.name, events.name]) == {
            snapshots.name: (3, "compact"),
            events.name: (3, "delete"),
        }

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(events.name, b"hello", key=b"k1")
        finally:
            await producer.stop()

        # A consumer group exercises the single-replica __consumer_offsets topic.
        consumer = AIOKafkaConsumer(
            events.name, bootstrap_servers=bootstrap, group_id="runtime-test", auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            record = await asyncio.wait_for(consumer.getone(), CLIENT_DEADLINE_SECONDS)
            await consumer.commit()
        finally:
            await consumer.stop()
        assert (record.key, record.value) == (b"k1", b"hello")

    assert kafka.pid is None
    assert _still_running([pid]) == []


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
    with LocalPostgres(tmp_path / "pg") as postgres:
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
    assert _still_running(server_processes) == []
