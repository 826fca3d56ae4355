"""The platform as real processes, each service as its own Kafka principal, and a partner's and
a dashboard's plain Kafka clients (kafka-python: not the project's code); the partner writes as
`admin` (it writes the declaration topics, which only the ingestion service may), the dashboard
reads as `tableau-de-bord`."""

import json
import time

import asyncpg
import pytest
from kafka import KafkaConsumer, KafkaProducer

from deploy.local.processes import ServiceProcesses
from partner import HEADERS


@pytest.fixture
def replicas() -> int:
    """Processes per service, in one consumer group (a test parametrizes it to scale out)."""
    return 1


@pytest.fixture
def platform(kafka, database_url, topic_prefix, tmp_path, replicas):
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "DATABASE_URL": database_url,
        "TOPIC_PREFIX": topic_prefix,
        "OUTBOX_POLL_MS": "200",
        "LOG_FORMAT": "json",
    }
    sets = []
    for n in range(replicas):
        (log_dir := tmp_path / f"replica-{n}").mkdir()
        sets.append(ServiceProcesses(env, log_dir=log_dir, credentials=kafka.credentials))
    try:
        for procs in sets:
            procs.start()
        for procs in sets:
            procs.wait_healthy()
        yield sets[0]
    finally:
        for procs in sets:
            procs.stop()


@pytest.fixture
def publish(kafka, topic_prefix):
    producer = KafkaProducer(**kafka.access.kafka_python(), acks="all")

    def publish(topic: str, key: str, value: bytes, headers: list[tuple[str, bytes]] = ()) -> None:
        producer.send(topic_prefix + topic, value, key=key.encode(), headers=[*HEADERS, *headers]).get(timeout=10)

    yield publish
    producer.close()


class Alerts:
    """A dashboard reading alertes.compatibilite.v1 from the beginning."""

    def __init__(self, consumer: KafkaConsumer):
        self.consumer = consumer
        self.seen: list[dict] = []
        self.headers: dict[str, dict[str, bytes]] = {}  # CloudEvents id -> record headers

    def wait(self, want, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for records in self.consumer.poll(timeout_ms=500).values():
                for r in records:
                    self.seen.append(json.loads(r.value))
                    self.headers[self.seen[-1]["id"]] = dict(r.headers)
            if want(self.seen):
                return self.seen
        raise AssertionError(f"alerts never matched; seen: {json.dumps(self.seen, indent=1)[:3000]}")

    def of(self, kind_type: str) -> list[dict]:
        return [a for a in self.seen if a["type"] == f"fr.education.alertes.{kind_type}.v1"]


@pytest.fixture
def alerts(kafka, topic_prefix):
    consumer = KafkaConsumer(
        topic_prefix + "alertes.compatibilite.v1",
        **kafka.access_as("tableau-de-bord").kafka_python(),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    yield Alerts(consumer)
    consumer.close()


@pytest.fixture
def wait_stored(database_url):
    """Until each `schema.table` holds a row for every UAI given: services consume different
    topics, so a test that wants a given order across them waits for it."""

    async def wait(tables: tuple[str, ...], uais: list[str], timeout: float = 60) -> None:
        conn = await asyncpg.connect(database_url)
        try:
            deadline = time.monotonic() + timeout
            for table in tables:
                while await conn.fetchval(
                    f"SELECT count(DISTINCT uai) FROM {table} WHERE uai = ANY($1::text[])", uais
                ) < len(set(uais)):
                    assert time.monotonic() < deadline, f"{table} never stored all of {uais}"
                    time.sleep(0.1)
        finally:
            await conn.close()

    return wait


@pytest.fixture
def wait_true(database_url):
    """Until `sql` (a boolean query over the services' schemas) is true."""

    async def wait(sql: str, *args, timeout: float = 60) -> None:
        conn = await asyncpg.connect(database_url)
        try:
            deadline = time.monotonic() + timeout
            while not await conn.fetchval(sql, *args):
                assert time.monotonic() < deadline, f"never true: {sql} {args}"
                time.sleep(0.1)
        finally:
            await conn.close()

    return wait
