"""A batch is topped up with the records that came while the previous one was handled
(consumer._top_up), on the real broker: they make the next batch, not the one after it."""

import asyncio

import contracts as c
from helpers import college, eventually, running, send
from helpers import uai as valid_uai
from services.equipement.app import SPEC
from test_equipement import lot, referentiel_loaded


async def test_the_records_that_came_during_a_batch_make_the_next_one(kafka, settings):
    uai = valid_uai("0350803")  # one key: every lot on one partition
    # Generous: the broker answers the top-up's fetch as soon as the records are there.
    async with running(SPEC, settings.model_copy(update={"batch_top_up_ms": 5000})) as pipeline:
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)

        batches: list[list[str]] = []
        first_taken, release = asyncio.Event(), asyncio.Event()
        handle = pipeline.handle

        async def held(records):
            batches.append([r.key.decode() + "/" + str(r.offset) for r in records])
            if len(batches) == 1:  # the first lot's batch waits while three more lots come
                first_taken.set()
                await release.wait()
            await handle(records)

        pipeline.handle = held
        lots = settings.topic(c.EQUIPEMENT)
        await send(kafka.bootstrap_servers, lots, [(uai, lot(uai, "L0", 30, 1))])
        await asyncio.wait_for(first_taken.wait(), 30)
        for n in (1, 2, 3):  # one at a time, each acknowledged by the broker before the next
            await send(kafka.bootstrap_servers, lots, [(uai, lot(uai, f"L{n}", 30, 1 + n))])
        release.set()

        async def all_stored() -> bool:
            return await pipeline.pool.fetchval("SELECT count(*) FROM lots WHERE uai = $1", uai) == 4

        await eventually(all_stored, what="the four lots stored")
        # Without the top-up, the fetch in flight during the first batch brings the second lot
        # alone, and the last two wait for a third batch.
        assert [len(b) for b in batches] == [1, 3], batches
