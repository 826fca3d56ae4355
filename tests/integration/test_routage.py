"""Records left on alertes.etat.v1's partitions beyond those the relay routes to (a deployment
whose table had more than ROUTED_PARTITIONS before the relay kept to them), looked for at
ressources' start, on the real broker."""

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

import contracts as c
from helpers import TEST_PARTITIONS, Said, eventually, running, send
from services.common.messaging import routage
from services.common.messaging.connection import kafka_options
from services.ressources.app import SPEC as RESSOURCES


async def test_records_left_beyond_the_routed_partitions_of_the_alert_table_are_said(
    kafka, settings, monkeypatch
) -> None:
    """The table given 2 more partitions than the relay routes to (here TEST_PARTITIONS): empty,
    an INFO; once one holds a record (an alert's raise from before the upgrade, kept there for
    good by the compaction once its resolution went elsewhere), an ERROR naming it, at each
    start (review s63-2 M1: nothing detected it)."""
    bootstrap, table = kafka.bootstrap_servers, settings.topic(c.ALERTES_ETAT)
    monkeypatch.setattr(routage, "ROUTED_PARTITIONS", TEST_PARTITIONS)
    admin = AIOKafkaAdminClient(**kafka_options(bootstrap))
    await admin.start()
    try:
        await admin.create_partitions({table: NewPartitions(total_count=TEST_PARTITIONS + 2)})

        async def added() -> bool:
            [described] = await admin.describe_topics([table])
            return len(described["partitions"]) == TEST_PARTITIONS + 2

        await eventually(added, what="the partitions added")
    finally:
        await admin.close()

    async def said_at_start() -> dict:
        said = Said()
        monkeypatch.setattr(routage, "log", said)

        async def looked() -> bool:
            return bool(said.lines)

        async with running(RESSOURCES, settings):
            await eventually(looked, what="the partitions looked at")
        [line] = said.lines
        return line

    empty = await said_at_start()
    assert (empty["event"], empty["level"], empty["partitions"]) == ("routage.partitions_vides", "info", [6, 7])

    await send(bootstrap, table, [("alerte-1", {"type": "alerte-levee"})], partition=TEST_PARTITIONS + 1)
    left = await said_at_start()
    assert (left["event"], left["level"]) == ("routage.partitions_abandonnees", "error"), left
    assert (left["partitions"], left["offsets"]) == ([TEST_PARTITIONS + 1], 1)
    assert "./dev rebuild ressources" in left["hint"]
