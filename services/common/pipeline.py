"""One batch of Kafka records in, one PostgreSQL transaction out.

Per batch: parse and validate every record (contracts), check the declarant's rights against
the référentiel, drop what the inbox has already seen, let the service apply its state rules,
then write state, outgoing events, dead letters and the partitions' new positions in one
transaction. Kafka offsets are committed only after this returns (in the background,
messaging/consumer.py), but a service resumes from the positions in its database
(storage/positions.py), so a process killed at any instant replays at most the batch, which the
inbox makes harmless.
"""

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

import asyncpg
import structlog
from aiokafka import ConsumerRecord
from opentelemetry import trace

import contracts as c
from contracts import CloudEvent, ContractError, parse_source, uai_of
from contracts.internal import INTERNAL_TOPICS
from services.common.messaging import dlq
from services.common.messaging.outbox import OutboxRecord, OutboxRelay, Twin, enqueue, load_headers
from services.common.rules import rights
from services.common.runtime import logs
from services.common.runtime.metrics import Failing, Metrics
from services.common.runtime.outages import Outage
from services.common.runtime.secrets import redact
from services.common.runtime.settings import ServiceSettings
from services.common.runtime.telemetry import context_from_headers, trace_headers, tracer_is_recording
from services.common.storage import entities, inbox, positions, referentiel
from services.common.storage.db import DATABASE_AWAY, REFUSED_BY_DATABASE, Conn, advisory_key, transaction

log = structlog.get_logger(__name__)
T = TypeVar("T")


class Encodable(Protocol):
    def to_bytes(self) -> bytes | None: ...


class Tombstone:
    """A record without a value: on a compacted topic, the end of its key."""

    def to_bytes(self) -> None:
        return None


TOMBSTONE = Tombstone()


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """An event a service built as bytes, not as a CloudEvent model (a derived record, an alert:
    from values the contract validated already): its record value, encoded once, and what it
    carries (`data`) for whoever looks at it before (logs, tests)."""

    type: str
    id: str
    data: dict[str, Any]
    value: bytes

    def to_bytes(self) -> bytes:
        return self.value


E = TypeVar("E", bound=Encodable)


@dataclass(frozen=True)
class Outgoing(Generic[E]):
    """An event a service emits: a CloudEvent, or anything that gives its record value (an
    EncodedEvent); `cause` is the input event whose trace it continues."""

    topic: str
    key: str
    event: E
    cause: CloudEvent | None = None
    twin: Twin | None = None
    """The same record on a second topic too, from the same outbox row (an alert event on its
    state table); its topic as `topic` is, before ServiceSettings.topic."""


@dataclass
class Applied:
    stale: list[CloudEvent] = field(default_factory=list)
    outgoing: list[Outgoing] = field(default_factory=list)
    committed: list[Callable[[], None]] = field(default_factory=list)
    """What to say once the transaction commits (log lines of what it did): not before, for a
    transaction rolled back and taken again would say it twice, or say what never happened."""


ApplyFn = Callable[[Any, Sequence[CloudEvent], Mapping[str, CloudEvent]], Awaitable[Applied]]
"""A service's use case: given its store (over the batch's transaction), the new, accepted,
non-référentiel events of a batch and the UAIs whose référentiel entry changed in it (each with
its `etablissement` event, the cause of what follows from the change), store the state and say
what to emit."""


_CONFLICT = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
_ATTEMPTS = 5
FAILED_LINE_SECONDS = 60.0
"""A batch failing again and again (a record the code fails on, taken again every second): its
traceback said at most this often per type of error, with how many failed since (`untold`)."""


class PartitionsFailed(Exception):
    """Some partitions of a batch failed, or were revoked while it was handled, the others
    committed (Pipeline._apart): `records`, those of the partitions that failed, are the ones to
    take again; `committed`, the others' (a revoked partition's in neither: its next owner's)."""

    def __init__(self, records: Sequence[ConsumerRecord], committed: Sequence[ConsumerRecord]) -> None:
        super().__init__(f"{len(records)} records of partitions that failed")
        self.records, self.committed = records, committed


_SPLITTING: ContextVar[bool] = ContextVar("splitting", default=False)
"""Whether a batch is being handled partition by partition (Pipeline._apart): a part that fails
does not pause, the split does once."""


def _by_partition(records: Sequence[ConsumerRecord]) -> list[list[ConsumerRecord]]:
    """The records of each partition, in their order."""
    parts: dict[tuple[str, int], list[ConsumerRecord]] = {}
    for record in records:
        parts.setdefault((record.topic, record.partition), []).append(record)
    return list(parts.values())


def _recovered(ended: Failing | None) -> None:
    """Said when a commit ended failures in a row (Metrics.committed), whichever commit it was."""
    if ended is not None:
        log.info("batch.recovered", after_s=ended.seconds(), error=ended.error)


class Tracebacks:
    """When a failed batch's traceback is said: at most once per FAILED_LINE_SECONDS for each
    type of error (the code's own: a few), so that one stuck partition's does not keep another
    failure's from being said. Not a run's first at once: the replica's other partitions
    committing between would start a run every second."""

    def __init__(self) -> None:
        self._said_at: dict[str, float] = {}
        self._unsaid: dict[str, int] = {}

    def due(self, error: str) -> int | None:
        """A failure of this type: how many of its type were not said since its last one, when
        it is to be said now; None when not."""
        now = time.monotonic()
        if now - self._said_at.get(error, -math.inf) < FAILED_LINE_SECONDS:
            self._unsaid[error] = self._unsaid.get(error, 0) + 1
            return None
        self._said_at[error] = now
        return self._unsaid.pop(error, 0)


