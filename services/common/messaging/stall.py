"""A read of Kafka to a known end (a catch-up, a scan of DLQs) that the broker stops feeding."""

import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition


class Stall:
    """Fed each fetch: TimeoutError once fetches have moved no position for `seconds` in a row
    while some records are left (the time spent handling what came before does not count: the
    first fetch that moved nothing starts it)."""

    def __init__(self, nothing: str, seconds: float):
        """`nothing`: what the error says first (`replaying t: no record from Kafka`)."""
        self.nothing, self.seconds = nothing, seconds
        self.empty_since: float | None = None

    async def getmany(
        self, consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition], **options: Any
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        """`consumer.getmany(*partitions, **options)`, judged by the positions it moved, not the
        records it gave: a consumer reading committed records skips an aborted transaction's and
        the markers, giving none while it moves on (review s67 #10: counting records, minutes
        of aborted ones would have stopped a rebuild)."""
        before = [await consumer.position(tp) for tp in partitions]
        fetched = await consumer.getmany(*partitions, **options)
        self.fetched(bool(fetched) or [await consumer.position(tp) for tp in partitions] != before)
        return fetched

    def fetched(self, moved: bool) -> None:
        now = time.monotonic()
        if moved:
            self.empty_since = None
        elif self.empty_since is None:
            self.empty_since = now
        elif now - self.empty_since > self.seconds:
            raise TimeoutError(f"{self.nothing} for {self.seconds:g} s, with some left to read")
