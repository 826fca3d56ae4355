"""The consumer's poll (consumer._top_up) with a scripted aiokafka consumer: records aiokafka
had buffered are topped up with what the next fetch brings, in each partition's order; records
it waited for are not; a top-up that fails hands over the records taken all the same."""

import asyncio

import pytest
from aiokafka import TopicPartition
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
