"""The platform as real processes (the passerelle included), each service as its own Kafka
principal; partners and a dashboard as plain clients (httpx, kafka-python: not the project's
code). A partner writes as it really would: declarations posted to the passerelle with a token
of the session's identity provider, the référentiel and the catalogue produced to Kafka as
`ministere` or `gar`; the dashboard reads as `tableau-de-bord`."""

import asyncio
import json
import time

import asyncpg
import httpx
import pytest
from kafka import KafkaConsumer, KafkaProducer

from deploy.local.partenaires import KAFKA_PRINCIPALS, NOT_YET_KNOWN, OVER_HTTP
from deploy.local.processes import ServiceProcesses
from partner import HEADERS, partenaires

SETTLE_SECONDS = 30
"""How long a declaration refused `uai-inconnu` is posted again: the passerelle learns the
référentiel from Kafka, a moment after it is published."""


@pytest.fixture
def replicas() -> int:
    """Processes per service, in one consumer group (a test parametrizes it to scale out)."""
    return 1


@pytest.fixture
def platform(kafka, database_url, topic_prefix, tmp_path, replicas, identite):
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "DATABASE_URL": database_url,
        "TOPIC_PREFIX": topic_prefix,
        "OUTBOX_POLL_MS": "200",
        "LOG_FORMAT": "json",
        "JWKS_FILE": str(identite.jwks_path),
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
def publish(kafka, topic_prefix, platform, identite):
    """Writes a record as the partner owning its `source` would (see `deploy.local.partenaires`):
    a declaration posted to the passerelle (202 expected) with the `headers` given as HTTP
    headers, a record of the référentiel or the catalogue produced with them as its principal."""
    url = f"http://127.0.0.1:{platform.ports['passerelle']}/v1/evenements"
    http = httpx.Client(timeout=30)
    producers: dict[str, KafkaProducer] = {}

    def post(source: str, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        sent = {
            "authorization": f"Bearer {identite.jeton(source)}",
            "content-type": dict(HEADERS)["content-type"].decode(),
            **{name: raw.decode() for name, raw in headers},
        }
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            answer = http.post(url, content=value, headers=sent)
            if answer.status_code == 202:
                return
            not_yet_known = answer.status_code == 207 and answer.json()["resultats"][0]["code"] == NOT_YET_KNOWN
            if not (not_yet_known and time.monotonic() < deadline):
                pytest.fail(f"the passerelle answered {answer.status_code} to {source}: {answer.text}")
            time.sleep(0.2)

    def publish(topic: str, key: str, value: bytes, headers: list[tuple[str, bytes]] = ()) -> None:
        source = json.loads(value)["source"]
        if topic in OVER_HTTP:
            post(source, value, list(headers))
            return
        principal = KAFKA_PRINCIPALS[source]
        if principal not in producers:
            producers[principal] = KafkaProducer(**kafka.access_as(principal).kafka_python(), acks="all")
        record = producers[principal].send(topic_prefix + topic, value, key=key.encode(), headers=[*HEADERS, *headers])
        record.get(timeout=10)

    yield publish
    http.close()
    for producer in producers.values():
        producer.close()


@pytest.fixture
def partners(platform, kafka, identite, topic_prefix):
    """The demo's partners (`deploy.local.partenaires`) on this test's platform, for scenarios."""
    return partenaires(platform, kafka, identite, topic_prefix)


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
                    await asyncio.sleep(0.1)
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
                await asyncio.sleep(0.1)
        finally:
            await conn.close()

    return wait
