"""The consumer on the real broker: a batch is topped up with the records that came while the
previous one was handled (consumer.Poll), so they make the next batch, not the one after it;
the next batch is taken and parsed while one is handled; a batch that fails is taken again,
with what was taken behind it, and Kafka's offsets follow what was handled
(consumer.OffsetCommits); assigned partitions are read from the stored positions only
(consumer.StoredPositions)."""

import asyncio
import dataclasses
import json

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord

import contracts as c
from contracts import ContractError
from contracts.internal import PROFILS
from deploy.rattrapage import committed_offsets
from helpers import TEST_PARTITIONS, college, eventually, running, send
from helpers import uai as valid_uai
from services.common.messaging import consumer
from services.common.messaging.connection import KafkaAccess, kafka_options
from services.common.messaging.partitioner import partition_for
from services.common.messaging.topics import partitions_of
from services.common.storage import positions
from services.equipement.app import SPEC
from test_equipement import lot, referentiel_loaded


class Frozen:
    """consumer.time, still."""

    @staticmethod
    def monotonic() -> float:
        return 0.0


async def test_the_records_that_came_during_a_batch_make_the_next_one(kafka, settings, monkeypatch):
    # A poll answered from aiokafka's buffer takes well under a millisecond, but a busy machine
    # may pause this process longer than any bound chosen here, and the top-up would then
    # not look again (a third batch): every poll counts as answered at once, the top-up ending
    # on an empty one. The records are all on the broker before the second batch is taken, and
    # the broker answers its fetch as soon as they are: two seconds are generous (audit
    # helper-189 #15: one, on a loaded machine).
    monkeypatch.setattr(consumer, "time", Frozen)
    uai = valid_uai("0350803")  # one key: every lot on one partition
    async with running(SPEC, settings.model_copy(update={"batch_top_up_ms": 2000})) as pipeline:
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)

        batches: list[list[str]] = []
        first_taken, release = asyncio.Event(), asyncio.Event()
        handle = pipeline.handle

        async def held(records, *ahead):
            batches.append([r.key.decode() + "/" + str(r.offset) for r in records])
            if len(batches) == 1:  # the first lot's batch waits while three more lots come
                first_taken.set()
                await release.wait()
            await handle(records, *ahead)

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


async def test_a_failed_batch_is_redelivered_and_its_offsets_committed_once_handled(kafka, settings):
    """The consumer acknowledges batches itself (consumer.OffsetCommits): a batch that fails
    is taken again from its first offset, and Kafka's committed offsets follow once it is handled."""
    uai = valid_uai("0350804")
    async with running(SPEC, settings) as pipeline:
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)

        handled: list[list[int]] = []
        handle = pipeline.handle

        async def failing_once(records, *ahead):
            handled.append([r.offset for r in records])
            if len(handled) == 1:
                raise RuntimeError("the database went away")  # the batch is not stored
            await handle(records, *ahead)

        pipeline.handle = failing_once
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


def _on_other_partitions(first: str) -> str:
    """A UAI whose records go to another partition than `first`'s."""
    taken = partition_for(first.encode(), range(TEST_PARTITIONS))
    for n in range(805, 999):
        if partition_for((candidate := valid_uai(f"0350{n}")).encode(), range(TEST_PARTITIONS)) != taken:
            return candidate
    raise AssertionError("every UAI on one partition")