_PRINCIPAL_MAX = 256  # characters of an auth-principal header kept with the inbox row
LOG_APPEND_TIME = 1
"""A record's `timestamp_type` when the broker stamped it (Kafka's TimestampType.LOG_APPEND_TIME)."""
_AHEAD_SLICE = 25  # records parsed ahead between two turns of the event loop: ~0.2 ms, which a reply waits at most

REVIVAL_UAIS, REVIVAL_RECORDS = 250, 2000
"""UAIs whose records refused `uai-inconnu` one pass of `Pipeline.revive` looks at, and waiting
records one of its transactions takes, UAIs' together, up to (a batch's, BATCH_MAX_RECORDS's
default). A UAI's all in one transaction, so that two of one entity with the same time keep
their order of arrival (the later wins): in two, the first one's state, held, would count as
come after the second. A UAI with more is judged in parts of REVIVAL_RECORDS, in their order,
in that one transaction: memory holds one part (entities.Revival keeps the ties right)."""

Parsed = dict[int, tuple[ConsumerRecord, CloudEvent | ContractError]]
"""Records parsed ahead of their batch, by the id of the record, with the record (so that
an id is never taken for another record's)."""


def writer_lock(schema: str) -> int:
    """The advisory lock every writing transaction of `schema` holds in shared mode."""
    return advisory_key(f"writers:{schema}")


TRACEPARENT_OF: ContextVar[Callable[[CloudEvent], str | None]] = ContextVar("traceparent_of", default=lambda _: None)
"""While a batch is applied: the `traceparent` a record caused by this event carries (its own
record's context, else the batch span's; None without either), for work the batch leaves to
later (ressources' re-evaluations), whose records continue the same trace."""


@dataclass
class _Isolated:
    """What the records of a batch isolated record by record came to (`batch.isolated`)."""

    applied: int = 0
    stale: int = 0
    duplicates: int = 0
    refused: Counter[str] = field(default_factory=Counter)


_ISOLATING: ContextVar[_Isolated | None] = ContextVar("isolating", default=None)
"""While a batch is handled record by record (Pipeline._isolate): what they came to, said once
for the batch (`batch.isolated`), each record's own line at DEBUG."""


def _links(each_headers: Iterable) -> list[trace.Link]:
    """A link to each valid trace context among the records' headers, once each, without its
    `tracestate`: a partner's entries of its own choosing, which the console exporter printed
    (the OTLP one leaves a link's out; audit s64 privacy F5)."""
    contexts = (trace.get_current_span(context_from_headers(h)).get_span_context() for h in each_headers)
    return [
        trace.Link(trace.SpanContext(c.trace_id, c.span_id, is_remote=True, trace_flags=c.trace_flags))
        for c in {(c.trace_id, c.span_id): c for c in contexts if c.is_valid}.values()
    ]


