"""The consumer resumes each assigned partition at the position its database holds; when the
database cannot be read it waits for it, and never falls back to Kafka's committed offsets
(ahead of the database after a restore or a failover, they would skip records for good): the
partitions are paused until sought."""

import asyncio
import contextlib
import re
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError, KafkaConnectionError
from aiokafka.structs import OffsetAndTimestamp

from services.common.messaging import consumer
from services.common.runtime.metrics import Metrics

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


@pytest.fixture(autouse=True)
def no_append_instants(monkeypatch):
    """No position knows when its record was appended, unless a test says (positions.appended)."""

    async def appended(pool, assigned):
        return {}

    monkeypatch.setattr(consumer.positions, "appended", appended)


class Paused:
    """A consumer that records its pauses, seeks and resumes, in order."""

    def __init__(self):
        self.calls: list[tuple] = []
        self._closed = False  # aiokafka's: True once stopping

    def pause(self, *partitions):
        self.calls.append(("pause", set(partitions)))

    def seek(self, tp, offset):
        self.calls.append(("seek", tp, offset))

    def resume(self, *partitions):
        self.calls.append(("resume", set(partitions)))

    @property
    def _fetcher(self):  # aiokafka's, whose reset seek_to_beginning asks for
        def request_offset_reset(tps, strategy):
            self.calls.append(("beginning", list(tps)))
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

        return SimpleNamespace(request_offset_reset=request_offset_reset)


async def test_positions_unreadable_are_waited_for_then_sought(monkeypatch):
    answers = [ConnectionRefusedError(), OSError(), {TP0: 42}]

    async def load(pool, assigned):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    pauses: list[float] = []

    seen: list[str | None] = []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)
        seen.append(metrics.positions_failing and metrics.positions_failing.error)

    monkeypatch.setattr(consumer.positions, "load", load)
    monkeypatch.setattr(consumer.asyncio, "sleep", pause)
    kafka = Paused()
    metrics = Metrics("formation")
    listener = consumer.StoredPositions(SimpleNamespace(pool=object(), metrics=metrics))
    listener.subscriber = SimpleNamespace(consumer=kafka)

    await listener.on_partitions_assigned({TP1, TP0})
    await listener.resuming

    assert pauses == [0.5, 1.0], "retried with a doubling delay"
    assert seen == ["ConnectionRefusedError", "OSError"], "/health says why meanwhile"
    assert metrics.positions_failing is None, "and nothing once they are read"
    assert kafka.calls == [
        ("pause", {TP0, TP1}),  # before anything awaits: no poll from Kafka's committed offsets meanwhile
        ("beginning", [TP0, TP1]),  # nor a look-up of them
        ("seek", TP0, 42),
        ("seek", TP1, 0),  # none stored: from offset 0, so a log that starts later is said to have lost records
        ("resume", {TP0, TP1}),
    ], "the stored position, else offset 0; never the committed offset"
    metrics.watch(lambda: SimpleNamespace(assignment=lambda: {TP0, TP1}, highwater=lambda tp: 50))
    assert metrics.lag() == {("t", 0): 8, ("t", 1): 50}, "the lag counts from where the partitions resume"


async def test_partitions_stay_paused_when_they_could_not_be_sought(monkeypatch):
    """Resumed unsought, they would be read from Kafka's committed offsets: left paused, the
    error logged by aiokafka, until the next assignment."""

    async def load(pool, assigned):
        return {TP0: 42}

    monkeypatch.setattr(consumer.positions, "load", load)
    kafka = Paused()

    def seek(tp, offset):
        raise IllegalStateError(f"{tp} is not assigned any more")

    kafka.seek = seek
    from helpers import Said

    said = Said()
    monkeypatch.setattr(consumer, "log", said)
    listener = consumer.StoredPositions(SimpleNamespace(pool=object(), metrics=Metrics("formation")))
    listener.subscriber = SimpleNamespace(consumer=kafka)
    await listener.on_partitions_assigned({TP0})
    await listener.resuming
    assert kafka.calls == [("pause", {TP0}), ("beginning", [TP0])]
    assert [line["level"] for line in said.named("positions.resume_failed")] == ["exception"]


