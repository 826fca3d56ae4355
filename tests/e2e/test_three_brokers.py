"""Three brokers (issue 10, part 1): every topic replicated three times, two in sync for a write,
producers with acks=all. One broker SIGKILLed in the middle of a stream: what partners sent and
the platform published is neither lost nor doubled, profiles keep coming while it is down, and
it rejoins once restarted. Real brokers (a KRaft cluster of three nodes), real PostgreSQL,
equipement as a process."""

import asyncio
import json
import time

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

import contracts as c
from contracts.internal import PROFILS
from deploy import acl
from deploy.local.kafka.cluster import LocalKafkaCluster
from deploy.local.processes import ServiceProcesses
from deploy.topic_admin import create_topics
from deploy.topology import platform_topics
from helpers import at, college, event, eventually, send, uai
from services.common.messaging.connection import kafka_options

COLLEGES, LOTS, RATE = 100, 1200, 150  # lots per second: the stream lasts 8 s
KILL_AT, DOWN_FOR = 2.5, 4.0
DEPARTEMENT = "/collectivites/departements/035"


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    brokers = LocalKafkaCluster(tmp_path / "kafka", size=3)
    brokers.start()
    try:
        for variable, value in brokers.access.environ().items():  # the test's clients: its admin
            monkeypatch.setenv(variable, value)
        yield brokers
    finally:
        brokers.stop()


def lot(i: int) -> tuple[str, bytes]:
    where = uai(f"035{i % COLLEGES:04d}")
    data = {"uai": where, "lot_id": f"L{i}", "kind": "tablette", "quantity": 1 + i % 5, "os": None, "browsers": []}
    return where, json.dumps(event(c.LOT, DEPARTEMENT, data, subject=where, time_=at(1))).encode()


async def profiles(bootstrap: str, topic: str, records: list) -> None:
    """Reads `topic` from the beginning into `records` until cancelled."""
    consumer = AIOKafkaConsumer(topic, **kafka_options(bootstrap), group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        async for record in consumer:
            records.append(record)
    finally:
        await consumer.stop()


async def test_a_broker_killed_mid_stream_loses_and_doubles_nothing(cluster, database_url, tmp_path):
    bootstrap, prefix = cluster.bootstrap_servers, "three."
    await create_topics(bootstrap, platform_topics(prefix, partitions=6), replicas=3)
    acl.apply(cluster.access, prefix)
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DATABASE_URL": database_url, "TOPIC_PREFIX": prefix}
    procs = ServiceProcesses(env, log_dir=tmp_path, names=("equipement",), credentials=cluster.credentials)
    db = await asyncpg.connect(database_url)
    seen: list = []
    reader = asyncio.create_task(profiles(bootstrap, prefix + PROFILS, seen))
    procs.start()
    try:
        await asyncio.to_thread(procs.wait_healthy)
        colleges = [uai(f"035{i:04d}") for i in range(COLLEGES)]
        await send(bootstrap, prefix + c.REFERENTIEL, [(u, college(u)) for u in colleges])
        await eventually(
            lambda: db.fetchval(f"SELECT count(*) = {COLLEGES} FROM equipement.etablissements"), what="référentiel"
        )

        producer = AIOKafkaProducer(**kafka_options(bootstrap), acks="all", enable_idempotence=True)
        await producer.start()
        victim = cluster.nodes[1]
        down: dict[str, int] = {}
        try:
            acks, started = [], time.monotonic()
            for i in range(LOTS):
                if (delay := started + i / RATE - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                elapsed = time.monotonic() - started
                if "at" not in down and elapsed >= KILL_AT:
                    await asyncio.to_thread(victim.kill)
                    down["at"] = len(seen)
                if "until" not in down and elapsed >= KILL_AT + DOWN_FOR:
                    down["until"] = len(seen)
                    await asyncio.to_thread(victim.start)  # back in the cluster, catching up
                key, value = lot(i)
                acks.append(await producer.send(prefix + c.EQUIPEMENT, value, key=key.encode()))
            await asyncio.gather(*acks)  # every lot acknowledged: on two brokers at least
        finally:
            await producer.stop()

        assert down["until"] > down["at"], f"profiles kept coming while a broker was down: {down}"
        await eventually(
            lambda: db.fetchval(f"SELECT count(*) = {LOTS} FROM equipement.lots"), what="every lot stored", timeout=120
        )
        await eventually(lambda: db.fetchval("SELECT count(*) = 0 FROM equipement.outbox"), what="outbox drained")
        await eventually(lambda: asyncio.sleep(0, len({r.key for r in seen}) == LOTS), what="every profile read")
        assert len(seen) == LOTS, f"{len(seen) - LOTS} profile records published twice"
        # The restarted broker is back: in sync again for every partition of the stream.
        admin = AIOKafkaAdminClient(**kafka_options(bootstrap))
        await admin.start()
        try:

            async def in_sync() -> bool:
                [topic] = await admin.describe_topics([prefix + PROFILS])
                return all(victim.node_id in p["isr"] for p in topic["partitions"])

            await eventually(in_sync, what=f"broker {victim.node_id} in sync again", timeout=60)
        finally:
            await admin.close()
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await db.close()
        await asyncio.to_thread(procs.stop)