class Pipeline:
    def __init__(
        self,
        service: str,
        settings: ServiceSettings,
        apply: ApplyFn,
        store: Callable[[Conn], Any],
        parse: Callable[..., CloudEvent] = c.parse_event,
        dead_letters_for: Sequence[str] = (),
    ):
        self.service = service
        self.settings = settings
        self._apply = apply
        self._store = store
        self._parse = parse
        # One writer per DLQ: a topic several services read (the référentiel) is
        # dead-lettered by its owner only; the others skip what it refuses.
        self._dead_letters_for = {settings.topic(t) for t in dead_letters_for}
        self._pool: asyncpg.Pool | None = None
        self._relay: OutboxRelay | None = None
        self._revival_due = asyncio.Event()
        self._revival_uais: set[str] = set()
        self._reviving = 0
        self._revival_outage = Outage(
            log,
            "referentiel.revival_failed",
            "referentiel.revival_recovered",
            "PostgreSQL away: the records waiting for their établissement are judged again once it is back",
        )
        self.metrics = Metrics(service)
        self._tracebacks = Tracebacks()

    def attach(self, pool: asyncpg.Pool, relay: OutboxRelay) -> None:
        """The runtime the pipeline works with, once the service has opened its database."""
        self._pool, self._relay = pool, relay

    @property
    def started(self) -> bool:
        return self._pool is not None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError(f"{self.service}: the pipeline is not started (no database yet)")
        return self._pool

    @property
    def relay(self) -> OutboxRelay:
        if self._relay is None:
            raise RuntimeError(f"{self.service}: the pipeline is not started (no outbox relay yet)")
        return self._relay

    def _parse_one(self, record: ConsumerRecord, now: datetime) -> CloudEvent | ContractError:
        """`now`: the reading service's clock, for a record the broker did not stamp (_received)."""
        # Our own services' records are not judged by their time (their `version` orders them):
        # a producer's clock ahead of this one's would otherwise dead-letter its records, and
        # with one a whole group (contracts/internal.py).
        topic = self.settings.unprefixed(record.topic)
        not_after = None if topic in INTERNAL_TOPICS else _received(record, now) + self.settings.max_clock_skew
        try:
            return self._parse(record.value or b"", topic, not_after=not_after)
        except ContractError as e:
            return e

    async def parse_ahead(self, records: Sequence[ConsumerRecord]) -> Parsed:
        """Each record parsed and validated before its batch is handled: the consumer takes the
        next batch while this one's transaction waits on PostgreSQL (messaging/consumer.py), and
        the event loop would be idle meanwhile. A slice at a time, so that this batch's replies
        are not held up behind the whole next batch."""
        parsed: Parsed = {}
        for start in range(0, len(records), _AHEAD_SLICE):
            now = datetime.now(UTC)
            for record in records[start : start + _AHEAD_SLICE]:
                parsed[id(record)] = (record, self._parse_one(record, now))
            await asyncio.sleep(0)
        return parsed

    def _parse_all(
        self, records: Sequence[ConsumerRecord], ahead: Parsed
    ) -> tuple[list[tuple[CloudEvent, ConsumerRecord]], list[dlq.Rejection]]:
        parsed, rejected = [], []
        now = datetime.now(UTC)
        for record in records:
            entry = ahead.get(id(record))
            result = entry[1] if entry is not None and entry[0] is record else self._parse_one(record, now)
            if isinstance(result, ContractError):
                rejected.append(dlq.Rejection(record, result.code, result.message))
            else:
                parsed.append((result, record))
        return parsed, rejected

    async def handle(
        self,
        records: Sequence[ConsumerRecord],
        ahead: Parsed | None = None,
        assigned: Callable[[str, int], bool] | None = None,
    ) -> None:
        """`ahead`: what `parse_ahead` made of some of these records (the others are parsed here);
        `assigned`: whether a partition is still this replica's (a split skips those that are not)."""
        started = time.monotonic()
        parsed, rejected = self._parse_all(records, ahead or {})
        # One span per batch (OpenTelemetry's messaging conventions for a batch receive), linked
        # to each record's trace context, once however many records share it (a partner's batch
        # posted to the passerelle: one); an outgoing record continues its cause's trace.
        recording = tracer_is_recording()
        links = _links(r.headers for _, r in parsed) if recording else []
        # The provider in force now (a module's tracer would keep the first one it resolved to).
        with trace.get_tracer(__name__).start_as_current_span(
            f"process {self.service}",
            kind=trace.SpanKind.CONSUMER,
            links=links,
            attributes=self._span_attributes(records) if recording else None,
            record_exception=False,
            set_status_on_exception=False,  # its message may quote a value: _failed names it
        ) as span:
            apart: Exception | None = None  # what failed a batch to handle again apart, within its span
            for attempt in range(1, _ATTEMPTS + 1):
                try:
                    # The rights add refusals to `rejected`: each attempt starts from the parser's.
                    outgoing = await self._transaction(parsed, list(rejected), span, started)
                    break
                except _CONFLICT as exc:  # replicas deriving the same keys: the batch is replayed
                    if attempt == _ATTEMPTS:
                        _failed(span, exc)
                        failing = self.metrics.batch_failed(type(exc).__name__, records)
                        log.exception(
                            "batch.failed", records=len(records), attempts=attempt, partitions=list(failing.latest)
                        )
                        logs.said(exc)  # FastStream, which it is raised to, logged it again
                        if not _SPLITTING.get():
                            await asyncio.sleep(1)
                        raise
                    log.info("batch.retried", error=type(exc).__name__, attempt=attempt)
                    await asyncio.sleep(0.05 * attempt)
                except REFUSED_BY_DATABASE as exc:
                    if len(records) == 1:
                        _failed(span, exc)
                    else:
                        _handled_apart(span, exc)
                    apart = exc
                    break
                except Exception as exc:
                    if not isinstance(exc, DATABASE_AWAY) and len(_by_partition(records)) > 1:
                        _handled_apart(span, exc)
                        apart = exc
                        break
                    _failed(span, exc)
                    failing = self.metrics.batch_failed(type(exc).__name__, records)
                    if not isinstance(exc, DATABASE_AWAY):
                        # Where it is: a record the code fails on stops its partition (the
                        # batch's others go on: _apart), and skipping it (README, Rebuild and
                        # backups) needs where.
                        # Its traceback once a minute at most (Tracebacks): each second's, 86,400 a
                        # day, buried every other line.
                        if (untold := self._tracebacks.due(type(exc).__name__)) is not None:
                            partitions = list(failing.latest)
                            log.exception("batch.failed", records=len(records), partitions=partitions, untold=untold)
                        else:
                            log.debug("batch.failed", records=len(records), error=type(exc).__name__)
                    elif not failing.said:  # PostgreSQL away: said once, not a traceback a second until it is back
                        self.metrics.said_away()
                        log.warning(
                            "batch.failed",
                            records=len(records),
                            error=type(exc).__name__,
                            detail=redact(str(exc)),
                            hint="PostgreSQL away or refusing writes: the batch is taken again every second "
                            "(/health batches_failing says since when)",
                        )
                    else:
                        log.debug("batch.failed", records=len(records), error=type(exc).__name__)
                    logs.said(exc)  # FastStream, which it is raised to, logged it again
                    if not _SPLITTING.get():  # a part's: the split pauses once for all its parts
                        await asyncio.sleep(1)  # the batch is redelivered (nack): do not spin on a broken database
                    raise
            if apart is not None:  # out of its `except`: a part's traceback does not carry the batch's
                try:
                    if len(parts := _by_partition(records)) > 1:  # a record the code fails on may be among them
                        await self._apart(parts, ahead, apart, assigned)
                    else:
                        await self._isolate(records, apart)
                except Exception as again:
                    if not isinstance(again, PartitionsFailed) or again.records:  # failed again, not only revoked
                        _failed(span, again)
                    raise
                finally:
                    apart = None  # its traceback holds this frame: no cycle left holding the records
                return
        if outgoing or rejected:
            self.relay.wake()

    def _span_attributes(self, records: Sequence[ConsumerRecord]) -> dict[str, str | int]:
        """A batch span's attributes, OpenTelemetry's messaging conventions: the operation, the
        consumer group, the records' topic and partition when they share one, and their count
        (for a batch: a record taken alone while its batch is isolated has none)."""
        attributes: dict[str, str | int] = {
            "messaging.system": "kafka",
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.consumer.group.name": self.settings.topic(self.service),
        }
        if len(records) != 1:
            attributes["messaging.batch.message_count"] = len(records)
        if len(topics := {r.topic for r in records}) == 1:
            attributes["messaging.destination.name"] = next(iter(topics))
            if len(partitions := {r.partition for r in records}) == 1:
                attributes["messaging.destination.partition.id"] = str(next(iter(partitions)))
        return attributes

    async def _apart(
        self,
        parts: list[list[ConsumerRecord]],
        ahead: Parsed | None,
        exc: Exception,
        assigned: Callable[[str, int], bool] | None = None,
    ) -> None:
        """A batch of several partitions failed other than for PostgreSQL being away (a record the
        code fails on, or one PostgreSQL refuses): each partition's records handled alone, so that
        the others commit; the batch failed before on every try, its one record holding every
        partition it shared a batch with (a refusal's isolation, record by record over them all,
        stopped at it too). PartitionsFailed names the records of those that failed again (given
        back, the others not read again), each said by its own try. A part whose partition was
        revoked meanwhile (parts wait for those before) is left to its new owner, which takes it
        from the positions committed in the database: in neither list (PartitionsFailed raised for
        it too, that its Kafka offsets are not committed past it)."""
        failed: list[ConsumerRecord] = []
        committed: list[ConsumerRecord] = []
        first: Exception | None = None
        revoked = 0
        splitting = _SPLITTING.set(True)
        try:
            for part in parts:
                if assigned is not None and not assigned(part[0].topic, part[0].partition):
                    revoked += 1
                    continue
                try:
                    await self.handle(part, ahead)
                except Exception as again:
                    failed += part
                    first = first or again
                else:
                    committed += part
        finally:
            _SPLITTING.reset(splitting)
        error, said = type(exc).__name__, {"partitions": len(parts), "revoked": revoked}
        if first is None:  # the batch failed whole, each of its partitions committed alone: said, once
            if isinstance(exc, REFUSED_BY_DATABASE) or not committed:  # its part dead-lettered it; no part ran
                log.info("batch.split", **said, error=error, failed=0)
            elif (untold := self._tracebacks.due(f"split:{error}")) is not None:
                # A failure records of several partitions meet together, or one that passed: the
                # code's, told with its traceback (at most once a minute per type, as batch.failed).
                log.warning("batch.split", **said, error=error, failed=0, untold=untold, exc_info=exc)
            else:
                log.debug("batch.split", **said, error=error, failed=0)
            if not revoked:
                return
        else:
            log.debug("batch.split", **said, error=error, failed=len(_by_partition(failed)))
        raised = PartitionsFailed(failed, committed)
        logs.said(raised)  # each failure said by its own try: FastStream's line not needed
        if first is not None:
            await asyncio.sleep(1)  # taken again: do not spin (its parts did not pause)
        try:
            raise raised from first
        finally:  # their tracebacks hold this frame: no cycle left holding the records
            del raised, first

    async def _isolate(self, records: Sequence[ConsumerRecord], exc: Exception) -> None:
        """A record the contract accepts but PostgreSQL refuses (a NUL character, a number
        beyond its column, a key beyond an index's size) must not block its partition: find it
        by handling the batch record by record, and dead-letter it alone."""
        if len(records) > 1:
            log.warning("batch.isolating", records=len(records), error=refused_by_database(exc))
            started, outcomes = time.monotonic(), _Isolated()
            token = _ISOLATING.set(outcomes)
            try:
                for record in records:
                    await self.handle([record])
            finally:
                _ISOLATING.reset(token)
            log.info(
                "batch.isolated",
                records=len(records),
                applied=outcomes.applied,
                stale=outcomes.stale,
                duplicates=outcomes.duplicates,
                refused=dict(outcomes.refused),
                duration_ms=round((time.monotonic() - started) * 1000),
            )
            return
        [record] = records
        refusal = _refused_by_database(record, exc)
        async with self._exclusive() as conn:
            told = await dlq.reject(conn, [refusal] if record.topic in self._dead_letters_for else [])
            await positions.advance(conn, [record])
        told.say()
        if record.topic not in self._dead_letters_for:  # no DLQ of its own: passed, said here alone
            log.warning(
                "record.refused_by_database",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                reason=refusal.code,
                error=refused_by_database(exc),
            )
        if (isolating := _ISOLATING.get()) is not None:
            isolating.refused[refusal.code] += 1
        self.metrics.refused(refusal.code)
        self.metrics.handled([record])
        _recovered(self.metrics.committed([record]))
        self.relay.wake()

    @asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[Conn]:
        """One writing transaction. No schema-wide lock between writers: replicas on different
        partitions do not wait for each other; what a service derives from records of several
        partitions (a UAI's coverage, profile, alerts) its use case locks per key
        (storage/locks.py). Each holds the schema's writer lock in shared mode, which only a
        rebuild's switch takes alone (`writer_lock`, deploy/reconstruire.py): while it does, no
        state, outbox record or position is written."""
        lock = writer_lock(self.settings.db_schema or self.service)
        async with self.pool.acquire() as conn, transaction(conn, f"SELECT pg_advisory_xact_lock_shared({lock})"):
            yield conn

    async def _transaction(self, parsed, rejected: list[dlq.Rejection], span: trace.Span, started: float) -> int:
        records = [r for _, r in parsed] + [rejection.record for rejection in rejected]  # before rights refusals
        async with self._exclusive() as conn:
            done = await self._judge(conn, parsed, rejected, span)
            told = await dlq.reject(conn, [r for r in rejected if r.record.topic in self._dead_letters_for])
            await positions.advance(conn, records)
        told.say()
        done.say()
        self._log_batch(records, done, rejected, started)
        # A record to judge again once its UAI is known, or UAIs the référentiel brought.
        if told.awaiting or done.known:
            self._due({r.awaits for r in rejected if r.awaits is not None} | done.known)
        return done.outgoing

    async def _judge(self, conn: Conn, parsed, rejected: list[dlq.Rejection], span: trace.Span) -> "_Judged":
        """The rights, the inbox and the service's use case over parsed records, in the caller's
        transaction; refusals are added to `rejected`, and outgoing events to the outbox."""
        # Our own services' topics carry derived state; partners' topics go through the rights.
        topics = {t: self.settings.unprefixed(t) for t in {r.topic for _, r in parsed}}
        internal = [(e, r) for e, r in parsed if topics[r.topic] in INTERNAL_TOPICS]
        external = [(e, r) for e, r in parsed if topics[r.topic] not in INTERNAL_TOPICS]
        refused_before = len(rejected)
        # Référentiel first: an établissement and an event about it may share a batch.
        ref_events = [(e, r) for e, r in external if e.type == c.ETABLISSEMENT]
        principals = {id(e): _principal(r.headers) for e, r in external if topics[r.topic] in c.DECLARED_OVER_HTTP}
        principal = lambda e: principals.get(id(e))  # noqa: E731
        fresh_ref = await self._claim_and_check(conn, ref_events, {}, rejected, principal)
        stale, changed_uais = await referentiel.apply(conn, fresh_ref)

        others = [(e, r) for e, r in external if e.type != c.ETABLISSEMENT]
        etabs = await referentiel.load(conn, [u for e, _ in others if (u := uai_of(e))])
        fresh = await self._claim_and_check(conn, others, etabs, rejected, principal)
        fresh += await inbox.claim(conn, [e for e, _ in internal])
        accepted = len(parsed) - (len(rejected) - refused_before)  # not refused: the fresh and the duplicates
        contexts = {id(e): r.headers for e, r in parsed}
        traced = TRACEPARENT_OF.set(lambda e: trace_headers(contexts.get(id(e)), span).get("traceparent"))
        try:
            applied = await self._apply(self._store(conn), fresh, changed_uais)
        finally:
            TRACEPARENT_OF.reset(traced)
        stale += applied.stale
        await inbox.mark_stale(conn, stale)
        await enqueue(conn, self._records(applied.outgoing, contexts, span))
        return _Judged(fresh_ref + fresh, stale, accepted, len(applied.outgoing), set(changed_uais), applied.committed)

    async def revive(self, uais: Collection[str] | None = None) -> int:
        """The records refused `uai-inconnu` whose établissement the référentiel now holds (of
        these UAIs; None: of any), judged again, those of REVIVAL_UAIS UAIs at a time, UAIs'
        together up to REVIVAL_RECORDS a transaction, in arrival order per partition: accepted,
        they are applied as if they came now (the inbox drops one applied meanwhile, replayed by
        an operator), but a state held with their `time` came after them and keeps equal times
        (entities.Revival); refused for another reason, dead-lettered again with it.
        Returns how many were judged.

        Both sides look after committing: a batch that refuses a record for want of its UAI, and
        one that stores UAIs in the référentiel, each ask for this with their UAIs (`_due`), so
        whichever of the two commits last finds the other's rows. Replicas may look at once: a
        waiting row is judged by the transaction that deletes it. A record whose judgement fails
        other than for its data (a fault) is logged and left waiting for the next pass, the others
        judged all the same (then one at a time: the fault's UAI's records apart, equal times
        among them no longer keep their order); PostgreSQL away ends the pass (raised)."""
        judged, after = 0, ""
        # Two statements: one plan each (a generic plan for both would not use the index on uai).
        targeted = "AND a.uai = ANY($2::text[]) " if uais is not None else ""
        query = (
            "SELECT uai, count(*) AS waiting FROM attente_referentiel a "
            f"WHERE EXISTS (SELECT FROM etablissements e WHERE e.uai = a.uai) {targeted}"
            f"AND a.uai > $1 GROUP BY uai ORDER BY uai LIMIT {REVIVAL_UAIS}"
        )
        while True:
            due = await self.pool.fetch(query, after, *([sorted(uais)] if uais is not None else []))
            if not due:
                return judged
            after = due[-1]["uai"]
            together: list[str] = []
            size = 0
            for row in due:  # a UAI with more than REVIVAL_RECORDS alone
                if together and size + row["waiting"] > REVIVAL_RECORDS:
                    judged += await self._revive_uais(together)
                    together, size = [], 0
                together.append(row["uai"])
                size += row["waiting"]
            judged += await self._revive_uais(together)

    async def _revive_uais(self, uais: list[str]) -> int:
        """Every waiting record of these UAIs in one transaction, each UAI's in arrival order
        (apart when one fails: `_revive_each`)."""
        if not uais:
            return 0
        rows = await self.pool.fetch(
            'SELECT uai, topic, partition, "offset" FROM attente_referentiel WHERE uai = ANY($1::text[]) '
            'ORDER BY topic, partition, "offset"',
            uais,
        )
        by_uai: dict[str, list[dlq.Origin]] = {}
        for r in rows:
            by_uai.setdefault(r["uai"], []).append((r["topic"], r["partition"], r["offset"]))
        groups = list(by_uai.values())
        try:
            return await self._revive(groups)
        except DATABASE_AWAY:
            raise
        except Exception as exc:
            log.warning("referentiel.revival_isolating", records=len(rows), error=type(exc).__name__)
            return await self._revive_each(groups)

    async def _revive_each(self, groups: list[list[dlq.Origin]]) -> int:
        """One UAI's records at a time, and those of a UAI that fails one at a time: a fault on one
        is logged and leaves it waiting (for the next full pass), not the others; PostgreSQL away
        ends the pass at once."""
        judged = 0
        for origins in groups:
            try:
                judged += await self._revive([origins])
                continue
            except DATABASE_AWAY:
                raise
            except Exception:
                if len(origins) == 1:
                    self._revival_failed(origins[0])
                    continue
            for origin in origins:
                try:
                    judged += await self._revive([[origin]])
                except DATABASE_AWAY:
                    raise
                except Exception:
                    self._revival_failed(origin)
        return judged

    @staticmethod
    def _revival_failed(origin: dlq.Origin) -> None:
        topic, partition, offset = origin
        log.exception("referentiel.revival_failed", topic=topic, partition=partition, offset=offset, left_waiting=True)

    @property
    def revivals_pending(self) -> int:
        """UAIs whose waiting records batches asked to judge again, not looked at yet (/health)."""
        return len(self._revival_uais) + self._reviving

    def _due(self, uais: Collection[str]) -> None:
        """A revival of these UAIs' waiting records, as soon as the background task can (a
        service that dead-letters nothing, the passerelle, has none to revive)."""
        if self._dead_letters_for:
            self._revival_uais |= set(uais)
            self._revival_due.set()

    async def revive_if_due(self) -> int:
        """`revive` the UAIs batches asked for since the last time."""
        if not self._revival_due.is_set():
            return 0
        self._revival_due.clear()
        uais, self._revival_uais = self._revival_uais, set()
        self._reviving = len(uais)
        try:
            return await self.revive(uais)
        finally:
            self._reviving = 0

    async def revive_continually(self, period: float) -> None:
        """`revive` when batches ask for it (`_due`), and every record whose établissement is
        known every `period` seconds and at start: one stopped between such a batch and its
        revival, or whose revival failed, is judged then. A failure is logged and tried again."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                self._revival_due.clear()  # what batches asked for so far, this pass covers
                self._revival_uais = set()
                await self.revive()
                self._revival_outage.succeeded()
                deadline = loop.time() + period
                while (left := deadline - loop.time()) > 0:  # a steady stream of requests delays no full pass
                    try:
                        async with asyncio.timeout(left):
                            await self._revival_due.wait()
                    except TimeoutError:
                        break
                    await self.revive_if_due()
            except Exception as exc:
                self._revival_outage.failed(exc, retried_within_seconds=period)
                await asyncio.sleep(period)

    async def _revive(self, groups: list[list[dlq.Origin]]) -> int:
        """These records, a UAI's in each group, judged again in one transaction."""
        origins = [o for group in groups for o in group]
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return await self._revival(origins)
            except _CONFLICT as exc:
                if attempt == _ATTEMPTS:
                    raise
                log.info("referentiel.revival_retried", error=type(exc).__name__, attempt=attempt)
                await asyncio.sleep(0.05 * attempt)
            except REFUSED_BY_DATABASE as exc:  # as `_isolate`: the culprit refused alone
                if len(origins) > 1:
                    # Its UAI's records apart first, so the others' keep their order (equal times).
                    return sum(
                        [await self._revive([g]) for g in groups]
                        if len(groups) > 1
                        else [await self._revive([[o]]) for o in origins]
                    )
                async with self._exclusive() as conn:
                    records = await _waiting(conn, origins)
                    told = await dlq.rejudged(conn, [], [_refused_by_database(r, exc) for r in records])
                told.say()
                self.metrics.revived(0, 0, 0, {"donnees-invalides": len(records)} if records else {})
                self.relay.wake()
                return len(records)
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def _part_span(self, records: Sequence[ConsumerRecord]) -> AbstractContextManager[trace.Span]:
        """A revival part's span, in its transaction's (`revive <service>`): a batch of records
        processed again, linked to each one's trace context as its batch's span was. A span per
        part: one for the transaction's parts (several for a UAI with more than REVIVAL_RECORDS
        waiting) linked past the span's bound (max_links), whose links the SDK then dropped
        without a word."""
        recording = tracer_is_recording()
        return trace.get_tracer(__name__).start_as_current_span(
            f"process {self.service}",
            kind=trace.SpanKind.CONSUMER,
            links=_links(r.headers for r in records) if recording else [],
            attributes=self._span_attributes(records) if recording else None,
            record_exception=False,
            set_status_on_exception=False,  # its message may quote a value: _failing names it
        )

    async def _revival(self, origins: list[dlq.Origin]) -> int:
        """These records judged again in one transaction, REVIVAL_RECORDS at a time in their
        order (memory bounded by that, however many a UAI has; at DEBUG, a line per record refused
        is kept until the commit says it): a part's equal times go to a
        state an earlier part stored, which arrived before them (entities.Revival)."""
        started = time.monotonic()
        judged = applied = stale = duplicates = 0
        refused_by: Counter[str] = Counter()
        said: list[Callable[[], None]] = []  # what to say once committed (not the parts' events: memory)
        with (
            trace.get_tracer(__name__).start_as_current_span(
                # Not a receive (records read back from the database), its parts are: each a
                # `process` span of the messaging conventions, linking its records' traces.
                f"revive {self.service}",
                kind=trace.SpanKind.INTERNAL,
                attributes={"feo.revival.records": len(origins)},
                record_exception=False,
                set_status_on_exception=False,  # PostgreSQL's refusal, raised from here, quotes the row
            ) as span,
            _failing(span),
        ):
            async with self._exclusive() as conn:
                # They came before whatever state their entities hold now: equal times go to that.
                revival = entities.REVIVAL.set(entities.Revival())
                try:
                    for n in range(0, len(origins), REVIVAL_RECORDS):
                        records = await _waiting(conn, origins[n : n + REVIVAL_RECORDS])  # another replica's are gone
                        parsed, rejected = self._parse_all(records, {})
                        with self._part_span(records) as part, _failing(part):
                            done = await self._judge(conn, parsed, rejected, part)
                        said += done.committed
                        refused = {id(r.record) for r in rejected}
                        accepted = [(r.topic, r.partition, r.offset) for r in records if id(r) not in refused]
                        said.append((await dlq.rejudged(conn, accepted, rejected)).say)
                        judged += len(records)
                        applied, stale, duplicates = (
                            applied + done.applied,
                            stale + len(done.stale),
                            duplicates + done.duplicates,
                        )
                        refused_by.update(r.code for r in rejected)
                finally:
                    entities.REVIVAL.reset(revival)
        for say in said:
            say()
        if judged:
            self.relay.wake()
            self.metrics.revived(applied, stale, duplicates, dict(refused_by))
            log.info(
                "referentiel.revived",
                records=judged,
                applied=applied,
                stale=stale,
                duplicates=duplicates,
                refused=dict(refused_by),
                duration_ms=round((time.monotonic() - started) * 1000),
            )
        return judged

    async def run(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """Work outside a batch that writes nothing (a lookup): `work` gets the store."""
        async with self.pool.acquire() as conn:
            return await work(self._store(conn))

    async def run_exclusive(
        self, work: Callable[[Any], Awaitable[list[Outgoing]]], traceparent: Callable[[], str | None] = lambda: None
    ) -> int:
        """Work outside a batch (a chunk of a re-evaluation, say) with a batch's guarantees: one
        writing transaction (`_exclusive`: the writer lock in shared mode; the work locks the keys
        it derives), its events through the outbox; `work` gets the store. Its records carry
        `traceparent()`, asked once the work is done (the trace of what requested it)."""
        async with self._exclusive() as conn:
            outgoing = await work(self._store(conn))
            cause = traceparent()
            requested = [("traceparent", cause.encode())] if cause else None
            await enqueue(conn, self._records(outgoing, {}, None, requested))
        if outgoing:
            self.relay.wake()
        return len(outgoing)

    async def _claim_and_check(
        self, conn: Conn, items, etabs: dict, rejected: list[dlq.Rejection], principal
    ) -> list[CloudEvent]:
        """The events of `items` never accepted before that the rights accept, claimed in the
        inbox. The inbox first: an event accepted before and received again (a batch taken
        again after its commit's answer was lost, a partner sending it again) has no second
        effect, even when the rights would now refuse it (its établissement moved since):
        judged again, it was dead-lettered though applied. A new event they refuse leaves no
        inbox row (sent again once the rights allow it, it is applied), also when it is sent again
        in the same batch: an event of the same key (`inbox.key`) as one refused before it in
        `items` (corrected, say) is judged after it, not taken for its duplicate (it was lost). The accepted
        in their order in `items`: of one entity's events at the same `time`, the later wins."""
        accepted: list[CloudEvent] = []
        arrived, rounds = items, 0
        while items:
            rounds += 1
            first: list[tuple[CloudEvent, ConsumerRecord]] = []
            later: list[tuple[CloudEvent, ConsumerRecord]] = []
            keys: set[inbox.Key] = set()
            for e, r in items:
                (later if inbox.key(e) in keys else first).append((e, r))
                keys.add(inbox.key(e))
            claimed = {id(e) for e in await inbox.claim(conn, [e for e, _ in first], principal)}
            fresh = [(e, r) for e, r in first if id(e) in claimed]
            kept = {id(e) for e in self._check(fresh, etabs, rejected)}
            released = [e for e, _ in fresh if id(e) not in kept]
            await inbox.release(conn, released)
            accepted += (e for e, _ in fresh if id(e) in kept)
            again = {inbox.key(e) for e in released}
            items = [(e, r) for e, r in later if inbox.key(e) in again]
        if rounds > 1:  # a round's accepted came after the events of the rounds before
            position = {id(e): i for i, (e, _) in enumerate(arrived)}
            accepted.sort(key=lambda e: position[id(e)])
        return accepted

    def _check(self, items, etabs: dict, rejected: list[dlq.Rejection]) -> list[CloudEvent]:
        accepted = []
        for event, record in items:
            refusal = rights.check(event, parse_source(event.source), etabs.get(uai_of(event) or ""))
            if refusal:
                awaits = uai_of(event) if refusal.code == rights.UAI_INCONNU else None
                rejected.append(dlq.Rejection(record, refusal.code, refusal.message, awaits))
            else:
                accepted.append(event)
        return accepted

    def _records(
        self,
        outgoing: Sequence[Outgoing],
        contexts: dict[int, Any],
        span: trace.Span | None,
        otherwise: Any = None,
    ) -> list[OutboxRecord]:
        """The outbox records of `outgoing`; `contexts`: each cause's record headers, by id
        (`otherwise` for a cause without). Trace headers are built once per cause (a batch's
        records share a few causes)."""
        headers: dict[int, tuple[tuple[str, bytes], ...]] = {}
        records = []
        for out in outgoing:
            cause = id(out.cause)
            if cause not in headers:
                carried = {"content-type": c.CONTENT_TYPE, **trace_headers(contexts.get(cause, otherwise), span)}
                headers[cause] = tuple((k, v.encode()) for k, v in carried.items())
            twin = out.twin and out.twin._replace(topic=self.settings.topic(out.twin.topic))
            records.append(
                OutboxRecord(
                    self.settings.topic(out.topic), out.key.encode(), out.event.to_bytes(), headers[cause], twin
                )
            )
        return records

    def _log_batch(
        self, records: list[ConsumerRecord], done: "_Judged", rejected: list[dlq.Rejection], started: float
    ) -> None:
        """One INFO line per batch, once committed; one DEBUG line per new event."""
        stale_ids = {id(e) for e in done.stale}
        # Checked once per batch: a skipped call still builds its arguments, for every event.
        for event in done.fresh if log.is_enabled_for(logging.DEBUG) else ():
            log.debug(
                "event.stale" if id(event) in stale_ids else "event.applied",
                event_id=event.id,
                event_type=event.type,
                source=event.source,
                **_about(event),
            )
        partitions: dict[str, set[int]] = {}
        for record in records:
            partitions.setdefault(record.topic, set()).add(record.partition)
        refused = dict(Counter(r.code for r in rejected))
        seconds = time.monotonic() - started
        _recovered(self.metrics.batch(done.applied, len(done.stale), done.duplicates, refused, seconds, records))
        self.metrics.handled(records)
        if (outcomes := _ISOLATING.get()) is not None:  # one record of a batch isolated: said with it
            outcomes.applied += done.applied
            outcomes.stale += len(done.stale)
            outcomes.duplicates += done.duplicates
            outcomes.refused.update(refused)
        (log.debug if outcomes is not None else log.info)(
            "batch.applied",
            records=len(records),
            applied=done.applied,
            stale=len(done.stale),
            duplicates=done.duplicates,
            refused=refused,
            duration_ms=round(seconds * 1000),
            partitions={topic: sorted(p) for topic, p in sorted(partitions.items())},
        )


@dataclass(frozen=True)
class _Judged:
    fresh: list[CloudEvent]
    """The accepted events the inbox had not seen (référentiel ones first)."""
    stale: list[CloudEvent]
    accepted: int
    outgoing: int
    known: set[str]
    """UAIs whose référentiel entry this transaction stored."""
    committed: list[Callable[[], None]] = field(default_factory=list)
    """Applied.committed: called by `say` once the transaction committed."""

    def say(self) -> None:
        for said in self.committed:
            said()

    @property
    def applied(self) -> int:
        return len(self.fresh) - len(self.stale)

    @property
    def duplicates(self) -> int:
        """Accepted events the inbox had seen already."""
        return self.accepted - len(self.fresh)


def _received(record: ConsumerRecord, now: datetime) -> datetime:
    """When the platform received a record: the instant the broker appended it, on the partner
    topics that stamp it so (LogAppendTime, deploy/topology.py). A record's `time` is judged
    against it (`time-futur`), so every service, replica and rebuild reaches the same verdict
    however late it reads the record (a revived record passed it when first read); judged
    against its own clock, a service catching up accepted a record that the others had
    refused, and held a state they did not. Elsewhere (a topic made before, or a broker that
    keeps the producer's own timestamp) `now`, the reading service's clock."""
    if record.timestamp_type == LOG_APPEND_TIME:
        return datetime.fromtimestamp(record.timestamp / 1000, UTC)
    return now


async def _waiting(conn: Conn, origins: Sequence[dlq.Origin]) -> list[ConsumerRecord]:
    """These records waiting for their établissement, taken out of `attente_referentiel` (in the
    caller's transaction), as they were read: key, value and headers."""
    rows = await conn.fetch(
        'DELETE FROM attente_referentiel WHERE (topic, partition, "offset") '
        "IN (SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[])) "
        'RETURNING topic, partition, "offset", key, value, headers',
        *dlq.columns(origins),
    )
    rows = sorted(rows, key=lambda r: (r["topic"], r["partition"], r["offset"]))
    return [
        ConsumerRecord(
            r["topic"],
            r["partition"],
            r["offset"],
            -1,
            0,
            r["key"],
            r["value"],
            None,
            len(r["key"] or b""),
            len(r["value"]),
            list(load_headers(r["headers"])),
        )
        for r in rows
    ]


def _refused_by_database(record: ConsumerRecord, exc: Exception) -> dlq.Rejection:
    """A record the contract accepts but PostgreSQL refuses, dead-lettered alone."""
    return dlq.Rejection(record, "donnees-invalides", f"refusé à l'enregistrement: {refused_by_database(exc)}")


def _failed(span: trace.Span, exc: Exception) -> None:
    """The span marked failed, the exception named by its type (PostgreSQL's by its rule:
    refused_by_database), never by its message: asyncpg's quotes the refused row in its DETAIL
    ("Failing row contains (…)": a teacher_id), and traces go to a collector."""
    span.set_attribute("error.type", type(exc).__name__)
    span.set_status(trace.StatusCode.ERROR, refused_by_database(exc))
    _handled_apart(span, exc)


def _handled_apart(span: trace.Span, exc: Exception) -> None:
    """The failure told as an event of the span, named as _failed names it. Alone: a batch's span
    whose records are handled again apart, in spans of its own children (each partition's, each
    record's), not marked failed over parts that committed (review s71 3 #7); its lines
    (batch.split, batch.isolating) keep its trace id."""
    span.add_event("exception", {"exception.type": type(exc).__name__, "exception.message": refused_by_database(exc)})


@contextmanager
def _failing(span: trace.Span) -> Iterator[None]:
    """The span marked failed (`_failed`) by an exception that leaves the block."""
    try:
        yield
    except Exception as exc:
        _failed(span, exc)
        raise


def refused_by_database(exc: Exception) -> str:
    """What PostgreSQL refused, named by its rule (the error, its SQLSTATE, the table, column or
    constraint), never by a value: its message and DETAIL may quote them ("Failing row contains
    (…)"), and this goes to the DLQ header, the dead-letter log, the logs and the traces."""
    named = [type(exc).__name__]
    if isinstance(exc, asyncpg.PostgresError):
        named.append(f"SQLSTATE {exc.sqlstate}")
        for what in ("table", "column", "constraint"):
            if name := getattr(exc, f"{what}_name", None):
                named.append(f"{what} {name}")
    return ", ".join(named)


def _principal(headers) -> str | None:
    """The `auth-principal` header's value (the ingestion service's authenticated subject), its
    printable characters; any other bytes are not kept (a NUL would not even fit a text column)."""
    for name, value in headers or ():
        if name == c.PRINCIPAL_HEADER and value is not None:
            try:
                text = value.decode()
            except UnicodeDecodeError:
                return None
            return "".join(ch for ch in text if ch.isprintable())[:_PRINCIPAL_MAX] or None
    return None


def _about(event: CloudEvent) -> dict[str, str]:
    """What an event is about, for a log line: its UAI, else its resource (a catalogue entry)."""
    if uai := uai_of(event):
        return {"uai": uai}
    resource = getattr(event.data, "resource_id", None)
    return {"resource_id": resource} if resource else {}