async def test_a_compacted_topic_without_a_stored_position_is_read_from_its_start(monkeypatch):
    """A fresh schema reads a partner's topic from offset 0, so that records deleted before it are
    told; a compacted one from its start, untold (records deleted from it by hand before any
    schema read them are its producer's rebuild's to publish again: README)."""
    from contracts.internal import PROFILS

    async def load(pool, assigned):
        return {}

    monkeypatch.setattr(consumer.positions, "load", load)
    kafka, compacted = Paused(), TopicPartition("prefixe." + PROFILS, 0)
    listener = consumer.StoredPositions(SimpleNamespace(pool=object(), metrics=Metrics("ressources")))
    listener.subscriber = SimpleNamespace(consumer=kafka)
    await listener.on_partitions_assigned({TP0, compacted})
    await listener.resuming
    assert [call for call in kafka.calls if call[0] == "seek"] == [("seek", TP0, 0)]


class _Bounded(Paused):
    """A consumer whose partitions hold offsets 10 to 20, TP0 and TP1 assigned."""

    _subscription = SimpleNamespace(is_assigned=lambda tp: tp in (TP0, TP1))

    async def beginning_offsets(self, tps):
        return {tp: 10 for tp in tps}

    async def end_offsets(self, tps):
        return {tp: 20 for tp in tps}


async def test_a_position_out_of_range_moves_on_only_once_it_is_recorded(monkeypatch):
    """PostgreSQL away when the fetch meets it: the partition is not sought past the records gone
    (the next fetch meets the same position, recorded then); recorded, it reads on from the log's
    start, the records lost counted."""
    recorded: list[list] = []
    answers: list[Exception | None] = [ConnectionRefusedError(), None]

    class Pool:
        @contextlib.asynccontextmanager
        async def acquire(self):
            if answer := answers.pop(0):
                raise answer
            yield SimpleNamespace(transaction=contextlib.nullcontext)

    async def out_of_range(conn, found):
        recorded.append(found)

    async def pause(seconds: float) -> None:
        pass

    monkeypatch.setattr(consumer.positions, "out_of_range", out_of_range)
    monkeypatch.setattr(consumer.asyncio, "sleep", pause)
    metrics = Metrics("formation")
    met = consumer.HorsLimites(SimpleNamespace(pool=Pool(), metrics=metrics))
    kafka = _Bounded()

    await met.met(kafka, {TP0: 4, TP1: 12})
    assert kafka.calls == [] and recorded == []
    await met.met(kafka, {TP0: 4, TP1: 12})
    assert recorded == [[consumer.Outside(TP0, 4, 10, 20)]], "TP1's within the log (written since): not out of range"
    assert kafka.calls == [("seek", TP0, 10), ("seek", TP1, 12)]
    assert 'feo_records_lost_total{service="formation",topic="t"} 6.0' in metrics.render().decode()


class _Stamped(Paused):
    """A consumer asked which record was appended at an instant: `at` answers, or raises."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    async def offsets_for_times(self, timestamps):
        if isinstance(self.at, Exception):
            raise self.at
        return {tp: self.at for tp in timestamps}

    async def beginning_offsets(self, tps):
        return {tp: 0 for tp in tps}

    async def end_offsets(self, tps):
        return {tp: 50 for tp in tps}


@pytest.mark.parametrize(
    ("at", "sought", "recorded"),
    [
        (OffsetAndTimestamp(41, 1_000), 42, []),  # its record: the same log
        (OffsetAndTimestamp(40, 1_000), 42, []),  # one before it appended in the same millisecond
        (OffsetAndTimestamp(0, 2_000), 0, [[consumer.Outside(TP0, 42, 0, 50, elsewhere=True)]]),  # a new log
        (None, 0, [[consumer.Outside(TP0, 42, 0, 50, elsewhere=True)]]),  # nothing appended since then
        (KafkaConnectionError(), 42, []),  # Kafka silent: as before the check, said
    ],
)
async def test_a_position_in_another_log_is_read_from_its_start(monkeypatch, at, sought, recorded):
    """A topic made again while the service was away, its new log already past the stored position:
    no record of it was appended when the position's was (audit helper-191 #1)."""
    kafka, written, said = await assigned(monkeypatch, at)
    assert [call for call in kafka.calls if call[0] == "seek"] == [("seek", TP0, sought)]
    assert written == recorded
    told = said.named("kafka.position_out_of_range")
    assert [(line["level"], line.get("another_log")) for line in told] == [("error", True)] * len(recorded)
    assert len(said.named("positions.log_unchecked")) == isinstance(at, Exception)


