"""The service's Kafka consumer: one batch subscriber over its topics, handing the raw
records to the pipeline, and committing offsets only after the pipeline's transaction.

Where it resumes is the database's say, not Kafka's: on each partition assignment it seeks to
the position the pipeline stored with the data (storage/positions.py), or to offset 0 when the
schema has none (a compacted topic: its start). Kafka's committed offsets still follow, for lag
monitoring."""

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, NamedTuple, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.consumer.fetcher import OffsetResetStrategy
from aiokafka.errors import OffsetOutOfRangeError
from faststream.kafka import KafkaBroker, Topic
from faststream.middlewares import AckPolicy

from services.common.messaging.connection import KafkaAccess
from services.common.messaging.outbox import COMPACTED, text_headers
from services.common.messaging.records import CorruptBatch, install_reader
from services.common.pipeline import Parsed, PartitionsFailed, Pipeline
from services.common.runtime.secrets import redact
from services.common.runtime.settings import ServiceSettings
from services.common.runtime.spec import ServiceSpec
from services.common.storage import positions

log = structlog.get_logger(__name__)


async def _raw_records(msg) -> tuple[ConsumerRecord, ...]:
    # The pipeline parses and validates bytes itself. Asynchronous: FastStream runs a
    # synchronous decoder in a worker thread.
    return msg.raw_message


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


UNREADABLE_RETRY_SECONDS = 60.0
"""How long a partition waits at a batch it could not read before it is read again (Unreadable)."""
UNRECEIVED_PAUSE_SECONDS = 1.0
"""Before a batch that never reached the handler is taken again (Poll._give_back_unreceived)."""
_AT_ONCE = 0.001
"""A poll that returns within this took records aiokafka had buffered; past it, it waited for them."""


def _by_partition(records: Iterable[ConsumerRecord]) -> tuple[ConsumerRecord, ...]:
    """Records grouped by partition, each partition's in offset order, each offset once: a top-up
    that straddles a rebalance giving a partition back to this consumer reads again from its
    stored position (StoredPositions), records the batch holds already (each one twice in a
    batch was dead-lettered twice, or its wait for its UAI failed the batch on its key)."""
    by_partition: dict[tuple[str, int], dict[int, ConsumerRecord]] = {}
    for r in records:
        by_partition.setdefault((r.topic, r.partition), {}).setdefault(r.offset, r)
    return tuple(rs[offset] for rs in by_partition.values() for offset in sorted(rs))


class Ahead(Protocol):
    async def parse_ahead(self, records: Sequence[ConsumerRecord]) -> Parsed: ...


@dataclasses.dataclass(eq=False)
class _TakeAhead:
    """One batch taken ahead: from which consumer, by which task, and what aiokafka gave it
    (its own, so that dropping it never reports another task's records)."""

    consumer: AIOKafkaConsumer
    task: asyncio.Task[tuple[tuple[ConsumerRecord, ...], Parsed]] = dataclasses.field(init=False)
    taken: tuple[ConsumerRecord, ...] = ()