async def test_a_failed_batch_is_taken_again_with_the_records_taken_behind_it(kafka, settings):
    """Records taken ahead (the next batch, parsed while one is handled) are past the consumer's
    position: when the batch before them fails, their partitions are sought back too, else a
    partition the failed batch did not touch would skip them for good."""
    uai_a = valid_uai("0350805")
    uai_b = _on_other_partitions(uai_a)
    # The poll behind a batch waits this long for records: while the first batch is handled, which
    # sends B with a producer of its own (its start on a loaded machine: audit helper-189 #15).
    async with running(SPEC, settings.model_copy(update={"batch_wait_ms": 15000})) as pipeline:
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(u, college(u)) for u in (uai_a, uai_b)])
        await referentiel_loaded(pipeline, 2)

        lots = settings.topic(c.EQUIPEMENT)
        handled: list[list[str]] = []
        parsed_ahead: list[list[str]] = []
        taken_ahead = asyncio.Event()
        handle, parse_ahead = pipeline.handle, pipeline.parse_ahead

        async def watched(records):
            parsed = await parse_ahead(records)
            parsed_ahead.append([r.key.decode() for r in records])
            if any(r.key.decode() == uai_b for r in records):
                taken_ahead.set()
            return parsed

        async def failing_once(records, *ahead):
            handled.append([r.key.decode() for r in records])
            if len(handled) == 1:  # the other partition's lot comes, and is taken and parsed ahead
                await send(kafka.bootstrap_servers, lots, [(uai_b, lot(uai_b, "B", 30, 2))])
                await asyncio.wait_for(taken_ahead.wait(), 30)
                raise RuntimeError("the database went away")
            await handle(records, *ahead)

        pipeline.handle, pipeline.parse_ahead = failing_once, watched
        await send(kafka.bootstrap_servers, lots, [(uai_a, lot(uai_a, "A", 30, 1))])

        async def both_stored() -> bool:
            return await pipeline.pool.fetchval("SELECT count(*) FROM lots WHERE uai = ANY($1)", [uai_a, uai_b]) == 2

        await eventually(both_stored, what="both lots stored, the one taken ahead of the failed batch too")
        assert handled[0] == [uai_a]
        assert sorted(k for batch in handled[1:] for k in batch) == [uai_a, uai_b], "each taken again, once"


async def test_records_parsed_ahead_are_judged_as_the_batch_would_judge_them(kafka, settings):
    """Pipeline.parse_ahead's results are what the batch uses (a record's own entry is taken as
    it is): a valid record stored, a refused one dead-lettered with its reason; an entry made
    for another record (the same id, a record since gone) is not taken for this one's."""
    uai = valid_uai("0350806")
    lots = settings.topic(c.EQUIPEMENT)

    def record(offset: int, value: bytes, topic: str = lots) -> ConsumerRecord:
        return ConsumerRecord(topic, 0, offset, 0, 0, uai.encode(), value, None, 8, len(value), [])

    async with running(SPEC, settings) as pipeline:
        await pipeline.handle([record(0, json.dumps(college(uai)).encode(), settings.topic(c.REFERENTIEL))])
        valid = record(0, json.dumps(lot(uai, "L1", 30, 1)).encode())
        refused = record(1, b'{"specversion": "1.0", "specversion": "1.0"}')
        other = record(2, json.dumps(lot(uai, "L2", 30, 2)).encode())
        judged = record(3, json.dumps(lot(uai, "L3", 30, 3)).encode())
        ahead = await pipeline.parse_ahead([valid, refused, judged])
        assert ahead[id(refused)][1].code == "json-invalide"
        # Under `other`'s id, another record's result (as a reused id would look): `other` is parsed itself
        ahead[id(other)] = (dataclasses.replace(other), ahead[id(refused)][1])
        ahead[id(judged)] = (judged, ContractError("hors-competence", "as parse_ahead judged it"))
        await pipeline.handle([valid, refused, other, judged], ahead)
        stored = await pipeline.pool.fetch("SELECT lot_id FROM lots WHERE uai = $1 ORDER BY lot_id", uai)
        assert [r["lot_id"] for r in stored] == ["L1", "L2"]
        letters = await pipeline.pool.fetch(
            'SELECT "offset", reason FROM dead_letters WHERE topic = $1 ORDER BY "offset"', lots
        )
        assert [(r["offset"], r["reason"]) for r in letters] == [(1, "json-invalide"), (3, "hors-competence")]


