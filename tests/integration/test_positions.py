"""Positions live with the data: a service resumes where its database says, not where Kafka's
committed offsets say. Two schemas share one consumer group (as an old backup restored, or a
fresh schema, would share it with the running service's past), against the real broker."""

import asyncio
import time
from collections.abc import Awaitable, Callable

import contracts as c
from helpers import TEST_PARTITIONS, college, delete_before, eventually, running, send
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


async def _bounds(bootstrap: str, tp) -> tuple[int, int]:
    from aiokafka import AIOKafkaConsumer

    from services.common.messaging.connection import kafka_options

    consumer = AIOKafkaConsumer(**kafka_options(bootstrap))
    await consumer.start()
    try:
        return (await consumer.beginning_offsets([tp]))[tp], (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()


async def _a_handled_then_later_deleted(kafka, settings, later: str) -> str:
    """Lot A handled by equipement, stopped; then the lots `later` declared and every record of
    partition 0 before offset 3 deleted (a retention shorter than the topic's, DeleteRecords).
    Returns the topic."""
    bootstrap, uai = kafka.bootstrap_servers, valid_uai("0350001")
    topic = settings.topic(c.EQUIPEMENT)
    async with running(SPEC, settings) as pipeline:
        await send(bootstrap, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)
        await send(bootstrap, topic, [(uai, lot(uai, "A", 10, 1))], partition=0)
        await _handled(pipeline, {"A"})
    await send(bootstrap, topic, [(uai, lot(uai, x, 10, 2 + i)) for i, x in enumerate(later)], partition=0)
    await delete_before(bootstrap, topic, 3)
    return topic


async def test_records_deleted_before_they_were_read_are_said_lost_not_skipped_silently(
    kafka, settings, monkeypatch
) -> None:
    """Lots B and C declared while the service was down, then deleted from the topic (a retention
    shorter than the topic's, DeleteRecords): aiokafka's reset to the earliest record skipped them
    with a line at INFO only (not written at LIBRARY_LOG_LEVEL=WARNING), the lag read 0, nothing
    counted. Now an ERROR naming the partition and the records lost, /health and /metrics."""
    from aiokafka import TopicPartition

    from helpers import Said
    from services.common.messaging import consumer

    topic = await _a_handled_then_later_deleted(kafka, settings, "BCD")  # B (1) and C (2) gone: D is the first
    assert await _bounds(kafka.bootstrap_servers, TopicPartition(topic, 0)) == (3, 4)

    said = Said()
    monkeypatch.setattr(consumer, "log", said)
    service = running(SPEC, settings)
    async with service as pipeline:
        await _handled(pipeline, {"A", "D"})
        _, health = await service.app.health()
        scraped = (await service.app.metrics()).decode()
        stored = await pipeline.pool.fetchval(
            "SELECT next_offset FROM positions WHERE topic = $1 AND partition = 0", topic
        )

    [lost] = health["positions_out_of_range"]
    assert {k: lost[k] for k in ("topic", "partition", "position", "log_start", "log_end", "records_lost")} == {
        "topic": topic,
        "partition": 0,
        "position": 1,
        "log_start": 3,
        "log_end": 4,
        "records_lost": 2,
    }
    assert f'feo_records_lost_total{{service="equipement",topic="{topic}"}} 2.0' in scraped
    [line] = said.named("kafka.position_out_of_range")
    assert line["level"] == "error" and (line["position"], line["log_start"], line["records_lost"]) == (1, 3, 2)
    assert stored == 4


async def test_records_deleted_from_a_compacted_topic_before_they_were_read_are_said_lost(
    kafka, settings, monkeypatch
) -> None:
    """Profiles 2 and 3 published while ressources was down, then deleted from the compacted
    topic (its policy set to `compact,delete` by hand): a position below a compacted topic's
    start was taken for its compaction, said at WARNING as "no loss", and ressources kept a
    stale profile without a word. A compaction never moves the log's start: now the same ERROR
    and counts as any loss, the hint naming the rebuild that publishes them again (audit s63
    topology #4)."""
    from aiokafka import TopicPartition

    from contracts.internal import PROFILS
    from helpers import Said, also_deleted_by_age, delete_before
    from services.common.messaging import consumer
    from services.ressources.app import SPEC as RESSOURCES
    from test_ressources import old_tablets_at, profil

    bootstrap, where, topic = kafka.bootstrap_servers, valid_uai("0350009"), settings.topic(PROFILS)
    held = "(SELECT max(version) FROM recus WHERE uai = $1)"
    async with running(RESSOURCES, settings) as pipeline:
        await old_tablets_at(bootstrap, settings, pipeline, where)
        [stored] = await pipeline.pool.fetch("SELECT partition, next_offset FROM positions WHERE topic = $1", topic)
    tp = TopicPartition(topic, stored["partition"])
    await send(bootstrap, topic, [profil(where, n, "17.1") for n in (2, 3, 4)], partition=tp.partition)
    await also_deleted_by_age(bootstrap, settings, topic)
    await delete_before(bootstrap, topic, stored["next_offset"] + 2, tp.partition)  # 2 and 3 gone
    assert await _bounds(bootstrap, tp) == (stored["next_offset"] + 2, stored["next_offset"] + 3)

    said = Said()
    monkeypatch.setattr(consumer, "log", said)
    service = running(RESSOURCES, settings)
    async with service as pipeline:
        await eventually(lambda: pipeline.pool.fetchval(f"SELECT {held} = 4", where), what="profile 4")
        _, health = await service.app.health()

    [line] = said.named("kafka.position_out_of_range")
    assert line["level"] == "error" and line["records_lost"] == 2, line
    assert "rebuild the service that publishes the topic" in line["hint"]
    assert [o["records_lost"] for o in health["positions_out_of_range"]] == [2]


async def test_a_fresh_schema_is_told_of_records_deleted_before_its_first_start(kafka, settings, monkeypatch) -> None:
    """A fresh schema (a database lost without a backup, a new deployment over the topics) read
    each partition from its log's start, the records deleted before it skipped without a word.
    Now read from offset 0: the same ERROR, row and count as a stored position below the start."""
    from helpers import Said
    from services.common.messaging import consumer

    topic = await _a_handled_then_later_deleted(kafka, settings, "BCD")  # A, B, C gone: D is the first
    fresh = settings.model_copy(update={"db_schema": "equipement_neuf"})
    said = Said()
    monkeypatch.setattr(consumer, "log", said)
    async with running(SPEC, fresh) as pipeline:
        await _handled(pipeline, {"D"})
        told = await pipeline.pool.fetch(
            "SELECT topic, partition, position, log_start, records_lost FROM positions_hors_limites"
        )
    assert [tuple(r) for r in told] == [(topic, 0, 0, 3, 3)]
    [line] = said.named("kafka.position_out_of_range")
    assert (line["level"], line["topic"], line["records_lost"]) == ("error", topic, 3)


async def test_a_loss_is_told_once_however_often_its_partition_is_assigned(kafka, settings) -> None:
    """Every record after the stored position deleted, none come since: the stored position stayed
    below the log's start, the same loss told again (a row, an ERROR, counted) at every start or
    rebalance until a record came. Now the position moves to the log's start once told."""
    bootstrap, uai = kafka.bootstrap_servers, valid_uai("0350001")
    topic = await _a_handled_then_later_deleted(kafka, settings, "BC")  # nothing left after A

    stored = "SELECT next_offset FROM positions WHERE topic = $1 AND partition = 0"
    async with running(SPEC, settings) as pipeline:
        await eventually(lambda: pipeline.pool.fetchval(stored + " AND next_offset = 3", topic), what="moved to 3")
    async with running(SPEC, settings) as pipeline:  # assigned again, then a record comes
        await send(bootstrap, topic, [(uai, lot(uai, "D", 10, 4))], partition=0)
        await _handled(pipeline, {"A", "D"})
        told = await pipeline.pool.fetch("SELECT position, log_start, records_lost FROM positions_hors_limites")
    assert [tuple(r) for r in told] == [(1, 3, 2)]


async def _handled_then_made_again(kafka, settings, *lots: str) -> Callable[..., Awaitable[None]]:
    """`lots` of one collège handled on partition 0 of the declarations' topic, which is then made
    again, the service stopped; what declares more lots there."""
    bootstrap, uai = kafka.bootstrap_servers, valid_uai("0350001")
    topic = settings.topic(c.EQUIPEMENT)
    declare = lambda *lots: send(bootstrap, topic, [(uai, lot(uai, x, 10, 1)) for x in lots], partition=0)  # noqa: E731
    async with running(SPEC, settings) as pipeline:
        await send(bootstrap, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)
        await declare(*lots)
        await _handled(pipeline, set(lots))
    await _made_again(bootstrap, settings, topic)
    return declare


async def test_a_topic_made_again_is_read_from_its_start_and_its_later_records_never_skipped(kafka, settings) -> None:
    """The declarations' topic deleted and created again (Strimzi's KafkaTopic re-applied, another
    cluster): the stored position, past the new log's end, was reset to 0 by aiokafka but kept
    in the database (`advance` never moves back), the lag reading 0; at the next start, once the
    new topic had grown past it, the records before it were skipped without a word."""
    declare = await _handled_then_made_again(kafka, settings, "A", "B", "C", "D")
    async with running(SPEC, settings) as pipeline:
        # Met at the first fetch, the new log empty (a record sent before then would be its end:
        # CI run 2 of session 60 recorded a log end of 1).
        found = await eventually(
            lambda: pipeline.pool.fetch("SELECT position, log_end, records_lost FROM positions_hors_limites"),
            what="the position past the new log's end recorded",
        )
        assert [tuple(row) for row in found] == [(4, 0, 0)]
        await declare("E")
        await _handled(pipeline, {"A", "B", "C", "D", "E"})
    await declare("F", "G", "H", "I")  # offsets 1 to 4 of the new topic, while the service is down
    async with running(SPEC, settings) as pipeline:
        await _handled(pipeline, set("ABCDEFGHI"))


async def test_a_topic_made_again_that_grew_past_the_position_while_the_service_was_away_is_read_from_its_start(
    kafka, settings
) -> None:
    """The topic made again while the service was stopped, and the passerelle's declarations
    written to it meanwhile past the stored position: a fetch there met no error (the position
    is within the new log), and the records before it were skipped without a word (audit
    helper-191 #1). The position keeps the instant its record was appended: no record of the new
    log was appended then, so it is read from its start, told once; a start after that is not."""
    told = "SELECT position, log_start, log_end, records_lost FROM positions_hors_limites"
    declare = await _handled_then_made_again(kafka, settings, "A", "B", "C", "D")
    await declare("E", "F", "G", "H", "I")  # offsets 0 to 4 of the new topic: past the stored 4
    async with running(SPEC, settings) as pipeline:
        await _handled(pipeline, set("ABCDEFGHI"))
        assert [tuple(r) for r in await pipeline.pool.fetch(told)] == [(4, 0, 5, 0)]
    async with running(SPEC, settings) as pipeline:  # its own log, the instant now the record I's
        await declare("J")
        await _handled(pipeline, set("ABCDEFGHIJ"))
        assert len(await pipeline.pool.fetch(told)) == 1, "told once"


async def test_partitions_of_a_group_with_no_committed_offset_wait_for_no_error(
    kafka, settings, monkeypatch, caplog
) -> None:
    """Its consumer resets nothing by itself: while the stored positions were read, aiokafka
    looked the group's committed offsets up, found none (a new group, offsets Kafka forgot after
    a week) and raised at the next poll, which FastStream logged as an ERROR and paused every
    partition 5 s for."""
    import logging

    from services.common.messaging import consumer

    resume = consumer.StoredPositions._resume_from_database

    async def late_resume(self, kafka_consumer, assigned):
        """The stored positions read only once aiokafka has settled where each partition starts
        (as the reset asked before this callback awaited), or has logged the error its look-up
        of the group's offsets ends in without it: no fixed wait a slow broker would outlast."""
        state = kafka_consumer._subscription.subscription.assignment.state_value

        async def settled() -> bool:
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            return bool(errors) or all(state(tp).has_valid_position for tp in assigned)

        await eventually(settled, timeout=30, what="the partitions' start settled, or an error")
        await resume(self, kafka_consumer, assigned)

    monkeypatch.setattr(consumer.StoredPositions, "_resume_from_database", late_resume)
    caplog.set_level(logging.ERROR)
    uai = valid_uai("0350001")
    async with running(SPEC, settings) as pipeline:
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


async def _made_again(bootstrap: str, settings, topic: str) -> None:
    """`topic` deleted and created again, empty."""
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from deploy.topic_admin import create_topics
    from deploy.topology import platform_topics
    from services.common.messaging.connection import kafka_options

    admin = AIOKafkaAdminClient(**kafka_options(bootstrap))
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()
    [spec] = [t for t in platform_topics(settings.topic_prefix, partitions=TEST_PARTITIONS) if t.name == topic]

    async def made_again() -> bool:
        try:  # while its deletion goes on, the topic is said to exist, or unknown
            await create_topics(bootstrap, [spec])
            return await _bounds(bootstrap, TopicPartition(topic, 0)) == (0, 0)
        except Exception:
            return False

    await eventually(made_again, what="the topic made again")


async def test_a_record_refused_at_the_place_of_a_former_topic_s_refused_one_is_told(
    kafka, settings, monkeypatch
) -> None:
    """Dead letters are told once by their place (topic, partition, offset): a topic made again
    puts its new records at its former ones' places, and one refused where a former one was
    refused got no DLQ copy, no line, no wait. Now told, the former row replaced, and said once
    committed."""
    from helpers import Said, TopicReader
    from services.common.messaging import dlq as dead_letters

    said = Said()
    monkeypatch.setattr(dead_letters, "log", said)

    bootstrap, topic = kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT)
    dead = 'SELECT count(*) FROM dead_letters WHERE topic = $1 AND partition = 0 AND "offset" = 0'
    async with TopicReader(bootstrap, c.dlq(topic)) as dlq:
        async with running(SPEC, settings) as pipeline:
            await send(bootstrap, topic, [("k", b"not json, the former topic's")], partition=0)
            await dlq.wait_for(lambda rs: rs, what="the first refusal's copy")
            await eventually(lambda: pipeline.pool.fetchval(dead, topic), what="its dead letter")
        await _made_again(bootstrap, settings, topic)
        async with running(SPEC, settings) as pipeline:  # its position past the new log's end: moved back to 0
            # Met at the first fetch, the new log empty: a record sent before then would make the
            # new log's end the stored position, which Kafka cannot tell from a position caught
            # up (audit helper-189 #1, the race 821937f closed in the test above).
            await eventually(
                lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM positions_hors_limites"),
                what="the position past the new log's end recorded",
            )
            await send(bootstrap, topic, [("k", b"not json either, the new topic's")], partition=0)
            copies = await dlq.wait_for(lambda rs: len(rs) >= 2, what="the second refusal's copy")
    assert [r.value for r in copies] == [b"not json, the former topic's", b"not json either, the new topic's"]
    [reused] = said.named("dead_letters.place_reused")
    assert (reused["records"], reused["topics"]) == (1, [topic])
    assert [line["refused"] for line in said.named("events.rejected")] == [{"json-invalide": 1}] * 2


async def test_the_instant_each_record_was_appended_is_read_at_its_offset(kafka, settings) -> None:
    """consumer.record_stamps, which judges a position Kafka's timestamp index suspects (audit
    helper-194 #5), on the real broker: the instant of the record at each offset asked, as its
    reader sees it."""
    from aiokafka import TopicPartition

    from deploy.rattrapage import read_topic
    from services.common.messaging.connection import KafkaAccess
    from services.common.messaging.consumer import record_stamps

    topic = settings.topic(c.REFERENTIEL)
    for n in range(3):  # one append each, a millisecond apart at least: three instants
        await send(kafka.bootstrap_servers, topic, [(code := valid_uai(f"035060{n}"), college(code))], partition=0)
        acknowledged = time.time_ns() // 1_000_000  # appended at or before this millisecond
        while time.time_ns() // 1_000_000 <= acknowledged:
            await asyncio.sleep(0.001)
    records = await read_topic(kafka.bootstrap_servers, topic)
    assert len({r.timestamp for r in records}) == 3, "three instants to tell the records apart"
    stamps = await record_stamps(KafkaAccess.of(settings))({TopicPartition(topic, 0): 1})
    assert stamps == {TopicPartition(topic, 0): records[1].timestamp}