@pytest.mark.parametrize(
    ("stamp", "sought"),
    [
        (1_000, 42),  # the record before the position has its instant: this log, stamped out of order
        (2_000, 0),  # another instant: another log
        (None, 0),  # that record gone, the first after it read: not this log's record
        ("unread", 42),  # not read in time: not judged, the stored position kept (said)
    ],
)
async def test_a_suspect_position_is_judged_by_the_record_before_it(monkeypatch, stamp, sought):
    """A leader whose clock is behind the former one's stamped the record before the position
    earlier than one before it, which Kafka names as appended at or after its instant (audit
    helper-194 #5): without reading that record, the partition, kept for ever, was read again from
    its start; and so it was when Kafka was too slow to give it (audit s66 #3)."""
    asked: list[dict] = []

    async def stamps(offsets):
        asked.append(dict(offsets))
        return {} if stamp == "unread" else {tp: stamp for tp in offsets}

    kafka, written, said = await assigned(monkeypatch, OffsetAndTimestamp(40, 1_003), stamps)
    assert asked == [{TP0: 41}] * (2 if stamp == "unread" else 1), "unread: asked once more, the patience spent"
    assert [call for call in kafka.calls if call[0] == "seek"] == [("seek", TP0, sought)]
    assert len(written) == (sought == 0)
    unchecked = said.named("positions.log_unchecked")
    assert [line["positions"] for line in unchecked] == (["t[0] at 42"] if stamp == "unread" else [])


@pytest.mark.parametrize(
    ("stamp", "sought", "recorded"),
    [(2_000, 0, 1), (1_000, 42, 0)],  # then read: another log; then read: this log
)
async def test_a_suspect_position_is_judged_once_kafka_gives_the_record_before_it(monkeypatch, stamp, sought, recorded):
    """Kafka too slow to give the record before a suspect position: the partition was read from
    its stored position at once, and its new records' instants stored over the suspect one, so a
    topic made again was never found after (review s66 #3). The check is asked again, the
    partition paused, and decided on Kafka's answer."""
    asked: list[dict] = []

    async def stamps(offsets):
        asked.append(dict(offsets))
        return {} if len(asked) == 1 else {tp: stamp for tp in offsets}

    kafka, written, said = await assigned(monkeypatch, OffsetAndTimestamp(40, 1_003), stamps, patience=60)
    assert asked == [{TP0: 41}, {TP0: 41}]
    assert [call[0] for call in kafka.calls] == ["pause", "beginning", "seek", "resume"], "paused until decided"
    assert [call for call in kafka.calls if call[0] == "seek"] == [("seek", TP0, sought)]
    assert len(written) == recorded
    assert [line["detail"] for line in said.named("positions.log_check_retried")] == [
        "Kafka did not give in time the record before the position of t[0] at 42, which says whether the topic "
        "was made again since"
    ]
    assert not said.named("positions.log_unchecked")


@pytest.mark.parametrize(
    ("at", "stamp", "unchecked"),
    [
        (KafkaConnectionError(), None, "did not say within 10 s whether the positions of 1 partitions"),
        (OffsetAndTimestamp(40, 1_003), None, "did not give in time the record before the position of t[0] at 42"),
        (OffsetAndTimestamp(40, 1_003), 1_000, None),  # read: this log
        (OffsetAndTimestamp(0, 2_000), 2_000, None),  # read: another log, said as such
    ],
)
async def test_a_tool_decides_nothing_on_a_position_kafka_did_not_let_it_check(at, stamp, unchecked):
    """A restore checks a backup's positions before it replaces the schemas, as a service's start
    does, which goes on unchecked when Kafka is silent (its fetches say more later) and takes the
    index's word for a suspect whose record it could not read: the restore replaced the schemas
    without the check, or refused the backup as made for another log (review s63 M3)."""

    async def stamps(offsets):
        return {} if stamp is None else {tp: stamp for tp in offsets}

    checking = consumer.in_another_log(_Stamped(at), {TP0: 42}, {TP0: 1_000}, stamps, strict=True)
    if unchecked is None:
        found = await checking
        assert [o.elsewhere for o in found] == ([True] if stamp == 2_000 else [])
        return
    with pytest.raises(consumer.LogUnchecked, match=re.escape(unchecked)):
        await checking