async def test_assigned_partitions_are_read_from_the_stored_positions_only(kafka, settings, monkeypatch):
    """aiokafka lets polls go on while the consumer's assignment callback reads the stored
    positions, from Kafka's committed offsets: after a restore, those are ahead of the database.
    A batch taken from there and committed before the seek would store a position past records
    never handled, lost for good. The partitions stay paused until sought."""
    uai = valid_uai("0350807")
    lots = settings.topic(c.EQUIPEMENT)
    declared = [lot(uai, f"L{n}", 30, 1 + n) for n in range(7)]
    async with running(SPEC, settings) as pipeline:
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)
        await send(kafka.bootstrap_servers, lots, [(uai, d) for d in declared[:5]])

        async def stored(count: int) -> bool:
            return await pipeline.pool.fetchval("SELECT count(*) FROM lots WHERE uai = $1", uai) == count

        await eventually(lambda: stored(5), what="the first five lots stored")
        pool = pipeline.pool
        # A restore to before the last three: the database forgets them, and that it saw them.
        await pool.execute("UPDATE positions SET next_offset = 2 WHERE topic = $1", lots)
        await pool.execute("DELETE FROM lots WHERE uai = $1 AND lot_id = ANY($2)", uai, ["L2", "L3", "L4"])
        await pool.execute("DELETE FROM inbox WHERE id = ANY($1)", [d["id"] for d in declared[2:5]])
    offsets = await committed_offsets(kafka.bootstrap_servers, settings.topic(SPEC.name))
    assert [o for (topic, _), o in offsets.items() if topic == lots] == [5], "Kafka's offsets: ahead of the database"
    await send(kafka.bootstrap_servers, lots, [(uai, d) for d in declared[5:]])

    resume = consumer.StoredPositions._resume_from_database

    async def late_resume(self, kafka_consumer, assigned):
        """The stored positions read only once the race is run: the partitions paused (no poll
        can take their records meanwhile), or a poll's batch handled and committed before the
        seek (what the pause prevents): no fixed wait that a slow broker would outlast."""

        async def taken_ahead() -> bool:  # more than L0 and L1, which the restore kept
            return await self._pipeline.pool.fetchval("SELECT count(*) FROM lots WHERE uai = $1", uai) > 2

        if not assigned <= kafka_consumer.paused():
            await eventually(taken_ahead, timeout=30, what="a poll's batch handled before the positions' seek")
        await resume(self, kafka_consumer, assigned)

    monkeypatch.setattr(consumer.StoredPositions, "_resume_from_database", late_resume)
    async with running(SPEC, settings) as pipeline:
        handled: list[int] = []
        handle = pipeline.handle

        async def watched(records, *ahead):
            handled.extend(r.offset for r in records if r.topic == lots)
            await handle(records, *ahead)

        pipeline.handle = watched
        await eventually(lambda: stored(7), what="every lot stored, the three the restore forgot too")
        assert handled[0] == 2, f"resumed from the stored position, not from Kafka's: {handled}"


async def test_a_batch_failed_before_the_handler_is_taken_again_not_skipped(kafka, settings, monkeypatch):
    """FastStream runs its parser and middlewares before the handler and swallows their errors
    (logged): the consumer's position is past that batch, and the next one's stored position
    would have skipped it for good. The poll gives a batch the handler never received back."""
    uai = valid_uai("0350806")
    parse_batch, failures = consumer._parse_batch, []

    async def failing_once(records, default_parser):
        if any(r.topic == settings.topic(c.EQUIPEMENT) for r in records) and not failures:
            failures.append([r.offset for r in records])
            raise RuntimeError("a parser's bug")
        return await parse_batch(records, default_parser)

    monkeypatch.setattr(consumer, "_parse_batch", failing_once)
    async with running(SPEC, settings) as pipeline:
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)
        lots = settings.topic(c.EQUIPEMENT)
        await send(kafka.bootstrap_servers, lots, [(uai, lot(uai, "L0", 30, 1))])
        await eventually(lambda: asyncio.sleep(0, bool(failures)), what="the batch failed in the parser")
        await send(kafka.bootstrap_servers, lots, [(uai, lot(uai, "L1", 30, 2))])

        async def both_stored() -> bool:
            return await pipeline.pool.fetchval("SELECT count(*) FROM lots WHERE uai = $1", uai) == 2

        await eventually(both_stored, what="both lots stored, the one whose batch failed before the handler too")


BAD = b'{"specversion": "1.0", "specversion": "1.0"}'  # json-invalide