class Poll:
    """How the subscriber takes its batches (FastStream's `get_msg`).

    The next batch is taken and parsed while this one is handled. A batch's transaction
    spends a third of its time waiting on PostgreSQL, with the event loop idle; parsing is a
    third of a service's CPU at full speed. So once a batch is handed over, the records behind
    it are taken from aiokafka and parsed (Pipeline.parse_ahead) in the background, and the
    handler gets them parsed. Records taken ahead have moved the consumer's position past them:
    they are handed over next, or given back (`give_back`: each partition sought back to them)
    when the batch before them fails, or dropped when partitions are assigned again (which
    seeks every partition to its stored position). A batch handed over that the handler never
    received is given back at the next poll (`_give_back_unreceived`).

    Each batch topped up with what came while the previous one was handled. aiokafka fetches a
    partition again only once its buffered records are taken: the fetch their taking sent,
    which brings what came during the previous batch, was left for the batch after. So a record
    that came while a batch was handled waited through the next one too. Here, to the records
    taken, what that fetch brings within `wait_ms` (0: nothing) is added; the broker answers
    at once when records are there. Again while a top-up finds records buffered (taking ahead
    took the first ones: aiokafka fetched the next only then). Only when the records were there
    already: records the consumer had to wait for came just now, so a wait would find nothing
    more (a burst, such as a relay round of the service upstream, would wait `wait_ms` for
    nothing). And no pause when nothing came: FastStream's loop, after `batch_timeout_ms` with
    nothing, slept as long again before the next fetch was looked at. Measured with
    `./dev bench latency` (README, Tests)."""

    def __init__(
        self, subscriber: Any, wait_ms: int, ahead: Ahead | None = None, out_of_range: "HorsLimites | None" = None
    ):
        self._subscriber, self._wait_ms, self._ahead = subscriber, wait_ms, ahead
        self._out_of_range = out_of_range
        self._next: _TakeAhead | None = None
        self._hooked: AIOKafkaConsumer | None = None  # the consumer whose stop drops the take-ahead first
        self._handed: Parsed = {}  # what was parsed of the batch handed over
        self._unreceived: tuple[AIOKafkaConsumer, tuple[ConsumerRecord, ...]] | None = None
        self.unreadable = Unreadable()
        subscriber.get_msg = self.get_msg

    def parsed(self) -> Parsed:
        """What was parsed ahead of the batch handed over (once: the handler takes it, which
        says the batch reached it)."""
        parsed, self._handed, self._unreceived = self._handed, {}, None
        return parsed

    async def get_msg(self, consumer: AIOKafkaConsumer) -> tuple[ConsumerRecord, ...]:
        if self._unreceived is not None:
            await self._give_back_unreceived(consumer)
        asked = time.monotonic()
        got, parsed = await self._taken_ahead(consumer) or (
            await self._take(consumer, self._subscriber.batch_timeout_ms, self._subscriber.max_records),
            {},
        )
        buffered = time.monotonic() - asked < _AT_ONCE  # else they came while it waited: nothing behind them yet
        while buffered and got and self._wait_ms and (room := self._subscriber.max_records - len(got)) > 0:
            asked = time.monotonic()
            try:
                more = await self._take(consumer, self._wait_ms, room)
            except Exception as exc:
                # The records taken are handed over all the same: the consumer's position is past
                # them, and a batch that is not handled now would be skipped. aiokafka raises a
                # fetch error before taking anything, so it comes again at the next poll (a batch
                # it cannot read is `_take`'s: Unreadable).
                log.info("consumer.top_up_failed", error=type(exc).__name__)
                more = ()
            # Buffered again: a fetch for what came after them is sent only now they are taken.
            buffered = bool(more) and time.monotonic() - asked < _AT_ONCE
            if more:
                got = _by_partition(got + more)  # a partition's records stay in their order
        self._handed = parsed
        self._unreceived = (consumer, got) if got else None
        if got and self._ahead is not None:
            if consumer is not self._hooked:  # a new consumer at each (re)start of the subscriber
                _before_stop(consumer, self.drop)  # a take-ahead waiting on a stopped consumer would be left pending
                self._hooked = consumer
            self._next = _TakeAhead(consumer)
            self._next.task = asyncio.create_task(self._take_ahead(self._next), name="consumer-take-ahead")
            self._next.task.add_done_callback(_retrieved)
        return got

    async def _give_back_unreceived(self, consumer: AIOKafkaConsumer) -> None:
        """The batch handed over last never reached the handler: FastStream failed it before (its
        parser, a middleware) and only logged the error. The consumer's position is past it, and
        the next batch's stored positions would skip it for good: it is taken again, with what
        was taken behind it, after a pause (an error that comes back blocks its records, logged
        each time, rather than spin). Not on another consumer: it resumes from the database."""
        assert self._unreceived is not None
        (handed_to, batch), self._unreceived = self._unreceived, None
        if handed_to is consumer:
            log.error("consumer.batch_not_received", records=len(batch), retry_in=UNRECEIVED_PAUSE_SECONDS)
            await self.give_back(consumer, batch)
            await asyncio.sleep(UNRECEIVED_PAUSE_SECONDS)

    async def _take(self, consumer: AIOKafkaConsumer, timeout_ms: int, max_records: int) -> tuple[ConsumerRecord, ...]:
        self.unreadable.retry_due(consumer)
        before = _positions(consumer)
        try:
            got = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except CorruptBatch as exc:
            self.unreadable.hold(consumer, exc, before)
            return ()
        except OffsetOutOfRangeError as exc:  # raised before anything was taken (aiokafka's fetcher)
            if self._out_of_range is None:
                raise
            await self._out_of_range.met(consumer, exc.args[0])
            return ()
        self.unreadable.read(got)
        return tuple(r for records in got.values() for r in records)

    async def _take_ahead(self, ahead: _TakeAhead) -> tuple[tuple[ConsumerRecord, ...], Parsed]:
        assert self._ahead is not None
        # No await between aiokafka's giving the records and `taken`: a cancelled task took
        # nothing, or says what it took.
        ahead.taken = await self._take(ahead.consumer, self._subscriber.batch_timeout_ms, self._subscriber.max_records)
        try:
            return ahead.taken, await self._ahead.parse_ahead(ahead.taken)
        except Exception as exc:
            # Handed over all the same, for the handler to parse: they were taken (the consumer's
            # position is past them), and a poll that raises would leave them to no one. The
            # handler gives its batch back if parsing fails there too.
            log.warning("consumer.parse_ahead_failed", error=type(exc).__name__, records=len(ahead.taken))
            return ahead.taken, {}

    async def _taken_ahead(self, consumer: AIOKafkaConsumer) -> tuple[tuple[ConsumerRecord, ...], Parsed] | None:
        """The batch taken ahead, when there is one (None: none, or dropped meanwhile)."""
        ahead = self._next
        if ahead is None:
            return None
        if ahead.consumer is not consumer:  # the subscriber restarted: another consumer, other positions
            await self.drop()
            return None
        try:
            if not ahead.task.done():  # (asyncio.wait would take a turn of the loop even then)
                await asyncio.wait({ahead.task})
        except asyncio.CancelledError:  # the subscriber stops: what was taken ahead is not handled
            self._next = None
            ahead.task.cancel()
            raise
        if ahead is not self._next:  # dropped while this waited (partitions assigned)
            return None
        self._next = None
        return ahead.task.result()  # aiokafka's error, if it raised, as a poll's own would be

    async def drop(self) -> tuple[ConsumerRecord, ...]:
        """Stops taking ahead; returns what was taken, not handed over."""
        ahead, self._next = self._next, None
        if ahead is None:
            return ()
        ahead.task.cancel()
        await asyncio.wait({ahead.task})
        return ahead.taken

    async def give_back(self, consumer: AIOKafkaConsumer, batch: Sequence[ConsumerRecord]) -> None:
        """The batch handed over failed: it, and what was taken behind it, are taken again
        (each partition sought back to its earliest record), never skipped."""
        earliest: dict[TopicPartition, int] = {}
        for r in (*batch, *await self.drop()):
            tp = TopicPartition(r.topic, r.partition)
            earliest[tp] = min(earliest.get(tp, r.offset), r.offset)
        for tp, offset in earliest.items():
            try:
                consumer.seek(tp, offset)
            except Exception as exc:  # no longer assigned here: its next owner resumes from the database
                log.info("consumer.give_back_failed", error=type(exc).__name__)


