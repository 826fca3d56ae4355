"""The consumer resumes each assigned partition at the position its database holds; when the
database cannot be read it waits for it, and never falls back to Kafka's committed offsets
(ahead of the database after a restore or a failover, they would skip records for good)."""

from types import SimpleNamespace

from aiokafka import TopicPartition

from services.common.messaging import consumer
from services.common.runtime.metrics import Metrics

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


async def test_positions_unreadable_are_waited_for_then_sought(monkeypatch):
    answers = [ConnectionRefusedError(), OSError(), {TP0: 42}]

    async def load(pool, assigned):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    pauses: list[float] = []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr(consumer.positions, "load", load)
    monkeypatch.setattr(consumer.asyncio, "sleep", pause)
    sought: list[tuple[TopicPartition, int]] = []
    metrics = Metrics("formation")
    listener = consumer.StoredPositions(SimpleNamespace(pool=object(), metrics=metrics))
    listener.subscriber = SimpleNamespace(consumer=SimpleNamespace(seek=lambda tp, offset: sought.append((tp, offset))))

    await listener.on_partitions_assigned({TP1, TP0})

    assert pauses == [0.5, 1.0], "retried with a doubling delay"
    assert sought == [(TP0, 42), (TP1, 0)], "the stored position, else the beginning; never the committed offset"
    metrics.watch(lambda: SimpleNamespace(assignment=lambda: {TP0, TP1}, highwater=lambda tp: 50))
    assert metrics.lag() == {("t", 0): 8, ("t", 1): 50}, "the lag counts from where the partitions resume"
