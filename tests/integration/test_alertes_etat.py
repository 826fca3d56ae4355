"""alertes.etat.v1, the table of the alerts stream, read as a dashboard would with a plain Kafka
client (kafka-python) from the beginning: exactly the open alerts, before and after the broker
compacted it (a test topic with small segments, compacted within seconds)."""

import asyncio
import json
import time

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from kafka import KafkaConsumer, TopicPartition

import contracts as c
from contracts.internal import PROFILS
from deploy.topic_admin import create_topics
from deploy.topology import platform_topics
from helpers import eventually, running, send, uai
from services.common.messaging.connection import KafkaAccess, kafka_options
from services.common.runtime.settings import ServiceSettings
from services.ressources.app import SPEC
from services.ressources.lifecycle import alert_id
from test_ressources import RID, abonnement, old_tablets_at, profil, publiee

pytestmark = pytest.mark.kafka
QUICKLY_COMPACTED = {
    "cleanup.policy": "compact",
    "segment.ms": "500",  # a new segment every half second: only the last one is never compacted
    "max.compaction.lag.ms": "1000",  # compacted within a second, whatever the dirty ratio
    "min.cleanable.dirty.ratio": "0.01",
    "delete.retention.ms": "0",
}


@pytest.fixture
async def settings(kafka, database_url, own_prefix) -> ServiceSettings:
    """The platform's topics, the table on one partition compacted within seconds."""
    prefix = own_prefix
    table = prefix + c.ALERTES_ETAT
    await create_topics(kafka.bootstrap_servers, [t for t in platform_topics(prefix) if t.name != table])
    admin = AIOKafkaAdminClient(**kafka_options(kafka.bootstrap_servers))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(table, 1, 1, topic_configs=QUICKLY_COMPACTED)])
    finally:
        await admin.close()
    return ServiceSettings(
        kafka_bootstrap_servers=kafka.bootstrap_servers,
        database_url=database_url,
        topic_prefix=prefix,
        outbox_poll_ms=200,
        log_format="console",
    )


def read_table(bootstrap: str, topic: str) -> list[tuple[str, dict | None]]:
    """Every record of the table from the beginning, as (key, event or None), with kafka-python."""
    consumer = KafkaConsumer(
        **KafkaAccess.from_environ(bootstrap_servers=bootstrap).kafka_python(), group_id=None, enable_auto_commit=False
    )
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end, records, deadline = consumer.end_offsets([tp])[tp], [], time.monotonic() + 30
        while consumer.position(tp) < end and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records += [(r.key.decode(), None if r.value is None else json.loads(r.value)) for r in batch]
        return records
    finally:
        consumer.close()


def current(records: list[tuple[str, dict | None]]) -> dict[str, dict]:
    """A dashboard's bootstrap: the last record of each key wins, a tombstone removes it."""
    table: dict[str, dict] = {}
    for key, value in records:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return table


async def test_the_table_holds_exactly_the_open_alerts_before_and_after_compaction(kafka, settings) -> None:
    bootstrap, topic = kafka.bootstrap_servers, settings.topic(c.ALERTES_ETAT)
    a, b, late = uai("0350301"), uai("0350302"), uai("0350303")
    ids = {u: alert_id(u, RID, "equipement-incompatible") for u in (a, b, late)}
    async with running(SPEC, settings) as pipeline:
        for where in (a, b):
            await old_tablets_at(bootstrap, settings, pipeline, where)
        catalogue = [(RID, publiee(1)), (a, abonnement(a, 1)), (b, abonnement(b, 1))]
        await send(bootstrap, settings.topic(c.CATALOGUE), catalogue)
        opened = "SELECT array_agg(alert_id ORDER BY alert_id) FROM alertes WHERE ouverte"
        both = sorted([ids[a], ids[b]])
        await eventually(lambda: pipeline.pool.fetchval(f"SELECT ({opened}) = $1", both), what="a and b raised")
        await send(bootstrap, settings.topic(PROFILS), [profil(b, 2, "17")])  # b's tablets replaced: resolved
        await eventually(lambda: pipeline.pool.fetchval(f"SELECT ({opened}) = $1", [ids[a]]), what="b resolved")
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 0 FROM outbox"), what="the outbox drained")

        records = await asyncio.to_thread(read_table, bootstrap, topic)
        assert [(k, v and v["type"]) for k, v in records if k == ids[b]] == [
            (ids[b], c.ALERTE_LEVEE),
            (ids[b], c.ALERTE_RESOLUE),
            (ids[b], None),
        ], "b's raise, its resolution, then a tombstone"
        table = current(records)
        assert set(table) == {ids[a]} and table[ids[a]]["data"]["uai"] == a

        # Later, one more alert: its record rolls the segment, and the broker compacts the rest.
        await asyncio.sleep(1)
        await old_tablets_at(bootstrap, settings, pipeline, late)
        await send(bootstrap, settings.topic(c.CATALOGUE), [(late, abonnement(late, 2))])

        async def compacted():
            records = await asyncio.to_thread(read_table, bootstrap, topic)
            alive = [(k, v["type"]) for k, v in records if v is not None]
            gone = {k for k, v in records if v is None}
            return sorted(alive) == sorted([(ids[a], c.ALERTE_LEVEE), (ids[late], c.ALERTE_LEVEE)]) and gone <= {ids[b]}

        await eventually(compacted, timeout=120, what="the table compacted to the open alerts' raises")
