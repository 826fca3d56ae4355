"""The service's Kafka consumer: one batch subscriber over its topics, handing the raw
records to the pipeline, and committing offsets only after the pipeline's transaction.

Where it resumes is the database's say, not Kafka's: on each partition assignment it seeks to
the position the pipeline stored with the data (storage/positions.py), or to the beginning
when the schema has none. Kafka's committed offsets still follow, for lag monitoring."""

import asyncio
import dataclasses
import time
import types
from collections.abc import Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.middlewares import AckPolicy

from services.common.messaging.outbox import text_headers
from services.common.pipeline import Pipeline
from services.common.runtime.settings import ServiceSettings
from services.common.runtime.spec import ServiceSpec
from services.common.storage import positions

log = structlog.get_logger(__name__)


def _raw_records(msg) -> tuple[ConsumerRecord, ...]:
    return msg.raw_message  # the pipeline parses and validates bytes itself


async def _parse_batch(records: tuple[ConsumerRecord, ...], default_parser) -> Any:
    """FastStream's batch parser decodes every header value as UTF-8, so one header of other
    bytes, or a null one, failed the whole batch before our handler saw it. A record is judged
    by its value alone (CONTRACTS.md): FastStream (its logs, the tracing middleware) sees only
    the headers that are text, and the handler gets the records untouched, for the DLQ copy."""
    message = await default_parser(tuple(map(_text_headers_only, records)))
    message.raw_message = records
    return message


def _text_headers_only(record: ConsumerRecord) -> ConsumerRecord:
    """The record itself when every header value is text (nearly always); else a copy without
    the others. A copy for every record was 6% of formation's CPU at full speed (py-spy)."""
    try:
        for _, value in record.headers:
            value.decode()  # AttributeError: None
        return record
    except (AttributeError, UnicodeDecodeError):
        return dataclasses.replace(record, headers=[(k, v.encode()) for k, v in text_headers(record.headers)])


_AT_ONCE = 0.001
"""A poll that returns within this took records aiokafka had buffered; past it, it waited for them."""


def _top_up(subscriber: Any, wait_ms: int) -> None:
    """Each batch topped up with what came while the previous one was handled.

    aiokafka fetches a partition again only once its buffered records are taken. FastStream's
    batch subscriber takes them, then hands them over at once: the fetch their taking sent,
    which brings what came during the previous batch, is left for the batch after. So a record
    that came while a batch was handled waited through the next one too. Here, the records
    taken, what that fetch brings within `wait_ms` (0: nothing) joins them; the broker answers
    at once when records are there. Only when the records were there already: records the
    consumer had to wait for came just now, so a wait would find nothing more (a burst, such
    as a relay round of the service upstream, would wait `wait_ms` for nothing). And no pause
    when nothing came: FastStream's loop, after `batch_timeout_ms` with nothing, slept as long
    again before the next fetch was looked at. Measured with `./dev bench latency` (README, Tests)."""

    async def get_msg(self: Any, consumer: AIOKafkaConsumer) -> tuple[ConsumerRecord, ...]:
        asked = time.monotonic()
        got = await consumer.getmany(timeout_ms=self.batch_timeout_ms, max_records=self.max_records)
        taken = sum(map(len, got.values()))
        buffered = time.monotonic() - asked < _AT_ONCE  # else they came while it waited: nothing behind them yet
        if buffered and taken and wait_ms and taken < self.max_records:
            try:
                more = await consumer.getmany(timeout_ms=wait_ms, max_records=self.max_records - taken)
            except Exception as exc:
                # The records taken are handed over all the same: the consumer's position is past
                # them, and a batch that is not handled now would be skipped. aiokafka raises
                # before taking anything, so the error comes again at the next poll.
                log.info("consumer.top_up_failed", error=type(exc).__name__)
                more = {}
            for tp, records in more.items():  # a partition's records stay in their order
                got.setdefault(tp, []).extend(records)
        return tuple(r for records in got.values() for r in records)

    subscriber.get_msg = types.MethodType(get_msg, subscriber)


