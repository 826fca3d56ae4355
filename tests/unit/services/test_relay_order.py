"""The relay's round, with a broker that fails one batch of a partition and acknowledges a later
one of the same partition: both count as failed, so that partition's records go out again in
their order next round (a key's records never end reordered); other partitions are done."""

import asyncio

from services.common.messaging import outbox


class Builder:
    def __init__(self, limit: int):
        self.records: list[bytes] = []
        self._limit = limit

    def append(self, timestamp, key, value, headers):
        if len(self.records) == self._limit:
            return None  # full: the relay starts another batch
        self.records.append(value)
        return object()

    def close(self) -> None:
        pass


class Producer:
    """Partitions 0 and 1; batches of two records; the first batch sent to partition 0 fails."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, list[bytes]]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1}

    def create_batch(self) -> Builder:
        return Builder(2)

    async def send_batch(self, builder: Builder, topic: str, partition: int) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        first_of_partition_0 = partition == 0 and not any(p == 0 for p, _ in self.sent)
        self.sent.append((partition, builder.records))
        if first_of_partition_0:
            future.set_exception(ConnectionError("leader gone"))
        else:
            future.set_result(None)
        return future


async def test_a_failed_batch_fails_the_later_ones_of_its_partition(monkeypatch):
    monkeypatch.setattr(outbox, "partition_for", lambda key, partitions: int(key))  # key b"0": partition 0
    relay = outbox.OutboxRelay.__new__(outbox.OutboxRelay)
    relay._producer = producer = Producer()
    keys = [b"0", b"0", b"1", b"0", b"0", b"0", b"0"]
    rows = [{"topic": "t", "key": k, "value": f"v{n}".encode(), "headers": "[]"} for n, k in enumerate(keys)]

    errors = await relay._publish(rows)

    assert [p for p, _ in producer.sent] == [0, 1, 0, 0], "partition 0 in three batches, the first one failing"
    assert [e is None for e in errors] == [k == b"1" for k in keys], "partition 0's later batches count as failed"
