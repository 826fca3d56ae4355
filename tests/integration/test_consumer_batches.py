"""The consumer on the real broker: a batch is topped up with the records that came while the
previous one was handled (consumer._top_up), so they make the next batch, not the one after
it; the next buffered batch is parsed while the one before it is written, one transaction at a
time (consumer._handle_while_buffered); a batch that fails is taken again, with any batch taken
after it, and Kafka's offsets follow what was handled (consumer.OffsetCommits)."""

import asyncio
import itertools

from aiokafka.partitioner import DefaultPartitioner

import contracts as c
from conftest import TEST_PARTITIONS
from helpers import college, committed_offsets, eventually, running, send
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
        write = pipeline.write

        async def held(batch):
            batches.append([r.key.decode() + "/" + str(r.offset) for r in batch.records])
            if len(batches) == 1:  # the first lot's batch waits while three more lots come
                first_taken.set()
                await release.wait()
            await write(batch)

        pipeline.write = held
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


async def test_a_failed_batch_is_redelivered_and_its_offsets_committed_once_handled(kafka, settings):
    """The consumer acknowledges batches itself (consumer.OffsetCommits): a batch that fails
    is taken again from its first offset, and Kafka's committed offsets follow once it is handled."""
    uai = valid_uai("0350804")
    async with running(SPEC, settings) as pipeline:
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)

        handled: list[list[int]] = []
        write = pipeline.write

        async def failing_once(batch):
            handled.append([r.offset for r in batch.records])
            if len(handled) == 1:
                raise RuntimeError("the database went away")  # the batch is not stored
            await write(batch)

        pipeline.write = failing_once
        lots = settings.topic(c.EQUIPEMENT)
        await send(kafka.bootstrap_servers, lots, [(uai, lot(uai, "L0", 30, 1))])

        async def stored() -> bool:
            return await pipeline.pool.fetchval("SELECT count(*) FROM lots WHERE uai = $1", uai) == 1

        await eventually(stored, what="the lot stored on its second delivery")
        assert handled == [[0], [0]], "the same record, taken again"

        async def committed() -> bool:
            offsets = await committed_offsets(kafka.bootstrap_servers, settings.topic(SPEC.name))
            return any(topic == lots and offset == 1 for (topic, _), offset in offsets.items())

        await eventually(committed, what="Kafka's committed offset past the lot")


async def lots_waiting(kafka, settings, uais: list[str], each: int) -> None:
    """The service knows `uais`, then is stopped while `each` lots of each come."""
    async with running(SPEC, settings) as pipeline:
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(u, college(u)) for u in uais])
        await referentiel_loaded(pipeline, len(uais))
    lots = [(u, lot(u, f"L{n}", 30, 1 + n)) for u in uais for n in range(each)]
    await send(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT), lots)


def on_two_partitions() -> list[str]:
    """Two UAIs whose records go to two partitions (Kafka's default partitioner, as the producer)."""
    partition = lambda u: DefaultPartitioner()(u.encode(), list(range(TEST_PARTITIONS)), [])  # noqa: E731
    first = valid_uai("0350806")
    return [first, next(u for n in range(807, 900) if partition(u := valid_uai(f"0350{n}")) != partition(first))]


async def test_the_next_buffered_batch_is_parsed_while_the_one_before_is_written(kafka, settings):
    uai = valid_uai("0350805")  # one key: the six lots on one partition
    await lots_waiting(kafka, settings, [uai], 6)
    steps: list[tuple[str, list[int]]] = []
    async with running(SPEC, settings.model_copy(update={"batch_max_records": 2})) as pipeline:
        prepare, beside, write = pipeline.prepare, pipeline.prepare_beside, pipeline.write

        def prepared(records):  # the first batch FastStream hands over
            steps.append(("prepare", [r.offset for r in records]))
            return prepare(records)

        async def prepared_beside(records):  # each batch taken after it
            steps.append(("prepare", [r.offset for r in records]))
            return await beside(records)

        async def written(batch):
            offsets = [r.offset for r in batch.records]
            steps.append(("write", offsets))
            await write(batch)
            steps.append(("written", offsets))

        pipeline.prepare, pipeline.prepare_beside, pipeline.write = prepared, prepared_beside, written

        async def all_stored() -> bool:
            return await pipeline.pool.fetchval("SELECT count(*) FROM lots WHERE uai = $1", uai) == 6

        await eventually(all_stored, what="the six lots stored")
    lots = [offsets for step, offsets in steps if step == "written"]
    writes = [(step, offsets) for step, offsets in steps if step != "prepare"]
    # One transaction at a time, in the records' order.
    assert writes == [(step, o) for o in lots for step in ("write", "written")], steps
    assert sorted(o for b in lots for o in b) == [o for b in lots for o in b], steps
    # Each batch after the first was parsed before the one before it was written.
    assert len(lots) == 3, steps
    for before, after in itertools.pairwise(lots):
        assert steps.index(("prepare", after)) < steps.index(("written", before)), steps


async def test_a_failed_batch_is_taken_again_with_the_batch_parsed_after_it(kafka, settings):
    uais = on_two_partitions()
    # Batches of two: the first takes one partition's two lots, the next one the other's.
    await lots_waiting(kafka, settings, uais, 2)
    attempts: list[list[str]] = []
    async with running(SPEC, settings.model_copy(update={"batch_max_records": 2})) as pipeline:
        write = pipeline.write

        async def failing_once(batch):
            attempts.append([f"{r.partition}/{r.offset}" for r in batch.records])
            if len(attempts) == 1:
                raise RuntimeError("the database went away")  # the batch is not stored
            await write(batch)

        pipeline.write = failing_once

        async def all_stored() -> bool:
            return await pipeline.pool.fetchval("SELECT count(*) FROM lots WHERE uai = ANY($1)", uais) == 4

        # Without the rewind of the batch parsed while the first one failed, the other
        # partition's lots were skipped: the consumer's position was past them.
        await eventually(all_stored, what="the four lots stored")
    assert attempts[0] in attempts[1:], "the failed batch, taken again"
