"""The consumer around aiokafka, with scripted consumers. Its poll (consumer.Poll): records
aiokafka had buffered are topped up with what the next fetch brings, in each partition's order;
records it waited for are not; a top-up that fails hands over the records taken all the same.
Once a batch is handed over, the next is taken and parsed ahead; given back (sought) when the
batch fails, dropped when partitions are assigned or the consumer is another; a batch the handler
never received (FastStream failed it before) given back at the next poll.
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


class Clock:
    """The poll's clock (consumer.time), moved only by Scripted's waits: whether a poll answered
    at once or waited is what the script says, however loaded the machine is."""

    now = 0.0

    @classmethod
    def monotonic(cls) -> float:
        return cls.now


class Scripted:
    """Answers each getmany with the next of `answers` (a dict, or an exception to raise),
    after `delays` seconds when given; with nothing left, with nothing after `timeout_ms`, as
    aiokafka does. Records the calls and the seeks. Its waits move the poll's Clock."""

    _subscription = types.SimpleNamespace(subscription=None)  # aiokafka's, read by a poll meeting a damaged batch

    def __init__(self, *answers, delays=()):
        self.answers, self.delays, self.calls, self.seeks = list(answers), list(delays), [], []

    async def getmany(self, timeout_ms, max_records):
        self.calls.append((timeout_ms, max_records))
        if not self.answers:
            await asyncio.sleep(timeout_ms / 1000)
            Clock.now += timeout_ms / 1000
            return {}
        if self.delays and (delay := self.delays.pop(0)):
            await asyncio.sleep(delay)
            Clock.now += delay
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def seek(self, tp, offset):
        self.seeks.append((tp, offset))

    async def stop(self):
        self.stopped = True


class Parser:
    """Pipeline.parse_ahead's stand-in: each record's value, by id; `release` holds it."""

    def __init__(self):
        self.release, self.parsing = asyncio.Event(), asyncio.Event()
        self.release.set()

    async def parse_ahead(self, records):
        self.parsing.set()
        await self.release.wait()
        return {id(r): (r, r.value) for r in records}


@pytest.fixture(autouse=True)
def scripted_clock(monkeypatch):
    """A poll answered without a scripted pause counts as buffered even on a loaded machine."""
    monkeypatch.setattr(consumer, "time", Clock)


def record(partition: int, offset: int, value: bytes = b"v") -> ConsumerRecord:
    return ConsumerRecord("t", partition, offset, 0, 0, b"k", value, None, 1, 1, [])


A0, A1, A2, B0, B1, B2 = record(0, 0), record(0, 1), record(0, 2), record(1, 0), record(1, 1), record(1, 2)


def poll(wait_ms: int = 10, max_records: int = 500, ahead=None) -> consumer.Poll:
    subscriber = KafkaBroker("localhost:9092").subscriber("t", batch=True, batch_timeout_ms=50, max_records=max_records)
    return consumer.Poll(subscriber, wait_ms, ahead)


async def test_buffered_records_are_topped_up_in_each_partition_order():
    kafka = Scripted({TP0: [A0, A1], TP1: [B0]}, {TP0: [A2], TP1: [B1, B2]})
    got = await poll().get_msg(kafka)
    assert kafka.calls[:2] == [(50, 500), (10, 497)], "the top-up asks for what is left of the batch, for wait_ms"
    assert kafka.calls[2:] == [(10, 494)], "buffered too: once more, for what came behind them"
    assert got == (A0, A1, A2, B0, B1, B2)


async def test_a_top_up_reading_a_partition_again_gives_each_record_once_in_offset_order():
    """A rebalance during the top-up gave TP0 back, sought to its stored position: aiokafka
    gives again records the batch holds already."""
    kafka = Scripted({TP0: [A0, A1], TP1: [B0]}, {TP0: [record(0, 0), record(0, 1), A2], TP1: [B1]})
    got = await poll().get_msg(kafka)
    assert [(r.partition, r.offset) for r in got] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]


async def test_records_waited_for_are_handed_over_without_a_top_up():
    kafka = Scripted({TP0: [A0]}, delays=[0.05])
    assert await poll().get_msg(kafka) == (A0,)
    assert len(kafka.calls) == 1


@pytest.mark.parametrize("wait_ms, max_records", [(0, 500), (10, 2)])
async def test_no_top_up_when_disabled_or_the_batch_is_full(wait_ms, max_records):
    kafka = Scripted({TP0: [A0, A1]})
    assert await poll(wait_ms, max_records).get_msg(kafka) == (A0, A1)
    assert len(kafka.calls) == 1


async def test_nothing_came_is_an_empty_batch_at_once():
    assert await poll().get_msg(Scripted({})) == ()


async def test_a_failed_top_up_hands_over_the_records_taken():
    kafka = Scripted({TP0: [A0]}, KafkaConnectionError())
    assert await poll().get_msg(kafka) == (A0,), (
        "the consumer's position is past them: not handing them over skips them"
    )


async def test_the_next_batch_is_taken_and_parsed_while_one_is_handled():
    kafka, parser = Scripted({TP0: [A0]}, {TP0: [A1], TP1: [B0]}, delays=[0.05]), Parser()
    p = poll(ahead=parser)
    assert await p.get_msg(kafka) == (A0,)
    assert p.parsed() == {}, "records waited for are parsed by the handler"
    await asyncio.wait_for(parser.parsing.wait(), 5)  # in the background, as the handler works
    assert await p.get_msg(kafka) == (A1, B0)
    assert p.parsed() == {id(A1): (A1, A1.value), id(B0): (B0, B0.value)}
    assert p.parsed() == {}, "the handler's, once"
    assert kafka.calls[:2] == [(50, 500), (50, 500)]
    await p.drop()


