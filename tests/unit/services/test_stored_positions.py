"""The consumer resumes each assigned partition at the position its database holds; when the
database cannot be read it waits for it, and never falls back to Kafka's committed offsets
(ahead of the database after a restore or a failover, they would skip records for good): the
partitions are paused until sought."""

from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError

from services.common.messaging import consumer
from services.common.runtime.metrics import Metrics

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


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

    assert pauses == [0.5, 1.0], "retried with a doubling delay"
    assert seen == ["ConnectionRefusedError", "OSError"], "/health says why meanwhile"
    assert metrics.positions_failing is None, "and nothing once they are read"
    assert kafka.calls == [
        ("pause", {TP0, TP1}),  # before anything awaits: no poll from Kafka's committed offsets meanwhile
        ("seek", TP0, 42),
        ("seek", TP1, 0),
        ("resume", {TP0, TP1}),
    ], "the stored position, else the beginning; never the committed offset"
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
    listener = consumer.StoredPositions(SimpleNamespace(pool=object(), metrics=Metrics("formation")))
    listener.subscriber = SimpleNamespace(consumer=kafka)
    with pytest.raises(IllegalStateError):
        await listener.on_partitions_assigned({TP0})
    assert kafka.calls == [("pause", {TP0})]