@pytest.mark.parametrize("mixed", [True, False], ids=["a-valid-one-first", "refused-ones-only"])
async def test_two_replicas_handling_one_batch_at_once_apply_and_dead_letter_it_once(
    kafka, settings, monkeypatch, mixed
):
    """A batch handled by two replicas at once (a rebalance: the former owner's transaction not
    committed when the new owner reads the partition's stored position), the first held once it
    has judged the batch and written its dead letters, uncommitted: the second waits on the rows
    the first wrote (the valid event's inbox row, else the refused records' dead letters) and,
    once the first has committed, finds each record handled: the valid one applied once (one
    profile published), the refused ones dead-lettered once (one copy each), the one waiting for
    its établissement waiting once (audit s69 F4: nothing pinned this down)."""
    uai, unknown = valid_uai("0350811"), valid_uai("0350812")
    lots = settings.topic(c.EQUIPEMENT)

    def record(offset: int, value: bytes, key: str = uai, topic: str = lots) -> ConsumerRecord:
        # On a partition the topic lacks: no rebalance of the two replicas' consumers assigns it,
        # to check its stored position against a log that has none of these offsets.
        return ConsumerRecord(topic, 99, offset, 0, 0, key.encode(), value, None, 8, len(value), [])

    batch = [record(1, BAD), record(2, json.dumps(lot(unknown, "L2", 30, 2)).encode(), unknown)]
    if mixed:
        batch.insert(0, record(0, json.dumps(lot(uai, "L1", 30, 1)).encode()))
    else:
        batch[1] = record(2, BAD[:-1], unknown)  # no event: nothing claimed in the inbox
    held, release = asyncio.get_running_loop().create_future(), asyncio.Event()
    advance = positions.advance

    async def first_held_before_its_positions(conn, records):
        if not held.done():
            held.set_result(conn.get_server_pid())
            await release.wait()
        return await advance(conn, records)

    async with running(SPEC, settings) as first, running(SPEC, settings) as second:
        referentiel = json.dumps(college(uai)).encode()
        await first.handle([record(0, referentiel, topic=settings.topic(c.REFERENTIEL))])
        monkeypatch.setattr(positions, "advance", first_held_before_its_positions)
        pool = first.pool
        handling = asyncio.create_task(first.handle(batch))
        overlapping: asyncio.Task | None = None
        try:
            pid = await asyncio.wait_for(held, 30)
            overlapping = asyncio.create_task(second.handle(batch))

            async def second_waits_on_the_first() -> bool:
                blocked = "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))"
                return bool(await pool.fetchval(blocked, pid))

            await eventually(second_waits_on_the_first, what="the second replica's batch waiting on the first's rows")
        finally:
            release.set()
            await asyncio.wait_for(asyncio.gather(handling, *filter(None, [overlapping])), 30)

        refused = [(1, "json-invalide"), (2, "uai-inconnu" if mixed else "json-invalide")]
        letters = await pool.fetch('SELECT "offset", reason FROM dead_letters WHERE topic = $1 ORDER BY 1', lots)
        assert [(r["offset"], r["reason"]) for r in letters] == refused
        assert await pool.fetchval("SELECT count(*) FROM attente_referentiel") == int(mixed)
        assert await pool.fetchval("SELECT count(*) FROM lots WHERE uai = $1", uai) == int(mixed)
        assert await pool.fetchval("SELECT next_offset FROM positions WHERE topic = $1", lots) == 3

        async def relayed() -> bool:
            return await pool.fetchval("SELECT count(*) FROM outbox") == 0

        await eventually(relayed, what="the outbox relayed")
        counts = await topic_sizes(kafka.bootstrap_servers, [settings.topic(PROFILS), c.dlq(lots)])
        assert counts == {settings.topic(PROFILS): int(mixed), c.dlq(lots): 2}, "published once each"


async def topic_sizes(bootstrap: str, topics: list[str]) -> dict[str, int]:
    """How many records each topic holds (none deleted yet: end offsets minus beginnings)."""
    partitions = await partitions_of(KafkaAccess.from_environ(bootstrap_servers=bootstrap), topics)
    reader = AIOKafkaConsumer(**kafka_options(bootstrap), group_id=None)
    await reader.start()
    try:
        ends, starts = await reader.end_offsets(partitions), await reader.beginning_offsets(partitions)
    finally:
        await reader.stop()
    return {t: sum(ends[tp] - starts[tp] for tp in partitions if tp.topic == t) for t in topics}
