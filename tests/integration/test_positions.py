"""Positions live with the data: a service resumes where its database says, not where Kafka's
committed offsets say. Two schemas share one consumer group (as an old backup restored, or a
fresh schema, would share it with the running service's past), against the real broker."""

import contracts as c
from helpers import college, eventually, running, send
from helpers import uai as valid_uai
from services.equipement.app import SPEC
from test_equipement import lot, referentiel_loaded


async def _lots(pipeline) -> set[str]:
    return {r["lot_id"] for r in await pipeline.pool.fetch("SELECT lot_id FROM lots")}


async def _handled(pipeline, lots: set[str]) -> None:
    async def check():
        return await _lots(pipeline) == lots

    await eventually(check, what=f"lots {sorted(lots)}")


async def test_a_schema_resumes_from_its_own_positions_whatever_kafka_committed(kafka, settings) -> None:
    bootstrap, uai = kafka.bootstrap_servers, valid_uai("0350001")
    first, second = settings, settings.model_copy(update={"db_schema": "equipement_b"})
    declare = lambda *lots: send(bootstrap, settings.topic(c.EQUIPEMENT), [(uai, lot(uai, x, 10, 1)) for x in lots])  # noqa: E731

    async with running(SPEC, first) as pipeline:
        await send(bootstrap, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)
        await declare("A")
        await _handled(pipeline, {"A"})
        stored = await pipeline.pool.fetch("SELECT topic, partition, next_offset FROM positions ORDER BY topic")
    # Past the référentiel's record and the lot's, each in its partition.
    assert [(r["topic"], r["next_offset"]) for r in stored] == [
        (settings.topic(c.EQUIPEMENT), 1),
        (settings.topic(c.REFERENTIEL), 1),
    ]

    # A fresh schema in the same group, whose committed offsets are past everything: from the beginning.
    await declare("B")
    async with running(SPEC, second) as pipeline:
        await _handled(pipeline, {"A", "B"})

    # The first schema again: Kafka's group is past B now, its own position is not.
    await declare("C")
    async with running(SPEC, first) as pipeline:
        await _handled(pipeline, {"A", "B", "C"})
        assert await pipeline.pool.fetchval("SELECT count(*) FROM inbox WHERE type = $1", c.LOT) == 3
