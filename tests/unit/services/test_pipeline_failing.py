"""Failures in a row (Metrics.failing: /health's batches_failing, feo_batches_failing_seconds)
end once each of their partitions committed, whatever way it committed (review s71 2 #2, #3)."""

from contextlib import asynccontextmanager
from types import SimpleNamespace

import asyncpg
import pytest
from aiokafka.structs import ConsumerRecord

from services.common import pipeline
from services.common.runtime.metrics import Metrics


def record(partition: int, offset: int) -> ConsumerRecord:
    return ConsumerRecord("t", partition, offset, 0, 0, b"k", b"{}", None, 1, 2, [])


@pytest.fixture
def judge(monkeypatch):
    """A pipeline whose transactions raise what `judge.raising` holds, one after the other; its
    database's writes of a record refused alone (dead letter, position) done."""
    made = pipeline.Pipeline.__new__(pipeline.Pipeline)  # no broker nor database
    made.service, made.metrics, made._tracebacks = "equipement", Metrics("equipement"), pipeline.Tracebacks()
    made._dead_letters_for, made._relay = {"t"}, SimpleNamespace(wake=lambda: None)
    made._parse_all = lambda records, ahead: ([], [])
    made.raising = []

    async def transaction(*args, **kwargs):
        raise made.raising.pop(0)

    @asynccontextmanager
    async def exclusive():
        yield None

    async def reject(conn, rejections):
        return SimpleNamespace(awaiting=False, say=lambda: None)

    async def nothing(*args):
        return None

    made._transaction, made._exclusive = transaction, exclusive
    monkeypatch.setattr(pipeline.dlq, "reject", reject)
    monkeypatch.setattr(pipeline.positions, "advance", nothing)
    monkeypatch.setattr(pipeline.asyncio, "sleep", nothing)
    return made


async def test_a_record_refused_alone_after_its_batch_failed_ends_the_failures(judge):
    """Dead-lettered and its position advanced by the isolation, its partition stayed failing
    for good: /health named an offset already dead-lettered."""
    judge.raising = [asyncpg.exceptions.ConnectionDoesNotExistError("gone"), asyncpg.exceptions.DataError("NUL")]
    with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError):
        await judge.handle([record(4, 10)])
    assert judge.metrics.failing is not None
    await judge.handle([record(4, 10)])  # taken again: PostgreSQL refuses the record alone
    assert judge.metrics.failing is None


async def test_postgresql_away_is_said_at_each_outage_while_a_partition_stays_stuck(judge, monkeypatch):
    """Said once per run of failures: a second outage while a poison record held its partition
    was said at DEBUG only."""
    warned: list[str] = []
    quiet = lambda *args, **kwargs: None  # noqa: E731
    said = SimpleNamespace(
        debug=quiet, info=quiet, exception=quiet, warning=lambda _, **kw: warned.append(kw["detail"])
    )
    monkeypatch.setattr(pipeline, "log", said)

    async def fails(records: list[ConsumerRecord], exc: Exception) -> None:
        judge.raising = [exc]
        with pytest.raises(type(exc)):
            await judge.handle(records)

    away = asyncpg.exceptions.ConnectionDoesNotExistError
    await fails([record(1, 5)], RuntimeError("a bug"))  # partition 1 stuck at a poison record
    await fails([record(1, 5), record(2, 0)], away("outage 1"))
    judge.metrics.batch(1, 0, 0, {}, 0.01, [record(2, 0)])  # PostgreSQL back: partition 2 commits
    await fails([record(1, 5)], RuntimeError("a bug"))
    await fails([record(2, 1)], away("outage 2"))
    assert judge.metrics.failing is not None and judge.metrics.failing.partitions == {("t", 1), ("t", 2)}
    assert warned == ["outage 1", "outage 2"]


async def test_a_batch_a_record_fails_is_split_by_partition_and_the_others_commit(judge):
    """A record the code fails on held every partition it shared batches with: each batch
    failed whole, taken again with it (review s71 2: an integration test met it). Handled
    apart, the others commit; the records to take again are its partition's."""
    handled: list[list[tuple[int, int]]] = []
    judge._parse_all = lambda records, ahead: ([(None, r) for r in records], [])

    async def transaction(parsed, rejected, span, started):
        records = [r for _, r in parsed]
        if any(r.partition == 1 for r in records):
            raise RuntimeError("a bug")
        handled.append([(r.partition, r.offset) for r in records])
        judge.metrics.batch(len(records), 0, 0, {}, 0.01, records)
        return 0

    judge._transaction = transaction
    batch = [record(1, 5), record(2, 0), record(1, 6), record(3, 4), record(2, 1)]
    with pytest.raises(pipeline.PartitionsFailed) as failed:
        await judge.handle(batch)
    assert [(r.partition, r.offset) for r in failed.value.records] == [(1, 5), (1, 6)]
    assert isinstance(failed.value.__cause__, RuntimeError)
    assert handled == [[(2, 0), (2, 1)], [(3, 4)]]
    assert judge.metrics.failing is not None and judge.metrics.failing.partitions == {("t", 1)}

    handled.clear()
    await judge.handle([record(2, 2), record(3, 5)])  # a batch that fails nowhere: whole
    assert handled == [[(2, 2), (3, 5)]]