def _before_stop(consumer: AIOKafkaConsumer, first: Callable[[], Awaitable[Any]]) -> None:
    """`consumer.stop()` awaits `first()`, then stops it."""
    stop = consumer.stop

    async def then_stopped() -> None:
        await first()
        await stop()

    consumer.stop = then_stopped


def _retrieved(task: asyncio.Future) -> None:
    """A take-ahead's error is raised by the next poll; one nobody polls for (the subscriber
    stopped) is not reported as never retrieved."""
    if not task.cancelled():
        task.exception()


FLUSH_SECONDS = 5.0
"""How long a stopping consumer waits for its offsets' commit (OffsetCommits.flush)."""


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
            _before_stop(consumer, self.flush)
        for (topic, partition), end in positions.ends(records).items():
            tp = TopicPartition(topic, partition)
            self._pending[tp] = max(self._pending.get(tp, 0), end)
        if self._pending and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._commit(consumer), name="offset-commits")

    async def flush(self) -> None:
        """Until what was handled is committed (or its commit failed), FLUSH_SECONDS at most: with
        Kafka away aiokafka retries a commit for as long as its consumer runs, and the stop, which
        waits for it first, waited until the process was killed (its outbox never flushed)."""
        if self._task is None:
            return
        done, _ = await asyncio.wait([self._task], timeout=FLUSH_SECONDS)
        if not done:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            log.info("consumer.commit_abandoned", after_s=FLUSH_SECONDS, hint="Kafka's offsets lag: monitoring only")

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        while self._pending:
            offsets, self._pending = self._pending, {}
            try:
                await consumer.commit(offsets)
            except Exception as exc:  # a rebalance took a partition, or Kafka is away: monitoring lags
                log.info("consumer.commit_failed", error=type(exc).__name__, partitions=len(offsets))