async def assigned(monkeypatch, at, stamps=None, patience=0.0):
    """TP0 assigned, its position 42 stored with the instant 1,000 of the record before it, Kafka
    answering `at` when asked for that instant, the check asked again for `patience` seconds:
    (the consumer, the out-of-range rows written, the log)."""
    from helpers import Said

    said = Said()
    monkeypatch.setattr(consumer, "log", said)
    monkeypatch.setattr(consumer, "LOG_CHECK_PATIENCE_SECONDS", patience)
    written: list[list] = []

    async def load(pool, assigned):
        return {TP0: 42}

    async def appended(pool, assigned):
        return {TP0: 1_000}

    async def out_of_range(conn, found):
        written.append(found)

    class Pool:
        @contextlib.asynccontextmanager
        async def acquire(self):
            yield SimpleNamespace(transaction=contextlib.nullcontext)

    monkeypatch.setattr(consumer.positions, "load", load)
    monkeypatch.setattr(consumer.positions, "appended", appended)
    monkeypatch.setattr(consumer.positions, "out_of_range", out_of_range)
    kafka, metrics = _Stamped(at), Metrics("formation")
    listener = consumer.StoredPositions(SimpleNamespace(pool=Pool(), metrics=metrics), stamps)
    listener.subscriber = SimpleNamespace(consumer=kafka)
    await listener.on_partitions_assigned({TP0})
    await listener.resuming
    return kafka, written, said


async def test_a_rebuild_or_restore_past_records_deleted_from_a_compacted_topic_says_so(monkeypatch):
    """A restored schema had yet to read records since deleted from a compacted topic (its policy
    set by hand): read from its start, as a rebuild does, but said, with the order of the
    rebuilds that publish them again (review s64 M2: the live path said it, the tools did not)."""
    from contracts.internal import PROFILS
    from deploy import rattrapage
    from helpers import Said

    compacted = TopicPartition("prefixe." + PROFILS, 0)

    class Bounds(Paused):
        async def beginning_offsets(self, tps):
            return {tp: 10 if tp == compacted else 0 for tp in tps}

        async def end_offsets(self, tps):
            return {tp: 20 for tp in tps}

    said = Said()
    monkeypatch.setattr(rattrapage, "log", said)
    stored = {compacted: 4, TP0: 3}
    where = await rattrapage.require_log(Bounds(), "ressources", [compacted, TP0], stored, {}, None, strict=False)
    assert where == {compacted: 10, TP0: 3}
    [line] = said.named("rattrapage.derives_perdus")
    assert (line["level"], line["records_lost"], line["position"]) == ("warning", 6, 4)
    assert await rattrapage.require_log(Bounds(), "ressources", [compacted], {}, {}, None, strict=False) == {
        compacted: 10
    }
    assert len(said.named("rattrapage.derives_perdus")) == 1, "a fresh schema's: untold"


async def test_kafka_silent_is_asked_again_while_patient_then_the_partitions_are_read_unchecked(monkeypatch):
    """The first question (which record was appended at the instant) unanswered: asked again, the
    partitions paused, until the patience is spent from that first silence, then read unchecked."""
    kafka, written, said = await assigned(monkeypatch, KafkaConnectionError(), patience=1.2)
    assert len(said.named("positions.log_check_retried")) == 2, "at 0 and 0.5 s, within 1.2 s of the first"
    assert len(said.named("positions.log_unchecked")) == 1
    assert [call[0] for call in kafka.calls] == ["pause", "beginning", "seek", "resume"] and written == []


async def test_the_assignment_s_callback_returns_before_the_positions_are_read_and_a_revocation_stops_them(
    monkeypatch,
):
    """aiokafka sends no heartbeat while the callback runs: one longer than the group's session
    timeout (PostgreSQL away, Kafka slow) had the member put out of its group (review s67 #1).
    The partitions stay paused until read; taken away meanwhile, they are never sought."""
    release = asyncio.Event()

    async def load(pool, assigned):
        await release.wait()
        return {TP0: 42}

    monkeypatch.setattr(consumer.positions, "load", load)
    kafka = Paused()
    listener = consumer.StoredPositions(SimpleNamespace(pool=object(), metrics=Metrics("formation")))
    listener.subscriber = SimpleNamespace(consumer=kafka)
    async with asyncio.timeout(1):
        await listener.on_partitions_assigned({TP0})
    assert kafka.calls == [("pause", {TP0}), ("beginning", [TP0])]
    reading = listener.resuming
    await listener.on_partitions_revoked({TP0})
    assert reading is not None and reading.cancelled() and listener.resuming is None

    await listener.on_partitions_assigned({TP0})
    release.set()
    await listener.resuming
    assert kafka.calls[-2:] == [("seek", TP0, 42), ("resume", {TP0})]