async def test_a_record_postgresql_refuses_beside_one_the_code_fails_on_holds_no_other_partition(judge, monkeypatch):
    """The refusal met first by the whole batch, its isolation went record by record over every
    partition and raised at the record the code fails on: the whole batch taken again, on every
    try, the refused record never dead-lettered (review s71 3 #1)."""
    committed: list[tuple[int, int]] = []
    dead_lettered: list[tuple[int, int]] = []
    judge._parse_all = lambda records, ahead: ([(None, r) for r in records], [])

    async def transaction(parsed, rejected, span, started):
        records = [r for _, r in parsed]
        if any((r.partition, r.offset) == (2, 0) for r in records):
            raise asyncpg.exceptions.DataError("a NUL")
        if any(r.partition == 1 for r in records):
            raise RuntimeError("a bug")
        committed.extend((r.partition, r.offset) for r in records)
        return 0

    async def reject(conn, rejections):
        dead_lettered.extend((r.record.partition, r.record.offset) for r in rejections)
        return SimpleNamespace(awaiting=False, say=lambda: None)

    judge._transaction = transaction
    monkeypatch.setattr(pipeline.dlq, "reject", reject)
    with pytest.raises(pipeline.PartitionsFailed) as failed:
        await judge.handle([record(1, 5), record(2, 0), record(2, 1), record(3, 7)])
    assert {r.partition for r in failed.value.records} == {1}
    assert committed == [(2, 1), (3, 7)] and dead_lettered == [(2, 0)]


async def test_a_split_pauses_once_whatever_its_parts(judge, monkeypatch):
    """Each part that failed paused a second: a failure every record meets cost a second per
    partition each time the batch was taken again (review s71 3 #3)."""
    slept: list[float] = []

    async def sleep(seconds):
        slept.append(seconds)

    monkeypatch.setattr(pipeline.asyncio, "sleep", sleep)
    judge._parse_all = lambda records, ahead: ([(None, r) for r in records], [])

    async def transaction(*args):
        raise RuntimeError("everywhere")

    judge._transaction = transaction
    with pytest.raises(pipeline.PartitionsFailed) as failed:
        await judge.handle([record(p, 0) for p in range(12)])
    assert slept == [1] and len(failed.value.records) == 12 and failed.value.committed == []


def failing_on_partition(judge, partition: int):
    """The judge's transactions: those holding a record of `partition` fail, the others commit."""
    judge._parse_all = lambda records, ahead: ([(None, r) for r in records], [])

    async def transaction(parsed, rejected, span, started):
        if any(r.partition == partition for _, r in parsed):
            raise RuntimeError("a bug")
        return 0

    return transaction


def passing_once(judge, error: Exception) -> list[list[tuple[int, int]]]:
    """The judge's transactions: the first one raises `error`, the others commit; what they committed."""
    committed: list[list[tuple[int, int]]] = []
    judge._parse_all = lambda records, ahead: ([(None, r) for r in records], [])
    raising = [error]

    async def transaction(parsed, rejected, span, started):
        if raising:
            raise raising.pop()
        committed.append([(r.partition, r.offset) for _, r in parsed])
        return 0

    judge._transaction = transaction
    return committed


