"""The consumer around aiokafka, with scripted consumers. Its poll (consumer._top_up): records
aiokafka had buffered are topped up with what the next fetch brings, in each partition's order;
records it waited for are not; a top-up that fails hands over the records taken all the same.
Its offset commits (consumer.OffsetCommits): one in flight, the next with the latest offsets of
what was handled meanwhile, and the consumer stops only once they are done."""

import asyncio
import types

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaConnectionError
from faststream.kafka import KafkaBroker

from services.common.messaging import consumer

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


class Scripted:
    """Answers each getmany with the next of `answers` (a dict, or an exception to raise),
    after `delays` seconds when given; records the calls."""

    def __init__(self, *answers, delays=()):
        self.answers, self.delays, self.calls = list(answers), list(delays), []

    async def getmany(self, timeout_ms, max_records):
        self.calls.append((timeout_ms, max_records))
        if self.delays and (delay := self.delays.pop(0)):
            await asyncio.sleep(delay)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture(autouse=True)
def at_once(monkeypatch):
    """A poll answered without a pause counts as buffered even on a loaded machine."""
    monkeypatch.setattr(consumer, "_AT_ONCE", 0.01)


def poll(wait_ms: int = 10, max_records: int = 500):
    subscriber = KafkaBroker("localhost:9092").subscriber("t", batch=True, batch_timeout_ms=50, max_records=max_records)
    consumer._top_up(subscriber, wait_ms)
    return subscriber.get_msg


async def test_buffered_records_are_topped_up_in_each_partition_order():
    kafka = Scripted({TP0: ["a0", "a1"], TP1: ["b0"]}, {TP0: ["a2"], TP1: ["b1", "b2"]})
    got = await poll()(kafka)
    assert kafka.calls == [(50, 500), (10, 497)], "the top-up asks for what is left of the batch, for wait_ms"
    assert [r for r in got if r.startswith("a")] == ["a0", "a1", "a2"]
    assert [r for r in got if r.startswith("b")] == ["b0", "b1", "b2"]


async def test_records_waited_for_are_handed_over_without_a_top_up():
    kafka = Scripted({TP0: ["a0"]}, delays=[0.05])
    assert await poll()(kafka) == ("a0",)
    assert len(kafka.calls) == 1


@pytest.mark.parametrize("wait_ms, max_records", [(0, 500), (10, 2)])
async def test_no_top_up_when_disabled_or_the_batch_is_full(wait_ms, max_records):
    kafka = Scripted({TP0: ["a0", "a1"]})
    assert await poll(wait_ms, max_records)(kafka) == ("a0", "a1")
    assert len(kafka.calls) == 1


async def test_nothing_came_is_an_empty_batch_at_once():
    assert await poll()(Scripted({})) == ()


async def test_a_failed_top_up_hands_over_the_records_taken():
    kafka = Scripted({TP0: ["a0"]}, KafkaConnectionError())
    assert await poll()(kafka) == ("a0",), "the consumer's position is past them: not handing them over skips them"


class Committing:
    """A consumer whose commits wait for `release`; records its commits and its stop, in order."""

    def __init__(self):
        self.calls, self.release, self.committing = [], asyncio.Event(), asyncio.Event()

    async def commit(self, offsets):
        self.calls.append(("commit", dict(offsets)))
        self.committing.set()
        await self.release.wait()

    async def stop(self):
        self.calls.append(("stop",))


def record(partition: int, offset: int) -> ConsumerRecord:
    return ConsumerRecord("t", partition, offset, 0, 0, b"k", b"v", None, 1, 1, [])


async def test_offsets_of_batches_handled_meanwhile_go_in_the_next_commit_and_stop_waits_for_them():
    kafka, commits = Committing(), consumer.OffsetCommits()
    commits.follow(kafka, [record(0, 4), record(0, 5), record(1, 9)])
    await asyncio.wait_for(kafka.committing.wait(), 5)
    commits.follow(kafka, [record(0, 6)])  # handled while the first commit is in flight
    commits.follow(kafka, [record(0, 7), record(1, 10)])
    stopping = asyncio.create_task(kafka.stop())
    done, _ = await asyncio.wait([stopping], timeout=0.2)
    assert not done and ("stop",) not in kafka.calls, "the consumer does not stop while a commit is in flight"
    kafka.release.set()
    await asyncio.wait_for(stopping, 5)
    assert kafka.calls == [
        ("commit", {TP0: 6, TP1: 10}),
        ("commit", {TP0: 8, TP1: 11}),
        ("stop",),
    ]


def _with_headers(headers) -> ConsumerRecord:
    return ConsumerRecord("t", 0, 7, 0, 0, b"k", b"{}", None, 2, 2, headers)


async def test_faststream_sees_only_text_headers_and_the_handler_the_records_untouched():
    """FastStream's batch parser decodes every header value as text: a null or binary one would
    fail the whole batch. It gets the records with text headers as they are (no copy: a copy per
    record cost a tenth of the CPU at full speed), the others without their other headers; the
    handler gets every record untouched, for the DLQ copy."""
    text = _with_headers([("content-type", b"application/cloudevents+json"), ("traceparent", b"00-ab")])
    none = _with_headers([("a", None), ("b", b"ok")])
    binary = _with_headers([("a", b"\xff\xfe"), ("b", b"ok")])
    seen = []

    async def parser(records):
        seen.extend(records)
        return types.SimpleNamespace(raw_message=None)

    message = await consumer._parse_batch((text, none, binary), parser)
    assert message.raw_message == (text, none, binary)
    assert seen[0] is text
    assert [r.headers for r in seen[1:]] == [[("b", b"ok")], [("b", b"ok")]]
    assert (none.headers, binary.headers) == ([("a", None), ("b", b"ok")], [("a", b"\xff\xfe"), ("b", b"ok")])