class OffsetCommits:
    """Kafka's committed offsets follow the batches handled, committed in the background.

    The service resumes from its database's positions (StoredPositions); Kafka's offsets are
    for lag monitoring. FastStream's acknowledgement awaited the broker's answer after every
    batch, a round trip before the next batch could be taken. Here one commit at a time is in
    flight, of the latest offsets of the batches handled since the last one. A commit that
    fails is logged and not retried: its partitions may be another replica's now, and the next
    batch of each partition still here commits past it. The consumer stops only once the
    commits in flight or pending are done: stopped, its offsets are those of what it handled."""

    def __init__(self) -> None:
        self._pending: dict[TopicPartition, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._followed: AIOKafkaConsumer | None = None

    def follow(self, consumer: AIOKafkaConsumer, records: Sequence[ConsumerRecord]) -> None:
        """After a batch's transaction: its offsets to commit."""
        if consumer is not self._followed:  # a new consumer at each (re)start of the subscriber
            self._followed = consumer
            self._flush_before_stop(consumer)
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            self._pending[tp] = max(self._pending.get(tp, 0), r.offset + 1)
        if self._pending and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._commit(consumer), name="offset-commits")

    def _flush_before_stop(self, consumer: AIOKafkaConsumer) -> None:
        stop = consumer.stop

        async def flushed_then_stopped() -> None:
            await self.flush()
            await stop()

        consumer.stop = flushed_then_stopped

    async def flush(self) -> None:
        """Until what was handled is committed (or its commit failed)."""
        if self._task is not None:
            await self._task

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        while self._pending:
            offsets, self._pending = self._pending, {}
            try:
                await consumer.commit(offsets)
            except Exception as exc:  # a rebalance took a partition, or Kafka is away: monitoring lags
                log.info("consumer.commit_failed", error=type(exc).__name__, partitions=len(offsets))


class StoredPositions(ConsumerRebalanceListener):
    """Seeks each assigned partition to its position in the service's database (offset 0 when
    it has none: the broker's earliest when older records are gone, auto_offset_reset)."""

    def __init__(self, pipeline: Pipeline):
        self._pipeline = pipeline
        self.subscriber: Any = None  # FastStream's subscriber, whose consumer exists once it starts

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if not assigned:
            return
        # Never Kafka's committed offsets instead: after a restore or a failover to a standby
        # that was behind, they are ahead of the database, and what lies between would be
        # skipped for good. PostgreSQL away: wait for it (the start-up guard ends the process
        # if it stays away, and the next assignment tries again).
        delay = 0.5
        while True:
            try:
                stored = await positions.load(self._pipeline.pool, assigned)
                break
            except Exception as exc:
                log.warning("positions.unreadable", error=type(exc).__name__, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        for tp in sorted(assigned):
            self.subscriber.consumer.seek(tp, stored.get(tp, 0))
        self._pipeline.metrics.resumed({tp: stored.get(tp, 0) for tp in assigned})
        log.info("positions.resumed", stored=len(stored), from_beginning=len(assigned) - len(stored))


def subscribe(broker: KafkaBroker, spec: ServiceSpec, settings: ServiceSettings, pipeline: Pipeline) -> None:
    listener = StoredPositions(pipeline)
    subscriber = broker.subscriber(
        *[settings.topic(t) for t in spec.consumes],
        batch=True,
        group_id=settings.topic(spec.name),
        auto_offset_reset="earliest",
        max_records=settings.batch_max_records,
        # Idle, the consumer waits this long for a record before it looks again (_top_up).
        batch_timeout_ms=settings.batch_wait_ms,
        # aiokafka fetches a partition whose records were all read only once the fetch in flight
        # returns, which the broker holds up to this long when nothing comes for the others (its
        # default, 500 ms, held a busy partition's records that long: p99 at 1,000 ev/s, issue 8).
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        group_instance_id=settings.consumer_instance_id,  # static membership when set
        ack_policy=AckPolicy.MANUAL,  # `consume`: offsets committed off the consumer's path (OffsetCommits)
        parser=_parse_batch,
        decoder=_raw_records,
        listener=listener,
        title=f"{spec.name}:consume",
        description=f"{spec.name} consumes {', '.join(spec.consumes)}; bad records go to <topic>.dlq",
    )
    listener.subscriber = subscriber
    _top_up(subscriber, settings.batch_top_up_ms)
    pipeline.metrics.watch(lambda: subscriber.consumer)

    commits = OffsetCommits()

    @subscriber
    async def consume(records: list, message: KafkaMessage) -> None:
        try:
            await pipeline.handle(records)
        except BaseException:
            await message.nack()  # back to the batch's first offsets: redelivered, never skipped
            raise
        commits.follow(subscriber.consumer, records)