async def test_the_parts_of_a_split_that_commit_are_not_shown_under_a_failed_span(judge, monkeypatch):
    """A split's parts ran in the batch's span marked failed: those that committed showed as
    children of a failed span (review s71 3 #7). Its failure is an event of it; the parts stay its
    children, the lines said of the split in its trace (review s72 #1)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider, exporter = TracerProvider(), InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(pipeline.trace, "get_tracer", provider.get_tracer)
    monkeypatch.setattr(pipeline, "tracer_is_recording", lambda: True)
    judge.settings = SimpleNamespace(topic=lambda service: service)
    within: list[int] = []  # the span batch.split is said in (its trace id: logs._trace_ids)

    def split_said(event, **kw):
        within.append(trace.get_current_span().get_span_context().span_id)

    monkeypatch.setattr(pipeline.log, "warning", split_said)
    committed = passing_once(judge, RuntimeError("records of two partitions together"))
    await judge.handle([record(1, 5), record(2, 0)])
    assert committed == [[(1, 5)], [(2, 0)]]
    *parts, batch = exporter.get_finished_spans()  # a span ends after those within it
    assert batch.attributes["messaging.batch.message_count"] == 2
    assert [e.attributes["exception.type"] for e in batch.events] == ["RuntimeError"]
    assert [s.status.status_code for s in (batch, *parts)] == [trace.StatusCode.UNSET] * 3
    assert [p.parent.span_id for p in parts if p.parent] == [batch.context.span_id] * 2
    assert within == [batch.context.span_id]

    exporter.clear()  # a part that fails again: the batch failed, its span says so (review s72 2 #3)
    judge._transaction = failing_on_partition(judge, 1)
    with pytest.raises(pipeline.PartitionsFailed):
        await judge.handle([record(1, 6), record(2, 1)])
    *parts, batch = exporter.get_finished_spans()
    assert batch.status.status_code == trace.StatusCode.ERROR and batch.attributes["error.type"] == "PartitionsFailed"
    assert [p.status.status_code for p in parts] == [trace.StatusCode.ERROR, trace.StatusCode.UNSET]


async def test_a_failure_a_split_got_round_is_said_with_its_traceback(judge, monkeypatch):
    """Each part then committed: the batch's failure (records of several partitions failing
    together, or one that passed) was said at INFO by its type alone, never its traceback (review
    s71 3 #4). Said once a minute per type, as batch.failed; a refusal's part says its own."""
    said: list[tuple[str, str, bool]] = []

    def saying(level):
        return lambda event, **kw: said.append((level, event, "exc_info" in kw))

    monkeypatch.setattr(pipeline, "log", SimpleNamespace(**{lv: saying(lv) for lv in ("debug", "info", "warning")}))
    passing_once(judge, RuntimeError("records of two partitions together"))
    await judge.handle([record(1, 5), record(2, 0)])
    passing_once(judge, RuntimeError("again"))
    await judge.handle([record(1, 6), record(2, 1)])
    passing_once(judge, asyncpg.exceptions.DataError("a NUL, which a part refused alone"))
    await judge.handle([record(1, 7), record(2, 2)])
    splits = [s for s in said if s[1] == "batch.split"]
    assert splits == [("warning", "batch.split", True), ("debug", "batch.split", False), ("info", "batch.split", False)]


async def test_a_split_leaves_a_partition_revoked_meanwhile_to_its_next_owner(judge):
    """Its part was handled still, a second or more after the batch came, by a replica it was no
    longer assigned to (review s71 3 #8); nor are its Kafka offsets to be committed past it."""
    revoked: set[int] = set()
    handled = passing_once(judge, RuntimeError("records of three partitions together"))

    def assigned(topic: str, partition: int) -> bool:
        revoked.add(3)  # the rebalance comes while the first part is handled
        return partition not in revoked

    with pytest.raises(pipeline.PartitionsFailed) as failed:
        await judge.handle([record(1, 5), record(2, 0), record(3, 4)], None, assigned)
    assert handled == [[(1, 5)], [(2, 0)]]
    assert failed.value.records == [] and [(r.partition, r.offset) for r in failed.value.committed] == [(1, 5), (2, 0)]


async def test_a_split_whose_partitions_were_all_revoked_is_no_warning(judge, monkeypatch):
    """No part ran: nothing says the failure was one records of several partitions meet only
    together, nor that every partition committed (review s72 #5)."""
    said: list[str] = []

    def saying(level: str):
        return lambda event, **kw: said.append(level)

    monkeypatch.setattr(pipeline, "log", SimpleNamespace(**{lv: saying(lv) for lv in ("debug", "info", "warning")}))
    passing_once(judge, RuntimeError("records of two partitions together"))
    with pytest.raises(pipeline.PartitionsFailed) as failed:
        await judge.handle([record(1, 5), record(2, 0)], None, lambda topic, partition: False)
    assert said == ["info"] and failed.value.records == failed.value.committed == []


def test_the_consumer_tells_a_split_the_partitions_still_assigned_to_it():
    from aiokafka import TopicPartition

    from services.common.messaging.consumer import _assigned

    consumer = SimpleNamespace(assignment=lambda: {TopicPartition("t", 1)})
    assert _assigned(SimpleNamespace(consumer=consumer), "t", 1)
    assert not _assigned(SimpleNamespace(consumer=consumer), "t", 2)
    assert not _assigned(SimpleNamespace(consumer=consumer), "u", 1)
    assert _assigned(SimpleNamespace(consumer=None), "t", 2)  # none yet: nothing is skipped