class Outside(NamedTuple):
    """A partition's position outside its log: below its first offset, past its end, or within
    another log than its own (`elsewhere`: a topic made again whose new log reaches it)."""

    tp: TopicPartition
    position: int
    start: int
    end: int
    elsewhere: bool = False

    @property
    def another_log(self) -> bool:
        """The position is not in this log (read from its start): past its end, or elsewhere."""
        return self.position > self.end or self.elsewhere

    @property
    def lost(self) -> int:
        """Records deleted before they were read: none past the end. A compacted topic's too:
        its compaction never moves its log's start (Kafka keeps its first segment's base offset,
        however few records are left in it), only a deletion does (its `cleanup.policy` set
        by hand to `compact,delete`, then its retention or `kafka-delete-records`)."""
        return max(self.start - self.position, 0)

    @property
    def republished(self) -> bool:
        """Lost from a compacted topic of derived state: its producer's rebuild publishes again
        each key it no longer holds (deploy/rattrapage.py, RENUMBERED)."""
        return self.lost > 0 and self.tp.topic.endswith(COMPACTED)

    def said(self) -> dict[str, Any]:
        """Its fields for a log line."""
        return {
            "topic": self.tp.topic,
            "partition": self.tp.partition,
            "position": self.position,
            "log_start": self.start,
            "log_end": self.end,
            "records_lost": self.lost,
            **({"another_log": True} if self.elsewhere else {}),
        }


async def outside_their_log(consumer: AIOKafkaConsumer, wanted: Mapping[TopicPartition, int]) -> list[Outside]:
    """Those of `wanted` (partition -> position) outside what Kafka holds of their partition."""
    tps = sorted(wanted)
    starts, ends = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
    found = (Outside(tp, wanted[tp], starts[tp], ends[tp]) for tp in tps)
    return [o for o in found if not o.start <= o.position <= o.end]