async def test_records_whose_parsing_ahead_failed_are_handed_over_for_the_handler_to_parse():
    """Not a refusal (that is a result): the parser itself failing. Taken, the records are past
    the consumer's position: a poll that raised would leave them to no one."""

    class Failing(Parser):
        async def parse_ahead(self, records):
            self.parsing.set()
            raise RuntimeError("a bug in the parser")

    kafka, parser = Scripted({TP0: [A0]}, {TP0: [A1], TP1: [B0]}, delays=[0.05]), Failing()
    p = poll(ahead=parser)
    assert await p.get_msg(kafka) == (A0,)
    p.parsed()  # the handler received it
    await asyncio.wait_for(parser.parsing.wait(), 5)
    assert await p.get_msg(kafka) == (A1, B0)
    assert p.parsed() == {}, "nothing parsed ahead: the handler parses them (and gives them back if it fails too)"
    await p.drop()


async def test_a_batch_the_handler_never_received_is_taken_again_with_what_was_taken_behind_it(monkeypatch):
    """FastStream failed it before the handler (its parser, a middleware) and swallowed the error."""
    monkeypatch.setattr(consumer, "UNRECEIVED_PAUSE_SECONDS", 0)
    kafka, parser = Scripted({TP0: [A1]}, {TP1: [B1]}, delays=[0.05]), Parser()
    p = poll(ahead=parser)
    assert await p.get_msg(kafka) == (A1,)
    await asyncio.wait_for(parser.parsing.wait(), 5)  # B1 taken behind it
    await p.get_msg(kafka)  # no p.parsed(): never received
    assert sorted(kafka.seeks) == [(TP0, 1), (TP1, 1)], "both sought back: A1 and B1 are taken again"
    await p.drop()


async def test_a_batch_received_or_on_another_consumer_is_not_given_back():
    kafka = Scripted({TP0: [A0]}, {TP0: [A1]}, delays=[0.05, 0.05])
    p = poll()
    await p.get_msg(kafka)
    p.parsed()
    await p.get_msg(kafka)  # never received, but the subscriber restarted: another consumer
    assert await p.get_msg(Scripted({TP1: [B0]}, delays=[0.05])) == (B0,)
    assert kafka.seeks == []


async def test_a_failed_batch_is_taken_again_with_what_was_taken_behind_it():
    """The records taken ahead are past the consumer's position: not sought back, they would be skipped."""
    kafka, parser = Scripted({TP0: [A1]}, {TP0: [A2], TP1: [B1, B2]}, delays=[0.05]), Parser()
    parser.release.clear()  # taken, still being parsed when the batch fails
    p = poll(ahead=parser)
    batch = await p.get_msg(kafka)
    p.parsed()  # the handler received it, and fails
    await asyncio.wait_for(parser.parsing.wait(), 5)
    await p.give_back(kafka, batch)
    assert sorted(kafka.seeks) == [(TP0, 1), (TP1, 1)], (
        "each partition at its earliest record, the batch's or behind it"
    )
    assert await p.get_msg(kafka) == (), "nothing handed over twice: the next poll takes from the consumer again"


async def test_records_taken_ahead_are_dropped_for_a_new_consumer_and_on_assignment():
    kafka, parser = Scripted({TP0: [A0]}, {TP0: [A1]}, {TP0: [A2]}, delays=[0.05, 0, 0.05]), Parser()
    p = poll(ahead=parser)
    await p.get_msg(kafka)
    p.parsed()  # the handler received it
    await asyncio.wait_for(parser.parsing.wait(), 5)
    assert await p.drop() == (A1,), "the assignment seeks every partition to its stored position"
    assert kafka.seeks == []
    assert await p.get_msg(kafka) == (A2,)  # and takes ahead again, from `kafka`
    p.parsed()
    restarted = Scripted({TP1: [B0]})
    assert await p.get_msg(restarted) == (B0,), "a restarted subscriber's consumer: its own records"
    await p.drop()


async def test_a_stopping_consumer_stops_taking_ahead_first():
    kafka = Scripted({TP0: [A0]}, {TP0: [A1]}, delays=[0.05, 60])  # the next records are long in coming
    p = poll(ahead=Parser())
    await p.get_msg(kafka)
    assert [t for t in asyncio.all_tasks() if t.get_name() == "consumer-take-ahead"]
    await asyncio.wait_for(kafka.stop(), 5)
    assert kafka.stopped
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "consumer-take-ahead"], "none left pending"


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


async def test_a_commit_kafka_never_answers_keeps_the_stop_waiting_no_longer_than_its_bound(monkeypatch):
    """Kafka away, aiokafka retries a commit for as long as the consumer runs: the stop waited for
    it until SIGKILL, the outbox's last records left for the next start (audit helper-176 #3)."""
    monkeypatch.setattr(consumer, "FLUSH_SECONDS", 0.1)
    kafka, commits = Committing(), consumer.OffsetCommits()  # never released
    commits.follow(kafka, [record(0, 4)])
    await asyncio.wait_for(kafka.committing.wait(), 5)
    await asyncio.wait_for(kafka.stop(), 5)
    assert kafka.calls == [("commit", {TP0: 5}), ("stop",)]
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "offset-commits"], "the commit cancelled"


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
