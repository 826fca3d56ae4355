"""A batch whose transaction meets a deadlock (replicas locking the same keys) is replayed,
against the real broker and database: applied once, published once."""

import asyncpg

import contracts as c
from contracts.internal import PROFILS
from helpers import TopicReader, college, eventually, record_count, running, send
from helpers import uai as valid_uai
from services.equipement.app import SPEC
from test_equipement import lot, referentiel_loaded


async def test_a_deadlocked_batch_is_replayed_once(kafka, settings):
    uai = valid_uai("0350801")
    async with (
        running(SPEC, settings) as pipeline,
        TopicReader(kafka.bootstrap_servers, settings.topic(PROFILS)) as profils,
    ):
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)

        original, attempts = pipeline._apply, []

        async def deadlocked_once(store, events, ref_changed):
            attempts.append(events)
            applied = await original(store, events, ref_changed)  # written, not committed
            if len(attempts) == 1:
                raise asyncpg.DeadlockDetectedError("deadlock detected")  # the transaction rolls back
            return applied

        pipeline._apply = deadlocked_once
        await send(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT), [(uai, lot(uai, "L1", 30, 1))])
        await profils.wait_for(lambda rs: len(rs) >= 1, what="the lot's record")
        assert len(attempts) == 2
        assert await pipeline.pool.fetchval("SELECT count(*) FROM inbox WHERE type = $1", c.LOT) == 1

        async def drained() -> bool:
            return await pipeline.pool.fetchval("SELECT count(*) FROM outbox") == 0

        await eventually(drained, what="the outbox published")
        assert await record_count(kafka.bootstrap_servers, settings.topic(PROFILS)) == 1, "published once"