class HorsLimites:
    """A partition's position outside what Kafka holds of it, met by a fetch (the consumer resets
    none: aiokafka's reset to the earliest record skipped them with a line at INFO only, and the
    lag read 0). Below the log start, the records between were deleted before the service read
    them (a retention shorter than the topic's, records deleted by hand): it reads on from the log
    start, and says how many it lost. Past the log end, the topic was made again (or this is
    another cluster): it reads the partition from its start, its stored position moved back
    there (kept, `positions.advance` never moves back: the next start skipped the new topic's
    records up to it). Each one is an ERROR, a row of `positions_hors_limites` (/health's
    `positions_out_of_range`, until an operator deletes it) and `feo_records_lost_total` in /metrics.
    Recorded before the partition moves on: PostgreSQL away, the partition waits for it."""

    RETRY_SECONDS = 1.0

    def __init__(self, pipeline: Pipeline):
        self._pipeline = pipeline

    async def met(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        assigned = {tp: offset for tp, offset in offsets.items() if consumer._subscription.is_assigned(tp)}
        if not assigned:
            return
        try:
            outside = await outside_their_log(consumer, assigned)
            if outside:
                async with self._pipeline.pool.acquire() as conn, conn.transaction():
                    await positions.out_of_range(conn, outside)
        except Exception as exc:  # the fetch meets the same position again: recorded then
            log.warning("positions.out_of_range_unrecorded", error=type(exc).__name__, detail=redact(str(exc)))
            await asyncio.sleep(self.RETRY_SECONDS)
            return
        # Within the log now (records written since the fetch): read from there as it was.
        resume = assigned | {o.tp: o.start for o in outside}
        for tp, offset in resume.items():
            if consumer._subscription.is_assigned(tp):  # else its next owner resumes from the database
                consumer.seek(tp, offset)
        self._pipeline.metrics.resumed(resume)
        tell(self._pipeline, outside)


def tell(pipeline: Pipeline, outside: Sequence[Outside]) -> None:
    """Positions found outside their partition's log, recorded: said, and counted in /metrics."""
    for o in outside:
        pipeline.metrics.records_lost(o.tp.topic, o.lost)
        log.error(
            "kafka.position_out_of_range",
            **o.said(),
            hint=(
                f"records were deleted from the partition before this service read them ({o.lost} offsets, "
                "some of them versions its compaction had removed; its cleanup.policy set by hand?): rebuild the "
                "service that publishes the topic, whose alignment publishes again each key the topic no longer holds"
                if o.republished
                else f"{o.lost} records were deleted from the partition before this service read them: "
                "ask their declarants to send them again, or rebuild the service from what is left"
                if o.lost
                else "read again from the partition's start: the log holds no record appended when the one "
                "before the position was (the topic made again while this service was away)"
                if o.elsewhere
                else "read again from the partition's start (past its end: the topic made again, or another cluster)"
            ),
        )


LOG_CHECK_SECONDS = 10.0
"""How long an assignment waits for Kafka to say whether each stored position is in its log."""
LOG_CHECK_PATIENCE_SECONDS = 60.0
"""How long an assignment asks again, its partitions paused, when Kafka did not say it in time,
before it reads from the stored positions unchecked (from Kafka's first silence). Once read on, a
partition's stored instant is its new records': a topic made again met while Kafka was slow
would never be found after (review s66 #3). Asked outside the assignment's callback
(StoredPositions.resuming), whose length the group's session timeout bounds."""


Stamps = Callable[[Mapping[TopicPartition, int]], Awaitable[Mapping[TopicPartition, int | None]]]
"""The instant (ms) each record at these offsets was appended (None: that record is gone, the
first after it read instead), of those Kafka gives in time."""


def record_stamps(access: KafkaAccess) -> Stamps:
    """`Stamps` read by a consumer of its own, outside the group (the group's is in its
    rebalance): its partitions assigned and sought to the offsets, each one's first record
    kept. A record gone (compacted): None; one not given within LOG_CHECK_SECONDS is left out."""

    async def stamps(offsets: Mapping[TopicPartition, int]) -> Mapping[TopicPartition, int | None]:
        reader = AIOKafkaConsumer(**access.aiokafka(), client_id="feo-positions", enable_auto_commit=False)
        first: dict[TopicPartition, ConsumerRecord] = {}
        try:
            async with asyncio.timeout(LOG_CHECK_SECONDS):
                await reader.start()
                reader.assign(list(offsets))
                for tp, offset in offsets.items():
                    reader.seek(tp, offset)
                while waiting := [tp for tp in offsets if tp not in first]:
                    for tp, records in (await reader.getmany(*waiting, timeout_ms=500, max_records=1)).items():
                        if records:
                            first.setdefault(tp, records[0])
        except Exception as exc:  # Kafka slow or away: the check keeps what it found
            log.warning("positions.stamps_unread", error=type(exc).__name__, partitions=len(offsets) - len(first))
        finally:
            await reader.stop()
        return {tp: r.timestamp if r.offset == offsets[tp] else None for tp, r in first.items()}

    return stamps


class LogUnchecked(RuntimeError):
    """Kafka did not say in time whether positions are in their partitions' logs (`strict`):
    `fact` says what it did not say; the message, to the operator of a tool, to run it again."""

    def __init__(self, fact: str):
        super().__init__(f"{fact}: nothing decided, run it again")
        self.fact = fact


async def in_another_log(
    consumer: AIOKafkaConsumer,
    stored: Mapping[TopicPartition, int],
    appended: Mapping[TopicPartition, int],
    stamps: Stamps | None = None,
    *,
    strict: bool = False,
) -> list[Outside]:
    """Those of `stored` (partition -> position) whose partition's log now holds no record appended
    at the instant the record before the position was (`appended`, ms: the topics that stamp it):
    a topic made again whose new log already reaches the position, which a fetch does not meet
    as out of range (its records up to the position were skipped). Asked by timestamp, the
    earliest record appended at or after that instant is that one, or one before it at the same
    instant; a new log's records were all appended later. (A position an operator moved by hand
    keeps the instant of a record of its log: not suspected.) Kafka not answering: none (read
    from the stored positions, said). A leader whose clock is behind the former one's stamps a
    record earlier than one before it: the earliest at or after the instant is then another, so
    each suspect's record before its position is read (`stamps`), and one of that instant is
    this log's after all (else the whole partition was read again from its start); one not read
    in time is not judged (read from its stored position, said: it was taken for another log's,
    and a partition kept for ever read again from its start because Kafka was slow, audit s66
    #3). `strict`: LogUnchecked instead of going on unchecked (an operator's tool, which then
    replaces a schema: deploy/rattrapage.py; a service's assignment, which asks again for
    LOG_CHECK_PATIENCE_SECONDS first)."""
    wanted = {tp: ms for tp, ms in appended.items() if stored.get(tp, 0) > 0}
    if not wanted:
        return []
    try:
        async with asyncio.timeout(LOG_CHECK_SECONDS):
            found = await consumer.offsets_for_times(wanted)
            suspects = sorted(tp for tp, ms in wanted.items() if (at := found.get(tp)) is None or at.timestamp != ms)
            if not suspects:
                return []
            starts, ends = await consumer.beginning_offsets(suspects), await consumer.end_offsets(suspects)
    except Exception as exc:  # Kafka away: its fetches say more, and HorsLimites meets a position past the end
        if strict:
            raise LogUnchecked(
                f"Kafka did not say within {LOG_CHECK_SECONDS:g} s whether the positions of {len(wanted)} "
                f"partitions are in their logs ({type(exc).__name__})"
            ) from exc
        log.warning(
            "positions.log_unchecked",
            error=type(exc).__name__,
            detail=redact(str(exc)),
            partitions=len(wanted),
            hint="read from the stored positions without checking that their topics were not made again",
        )
        return []
    # The record before the position deleted (below the start), or a position past the end: not
    # this check's to say (HorsLimites meets them at the fetch).
    within = [tp for tp in suspects if starts[tp] < stored[tp] <= ends[tp]]
    if stamps is None:  # the index's word
        return [Outside(tp, stored[tp], starts[tp], ends[tp], elsewhere=True) for tp in within]
    same = await stamps({tp: stored[tp] - 1 for tp in within}) if within else {}
    if unread := [tp for tp in within if tp not in same]:
        where = ", ".join(f"{tp.topic}[{tp.partition}] at {stored[tp]}" for tp in unread)
        if strict:
            raise LogUnchecked(
                f"Kafka did not give in time the record before the position of {where}, which says "
                "whether the topic was made again since"
            )
        log.warning(
            "positions.log_unchecked",
            error="record before the position not read in time",
            partitions=len(unread),
            positions=where,
            hint="read from the stored positions without checking that their topics were not made again",
        )
    return [
        Outside(tp, stored[tp], starts[tp], ends[tp], elsewhere=True)
        for tp in within
        if tp in same and same[tp] != wanted[tp]
    ]


class StoredPositions(ConsumerRebalanceListener):
    """Seeks each assigned partition to its position in the service's database (to offset 0 when
    it has none: a fresh schema reads every record Kafka has, and is told of those Kafka no longer
    has; a compacted topic's, from its log start).

    The reading and the checks run in a task of their own (`resuming`), the partitions paused
    until it seeks them: aiokafka sends no heartbeat while the assignment's callback runs, and a
    callback longer than the group's session timeout (10 s) had the broker put the member out,
    the group rebalanced again, while PostgreSQL was away or Kafka slow to say whether the
    positions are in their logs (review s67 #1). A revocation cancels it."""

    def __init__(self, pipeline: Pipeline, stamps: Stamps | None = None):
        self._pipeline, self._stamps = pipeline, stamps
        self.subscriber: Any = None  # FastStream's subscriber, whose consumer exists once it starts
        self.poll: Poll | None = None
        self.resuming: asyncio.Task[None] | None = None

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._stop_resuming()

    async def _stop_resuming(self) -> None:
        if self.resuming is not None and not self.resuming.done():
            self.resuming.cancel()
            await asyncio.wait([self.resuming])
        self.resuming = None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self.subscriber.consumer
        # Paused until sought, before anything awaits: aiokafka lets polls go on during this
        # callback, from Kafka's committed offsets, and a batch taken from there and committed
        # before the seek would move the stored positions past records never handled.
        consumer.pause(*assigned)
        # From the log's start until sought (`resuming`: a seek, which an answer still on its way
        # does not undo). Asked now, before anything awaits: aiokafka would
        # otherwise look up the group's committed offsets meanwhile, and with none (a new group,
        # offsets Kafka forgot) raise at the next poll, which FastStream pauses 5 s for.
        if assigned:
            reset = consumer._fetcher.request_offset_reset(sorted(assigned), OffsetResetStrategy.EARLIEST)
            reset.add_done_callback(_retrieved)  # cancelled when unassigned first
        if self.poll is not None:  # records taken ahead: every partition is sought below
            await self.poll.drop()
            self.poll.unreadable.forget()
        self._pipeline.metrics.reassigned(assigned)
        await self._stop_resuming()  # a former assignment's, should no revocation have come first
        if assigned:
            self.resuming = asyncio.create_task(self._resume(consumer, assigned), name="positions")

    async def _resume(self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]) -> None:
        try:
            await self._resume_from_database(consumer, assigned)
        except Exception:  # what aiokafka logged of its callback: the partitions left paused
            log.exception(
                "positions.resume_failed", partitions=len(assigned), hint="left paused until the next assignment"
            )

    async def _resume_from_database(self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]) -> None:
        """Each partition sought to its stored position, then resumed (left paused if this fails
        first: never read from anywhere else; `positions.resume_failed`). Kafka not saying in time
        whether the positions are in their logs: asked again for LOG_CHECK_PATIENCE_SECONDS, the
        partitions paused, then read from them unchecked (`positions.log_unchecked`)."""
        # Never Kafka's committed offsets instead: after a restore or a failover to a standby
        # that was behind, they are ahead of the database, and what lies between would be
        # skipped for good. PostgreSQL away: wait for it (the start-up guard ends the process
        # if it stays away, and the next assignment tries again).
        delay = 0.5
        elsewhere: list[Outside] | None = None  # asked of Kafka once, recorded before anything is read
        patient_until: float | None = None  # from Kafka's first silence (not PostgreSQL's)
        while True:
            try:
                stored = await positions.load(self._pipeline.pool, assigned)
                if elsewhere is None:
                    appended = await positions.appended(self._pipeline.pool, assigned)
                    patient = patient_until is None or asyncio.get_running_loop().time() < patient_until
                    elsewhere = await in_another_log(consumer, stored, appended, self._stamps, strict=patient)
                if elsewhere:
                    async with self._pipeline.pool.acquire() as conn, conn.transaction():
                        await positions.out_of_range(conn, elsewhere)
                    stored = {**stored, **{o.tp: o.start for o in elsewhere}}
                break
            except Exception as exc:  # on /health (`positions_unreadable`) and /metrics meanwhile
                if consumer._closed:  # stopping: left paused
                    log.info("positions.unread_at_stop", error=type(exc).__name__)
                    return
                self._pipeline.metrics.positions_unreadable(type(exc).__name__)
                if isinstance(exc, LogUnchecked):  # asked again while patient, then read unchecked
                    if patient_until is None:
                        patient_until = asyncio.get_running_loop().time() + LOG_CHECK_PATIENCE_SECONDS
                    log.warning("positions.log_check_retried", detail=exc.fact, retry_in=delay)
                else:
                    log.warning(
                        "positions.unreadable", error=type(exc).__name__, detail=redact(str(exc)), retry_in=delay
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self._pipeline.metrics.positions_read()
        if consumer._closed:
            return
        for tp in sorted(assigned):
            if tp in stored:
                consumer.seek(tp, stored[tp])
            elif not tp.topic.endswith(COMPACTED):
                # A fresh schema reads from offset 0: a log that starts later lost records
                # before this service read them, which HorsLimites says (a compacted topic
                # starts later as it is cleaned: read from there, as the reset above does).
                consumer.seek(tp, 0)
        consumer.resume(*assigned)
        self._pipeline.metrics.resumed({tp: stored.get(tp, 0) for tp in assigned})
        tell(self._pipeline, elsewhere or [])
        log.info("positions.resumed", stored=len(stored), from_beginning=len(assigned) - len(stored))


def subscribe(broker: KafkaBroker, spec: ServiceSpec, settings: ServiceSettings, pipeline: Pipeline) -> None:
    install_reader()  # FastStream's consumer is aiokafka's
    listener = StoredPositions(pipeline, record_stamps(KafkaAccess.of(settings)))
    subscriber = broker.subscriber(
        # The platform's topics (deploy.topic_admin, Strimzi's KafkaTopic), which a service's
        # principal may not create: FastStream's attempt at its start only logged the refusal.
        *[Topic(settings.topic(t), declare=False) for t in spec.consumes],
        batch=True,
        group_id=settings.topic(spec.name),
        # Never reset by aiokafka (to the earliest, it skipped records gone without a word):
        # a position outside the partition's log is HorsLimites'.
        auto_offset_reset="none",
        # Records of a transaction its producer aborted were never written, in Kafka's terms (a
        # partner's Kafka Streams or exactly-once Connect): not handed over. Those of a transaction
        # still open wait for its end (the partition's last stable offset), normally at most the
        # producer's `transaction.timeout.ms`, after which the broker aborts it.
        isolation_level="read_committed",
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
    listener.poll = poll = Poll(subscriber, settings.batch_top_up_ms, pipeline, HorsLimites(pipeline))
    pipeline.metrics.watch(
        lambda: subscriber.consumer, poll.unreadable.report, [settings.topic(t) for t in spec.consumes]
    )

    commits = OffsetCommits()

    @subscriber
    async def consume(records: list) -> None:
        # No `KafkaMessage` parameter: FastStream resolves it with a synchronous call that it
        # runs in a worker thread, a thread hop per batch (held up by the GIL while the next
        # batch is parsed). Then the message sat in a reference cycle, so each batch waited for
        # the cyclic collector (rarely: runtime/lifecycle.py); without the parameter no batch
        # leaves cyclic garbage (gc.DEBUG_SAVEALL over ten batches of formation: none).
        try:
            await pipeline.handle(records, poll.parsed(), partial(_assigned, subscriber))
        except PartitionsFailed as e:  # the batch's other partitions committed: not read again
            commits.follow(subscriber.consumer, e.committed)
            await poll.give_back(subscriber.consumer, e.records)
            raise
        except BaseException:
            await poll.give_back(subscriber.consumer, records)
            raise
        commits.follow(subscriber.consumer, records)


def _assigned(subscriber: Any, topic: str, partition: int) -> bool:
    """Whether the partition is still assigned to the subscriber's consumer: one revoked since
    its batch came is resumed by its next owner, here too if assigned again (each partition
    assigned is sought to its position in the database)."""
    consumer = subscriber.consumer
    return consumer is None or TopicPartition(topic, partition) in consumer.assignment()


def _positions(consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
    """The position of each partition assigned to `consumer` that has one (aiokafka's state, read
    without waiting: `position()` waits for one being looked up)."""
    assignment = consumer._subscription.subscription and consumer._subscription.subscription.assignment
    if assignment is None:
        return {}
    states = ((tp, assignment.state_value(tp)) for tp in assignment.tps)
    return {tp: state.position for tp, state in states if state is not None and state.has_valid_position}


@dataclasses.dataclass
class _Held:
    offset: int
    since: datetime
    paused_at: float
    attempts: int = 1
    retrying: bool = False


class Unreadable:
    """The partitions held at a batch they could not read (the broker serves it damaged: its CRC
    wrong, its storage corrupted). aiokafka raised at the poll that met it, and the records it
    had taken of other partitions before were lost with the error, their positions past them
    (then again at every poll, the error coming back). Those partitions are sought back to where
    the poll found them, and the one with the batch paused at it: the others go on, and nothing
    of it is skipped. Read again every UNREADABLE_RETRY_SECONDS: repaired, or served by another
    broker now leading it, the batch is read and the partition goes on by itself. Each held
    partition is on /health (`unreadable_batches`) and in /metrics until then."""

    def __init__(self) -> None:
        self._held: dict[TopicPartition, _Held] = {}

    def hold(self, consumer: AIOKafkaConsumer, corrupt: CorruptBatch, before: dict[TopicPartition, int]) -> None:
        for tp, position in before.items():
            if tp != corrupt.tp and consumer._subscription.is_assigned(tp):
                consumer.seek(tp, position)
        consumer.pause(corrupt.tp)
        held = self._held.get(corrupt.tp)
        where = {"topic": corrupt.tp.topic, "partition": corrupt.tp.partition, "offset": corrupt.offset}
        if held is not None and held.offset == corrupt.offset:  # read again, still damaged
            held.attempts, held.retrying, held.paused_at = held.attempts + 1, False, time.monotonic()
            log.warning("kafka.still_unreadable", **where, attempts=held.attempts, retry_in=UNREADABLE_RETRY_SECONDS)
            return
        self._held[corrupt.tp] = _Held(corrupt.offset, datetime.now(UTC), time.monotonic())
        hint = "the partition waits at that offset, the others go on; " + (
            f"it is read again every {UNREADABLE_RETRY_SECONDS:g} s (once the broker's replica is repaired)"
            if corrupt.skip_to is None
            else f"to leave the batch's records (its sender to send them again, smaller), store {corrupt.skip_to} "
            "as the partition's position in the service's `positions` table, its replicas stopped (README, Bad input)"
        )
        log.error(
            "kafka.unreadable_batch",
            **where,
            skip_to=corrupt.skip_to,
            error=str(corrupt.__cause__ or corrupt),
            retry_in=UNREADABLE_RETRY_SECONDS,
            hint=hint,
        )

    def retry_due(self, consumer: AIOKafkaConsumer) -> None:
        """Each partition held long enough resumed, for the poll to read its batch again."""
        now = time.monotonic()
        for tp, held in self._held.items():
            if not held.retrying and now - held.paused_at >= UNREADABLE_RETRY_SECONDS:
                held.retrying = True
                if consumer._subscription.is_assigned(tp):
                    consumer.resume(tp)

    def read(self, got: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """A held partition that gave records: its batch was read (or is gone: retention)."""
        for tp in [tp for tp in self._held if got.get(tp)]:
            held = self._held.pop(tp)
            log.info(
                "kafka.readable_again",
                topic=tp.topic,
                partition=tp.partition,
                offset=held.offset,
                attempts=held.attempts,
                held_s=round(time.monotonic() - held.paused_at, 1),
            )

    def forget(self) -> None:
        """Partitions assigned: each is sought to its stored position and read again from there."""
        self._held.clear()

    def report(self) -> list[dict[str, Any]]:
        """The partitions held, for /health and /metrics."""
        return [
            {"topic": tp.topic, "partition": tp.partition, "offset": held.offset, "since": held.since.isoformat()}
            for tp, held in sorted(self._held.items())
        ]
