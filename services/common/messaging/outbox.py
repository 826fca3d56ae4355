"""Transactional outbox and its relay.

Every record a service emits (state it owns, alerts, dead letters) is written to `outbox` in
the same transaction as the state change that caused it. The relay publishes rows in `seq`
order with their stable CloudEvents id, then deletes them (the rows of a topic Kafka does not
have wait, with those behind them on their partitions: a key's records stay in order). A crash
between publish and delete republishes the same records with the same ids, which consumers'
inboxes ignore: nothing is lost, nothing takes effect twice.
"""

import asyncio
import contextlib
import time
from binascii import a2b_base64, b2a_base64
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidTopicError,
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NodeNotReadyError,
    OutOfOrderSequenceNumber,
    RecordListTooLargeError,
    RecordTooLargeError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from pydantic_core import from_json, to_json

from contracts import ALERTES, ALERTES_ETAT, dlq
from contracts.internal import COUVERTURES, PROFILS
from services.common.messaging.connection import KafkaAccess
from services.common.messaging.partitioner import partition_for
from services.common.runtime.outages import Outage
from services.common.runtime.wake import woken
from services.common.storage.db import DATABASE_AWAY, SERVER_KEEPALIVES, Conn, advisory_key, transaction

log = structlog.get_logger(__name__)

# Errors no retry will fix: the record is set aside (outbox_failed) so the rest goes on.
_UNPUBLISHABLE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError, InvalidTopicError)
OUT_OF_STEP = (*_UNPUBLISHABLE, OutOfOrderSequenceNumber)
"""A batch the broker refused had used sequence numbers of its partition (idempotence): the
producer's next batches there are refused as out of order, for as long as it lives. After one
of these, a producer is replaced by a new one."""


def silence(producer: AIOKafkaProducer) -> None:
    """`producer` sends no new request: its sender's task cancelled (a request already on the
    wire is answered or times out, and its batch goes back to a queue no task drains). aiokafka
    has no public way to do it (its `stop` waits for every batch to be answered, which an
    idempotent producer retries for as long as the broker does not answer): this reads its
    sender's task as `sender_died` does."""
    task = getattr(getattr(producer, "_sender", None), "sender_task", None)
    if isinstance(task, asyncio.Future):
        task.cancel()


def sender_died(producer: AIOKafkaProducer) -> BaseException | None:
    """Why `producer` can no longer send, if it cannot: aiokafka sends from one background task,
    which an unexpected error ends for good (its catch-all raises "Unexpected error during batch
    delivery", as does an OutOfOrderSequenceNumber); every later send then raises that error
    again. Such a producer is replaced, as after a refusal of OUT_OF_STEP. aiokafka has no public
    way to ask: this reads its sender's task (stable since 0.5), and says None if that changes."""
    task = getattr(getattr(producer, "_sender", None), "sender_task", None)
    if not isinstance(task, asyncio.Future) or not task.done() or task.cancelled():
        return None
    return task.exception()


Headers = tuple[tuple[str, bytes | None], ...]
"""Kafka record headers as they are: in order, names may repeat, values are bytes or null."""


TOPIC_LOOKUP_SECONDS = 5.0
"""How long a round waits for Kafka to name the partitions of a topic its metadata does not hold
yet (aiokafka's own wait is its request timeout, 40 s, at every round)."""

ABSENT_RECHECK_SECONDS = 30.0
"""How long the records of a topic Kafka did not know (or refused to the relay's principal) are
left out of the rounds before it is asked again."""


class TopicAbsent(Exception):
    """A record's topic, or its twin's, is not on the broker (deleted, not made yet) or not
    writable by the relay's principal: its row waits in the outbox, as do those behind it on a
    partition it holds, the other topics' records going on."""


AWAY = (*DATABASE_AWAY, KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError, RequestTimedOutError)
"""What a relay's round meets while Kafka or PostgreSQL is away: a state that passes, not a fault."""


class DatabaseReadOnly(asyncpg.ReadOnlySQLTransactionError):
    """PostgreSQL takes no writes (`transaction_read_only`): what reads it only goes on. The error
    PostgreSQL gives a write there, for what catches that (DATABASE_AWAY, the tools' messages)."""


_READ_ONLY = ("outbox.database_read_only", "nothing is published until PostgreSQL takes writes")
"""The relay's state while PostgreSQL takes no writes (Outage.failed)."""


class Twin(NamedTuple):
    """A record's twin: the same value and headers on `topic` under `key`, then a tombstone there
    if `ends` (an alert event on its state table, alertes.etat.v1). They share the record's
    outbox row (migration 0015), written and deleted once: the relay publishes them one after
    the other, and counts the row published once all of them are."""

    topic: str
    key: bytes
    ends: bool = False


@dataclass(frozen=True)
class OutboxRecord:
    topic: str
    key: bytes | None
    value: bytes | None  # None: a tombstone (migration 0008)
    headers: Headers = ()
    twin: Twin | None = None


def text_headers(headers: Iterable[tuple[str, bytes | None]] | None) -> list[tuple[str, str]]:
    """The headers whose value is text, decoded: a partner's may be any bytes, or null, which
    nothing reads as text (FastStream, trace propagation) but the DLQ copy keeps as it is."""
    out = []
    for name, value in headers or ():
        if value is None:
            continue
        try:
            out.append((name, value.decode()))
        except UnicodeDecodeError:
            continue
    return out


def dump_headers(headers: Headers) -> str:
    """The outbox's jsonb form: [[name, base64 value or null], ...], byte-exact (pydantic-core's
    JSON and binascii: a few microseconds less per record than the json and base64 modules).
    A name jsonb cannot hold (a NUL character: a partner's header, on a record to dead-letter)
    is [null, value, base64 name]: written as text, it failed the transaction, and the record
    held up its partition for good."""
    return to_json(
        [
            [k, None if v is None else b2a_base64(v, newline=False).decode()]
            if "\x00" not in k
            else [
                None,
                None if v is None else b2a_base64(v, newline=False).decode(),
                b2a_base64(k.encode(), newline=False).decode(),
            ]
            for k, v in headers
        ]
    ).decode()


def load_headers(text: str) -> Headers:
    loaded = []
    for header in from_json(text):
        name, value = header if len(header) == 2 else (a2b_base64(header[2]).decode(), header[1])
        loaded.append((name, None if value is None else a2b_base64(value)))
    return tuple(loaded)


async def enqueue(conn: Conn, records: Sequence[OutboxRecord]) -> None:
    """Appends `records` to the outbox in their order (one COPY: `seq` follows the rows). The
    records of one cause share their headers (pipeline.Pipeline._records): dumped once."""
    if records:
        dumped: dict[int, str] = {}
        rows = []
        for r in records:
            headers = dumped.get(id(r.headers))
            if headers is None:
                headers = dumped[id(r.headers)] = dump_headers(r.headers)
            twin = (r.twin.topic, r.twin.key, r.twin.ends) if r.twin else (None, None, False)
            rows.append((r.topic, r.key, r.value, headers, *twin))
        await conn.copy_records_to_table("outbox", columns=_COLUMNS, records=rows)


_COLUMNS = ("topic", "key", "record_value", "headers", "twin_topic", "twin_key", "twin_ends")


# Room for a dead letter: a partner's record of up to the broker's default 1 MiB, plus headers.
MAX_REQUEST_BYTES = 2 * 1024 * 1024
MAX_BATCH_BYTES = 256 * 1024
ROUND_RECORDS = 2000
"""Records per relay round (OUTBOX_BATCH_RECORDS): one transaction, one produce request, one batch
per partition. 60,000 subscriptions' 60,000 alert records went out in 8.0–8.1 s instead of
8.8–9.1 with rounds of 500, ressources and the broker each spending about a tenth less CPU
(`./dev bench latency national`, the broker warm; README Known limits)."""
ROUND_WAIT_SECONDS = 10
"""How long `halt` waits for the round in flight (a round is milliseconds; Kafka slow, seconds)."""
ANSWER_WAIT_SECONDS = 10
"""How long a round cancelled then still waits for Kafka's answers to the batches it sent."""


def relay_producer(access: KafkaAccess, client_id: str) -> AIOKafkaProducer:
    """The relay's own producer: it publishes stored bytes and headers exactly as they are
    (FastStream's publisher would encode header values as text and add its own)."""
    return AIOKafkaProducer(
        **access.aiokafka(),
        client_id=client_id,
        acks="all",
        enable_idempotence=True,  # no duplicate or reordered record on retry
        max_request_size=MAX_REQUEST_BYTES,
        # Batches of a relay round's size (aiokafka's 16 KiB default cut one round into many,
        # each costing CPU and a round trip), under the broker's default 1 MiB per batch; a
        # larger record still goes out, in a batch of its own.
        max_batch_size=MAX_BATCH_BYTES,
        linger_ms=5,
    )


async def count_failed(conn: Conn | asyncpg.Pool, at_most: int | None = None) -> int:
    """Records set aside for an operator; `at_most` bounds the count (a probe stays cheap)."""
    return await count_rows(conn, "outbox_failed", at_most)


async def count_pending(conn: Conn | asyncpg.Pool, at_most: int | None = None) -> int:
    """Records waiting for the relay; `at_most` bounds the count (a probe stays cheap)."""
    return await count_rows(conn, "outbox", at_most)


async def oldest_pending_age(conn: Conn | asyncpg.Pool) -> float:
    """Seconds the oldest record in the outbox has waited for the relay (0: none waits)."""
    age = await conn.fetchval(
        "SELECT extract(epoch FROM clock_timestamp() - created_at)::float8 FROM outbox ORDER BY seq LIMIT 1"
    )
    return age or 0.0


async def count_rows(conn: Conn | asyncpg.Pool, table: str, at_most: int | None) -> int:
    """The rows of `table`; `at_most` bounds the count (a probe stays cheap)."""
    limit = "" if at_most is None else f" LIMIT {int(at_most)}"
    return await conn.fetchval(f"SELECT count(*) FROM (SELECT 1 FROM {table}{limit}) t")


def _metadata_answered(producer: AIOKafkaProducer, within: float) -> bool:
    """Whether Kafka answered the producer's metadata requests in the last `within` seconds
    (aiokafka's cluster metadata keeps when; a producer that does not say: it did)."""
    cluster = getattr(getattr(producer, "client", None), "cluster", None)
    last_ms = getattr(cluster, "_last_successful_refresh_ms", None)
    return last_ms is None or time.time() - last_ms / 1000 <= within


def _round_query(batch: int, absent: Sequence[str]) -> tuple[Any, ...]:
    """A round's read of the outbox: its first `batch` records in order, but those of the
    `absent` topics and of the topics twinned with them in a row (an alert's stream and table),
    whose records of one key would otherwise overtake those of its rows left out; the pairs
    read in the same statement as the rows (one snapshot: a row committed between two reads
    could have overtaken)."""
    columns = (
        "SELECT seq, topic, key, record_value, headers, twin_topic, twin_key, twin_ends, "
        "EXISTS (SELECT FROM outbox_failed) AS set_aside FROM outbox"
    )
    if not absent:
        return (f"{columns} ORDER BY seq LIMIT $1", batch)
    left_out = (
        "WITH RECURSIVE left_out(topic) AS (SELECT unnest($2::text[]) UNION "
        "SELECT CASE WHEN o.topic = l.topic THEN o.twin_topic ELSE o.topic END FROM left_out l "
        "JOIN outbox o ON o.twin_topic IS NOT NULL AND (o.topic = l.topic OR o.twin_topic = l.topic)) "
    )
    where = (
        "WHERE topic <> ALL(ARRAY(SELECT topic FROM left_out)) "
        "AND (twin_topic IS NULL OR twin_topic <> ALL(ARRAY(SELECT topic FROM left_out)))"
    )
    return (f"{left_out}{columns} {where} ORDER BY seq LIMIT $1", batch, list(absent))


def relay_lock(schema: str) -> int:
    """The advisory lock `schema`'s relay holds while it publishes (one relay at a time)."""
    return advisory_key(f"relay:{schema}")


_ROUND_SETTINGS = (
    # The round's commit does not wait for its WAL to reach the disk: lost in a crash, its
    # deletion is too, and the records go out again with the same ids, in the same order, as
    # when the process itself dies between publishing and deleting. A later synchronous commit
    # (the next batch's) makes it durable with it, the WAL being written in order.
    "SET LOCAL synchronous_commit TO off",
    # Never ended by the server while it waits for Kafka (a deployment's
    # idle_in_transaction_session_timeout): that would free the lock, the producer still
    # retrying. Given up by it within about a minute once this host is gone without closing the
    # connection (its own TCP keepalives), not the system's two hours, meanwhile holding every
    # replica's relay.
    "SET LOCAL idle_in_transaction_session_timeout TO 0",
    *(f"SET LOCAL {name} TO {seconds}" for name, seconds in SERVER_KEEPALIVES.items()),
)
"""What a relay round's transaction sets, sent with its BEGIN (one round trip)."""


class OutboxRelay:
    """Publishes the outbox in order. One relay per schema at a time (advisory lock), so
    replicas of a service cannot interleave and reorder records of one key."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        schema: str,
        *,
        batch: int = ROUND_RECORDS,
        poll_ms: int = 1000,
        published: Callable[[int, int], None] = lambda done, failed: None,
        renew: Callable[[], AIOKafkaProducer] | None = None,
    ):
        """`renew`: a new producer like `producer`, for when the broker refused a batch (the
        producer's sequence numbers are then out of step with the broker's); None: `producer`
        is the caller's, and a partition whose batch the broker refused waits for a restart.
        `stop` stops the producer in hand either way."""
        self._pool = pool
        self._renew = renew
        self._published = published  # each round's records published and set aside (metrics)
        self._producer = producer
        self._producer_started = False
        self._kafka_away: BaseException | None = None  # what the last round's failed sends met
        self._silenced: list[AIOKafkaProducer] = []  # given up with their round (`_silence_producer`)
        self._batch = batch
        self._poll = poll_ms / 1000
        self._wake = asyncio.Event()
        self._halting = False
        self._stopping = False  # a round given up after `stop` renews no producer: nothing would stop it
        self._lock_id = relay_lock(schema)
        self._task: asyncio.Task[None] | None = None
        self._absent: dict[str, float] = {}  # topic -> until when its records are left out of the rounds
        self._said_absent: set[str] = set()  # said once (outbox.topic_absent), until it is back

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._halting = self._stopping = False
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        """The relay's task ended, then its producers stopped, also when the caller is cancelled
        meanwhile (that cancellation raised then, not swallowed with the task's own)."""
        self._stopping = True
        try:
            if self._task:
                self._task.cancel()
                await asyncio.wait([self._task])
                if not self._task.cancelled():
                    self._task.result()  # its own failure, raised once the producers are stopped
        finally:
            for silenced in self._silenced:  # its requests still on the wire are cut at the process' exit
                with contextlib.suppress(Exception):  # TimeoutError too
                    await asyncio.wait_for(silenced.stop(), 1)
            # Whether it started or not: one never started (a relay stopped before its first round,
            # or just renewed) was left unclosed, asyncio's "Unclosed AIOKafkaProducer" when collected.
            await self._producer.stop()

    async def _run(self) -> None:
        try:
            if failed := await count_failed(self._pool):
                log.warning("outbox.failed_pending", count=failed, hint="./dev outbox list")
        except Exception:  # PostgreSQL away at the start: the rounds below wait for it (it ended the relay)
            log.warning("outbox.failed_not_counted", exc_info=True)
        # Said once, without a traceback, until a round goes through: a round a second, each an
        # ERROR with its traceback (or a warning), buried those an operator acts on.
        outage = Outage(
            log,
            "outbox.relay_waiting",
            "outbox.relay_resumed",
            "Kafka or PostgreSQL away: each round tried again, said once one goes through",
            away=(Exception,),  # it is given what a round waits on alone: a fault is outbox.relay_failed
        )
        while not self._halting:
            waiting: BaseException | None = None
            try:
                while not self._halting and await self.drain_once():
                    pass
                waiting = self._kafka_away  # the round's sends failed: its records wait for the next
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, (DatabaseReadOnly, *AWAY)):  # a state, not a fault: said below
                    waiting = exc
                else:
                    log.exception("outbox.relay_failed")
                if self._halting:
                    return
                await asyncio.sleep(1)
            else:
                if waiting is None:  # a round that met neither away
                    outage.succeeded()
            if waiting is not None:  # said again if the state changes (Kafka back, PostgreSQL refusing writes)
                outage.failed(waiting, _READ_ONLY if isinstance(waiting, DatabaseReadOnly) else None)
            await woken(self._wake, self._poll)

    async def halt(self) -> None:
        """Stop the relay's loop once its round in flight is done (its producer stays open, for
        `flush`): a round cancelled between its sends and its commit would leave its records in
        the outbox, for `flush` to send again. Cancelled if the round takes over ROUND_WAIT_SECONDS;
        it then ends once Kafka has answered for the batches it sent, or ANSWER_WAIT_SECONDS later
        (`_publish`)."""
        if self._task is not None:
            self._halting = True
            self._wake.set()
            _, late = await asyncio.wait([self._task], timeout=ROUND_WAIT_SECONDS)
            if late:
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def flush(self) -> int:
        """At shutdown, the loop halted: publish until the outbox is empty, waiting while another
        replica's relay holds it (or Kafka is away); the caller bounds the wait. How many went out."""
        await self.halt()
        published = 0
        while True:
            count = await self.drain_once()
            published += count
            if not count:
                if not await self.pending():
                    if self._absent:
                        log.warning("outbox.flush_left", topics=sorted(self._absent), hint="outbox.topic_absent")
                    return published
                await asyncio.sleep(0.1)

    async def pending(self) -> bool:
        """Whether the outbox holds records the relay may publish: not those of the topics it
        leaves out while one is absent (`absent`)."""
        return bool(await self._pool.fetch(*_round_query(1, self._left_out())))

    @property
    def absent(self) -> list[str]:
        """The topics whose records the relay leaves in the outbox for now (outbox.topic_absent)."""
        return sorted(self._absent)

    async def drain_once(self) -> int:
        """Publish one batch; returns how many records went out (0: nothing to do or not leader,
        or Kafka away: `_kafka_away` then holds what a send met, for the loop to say)."""
        self._kafka_away = None
        if self._producer_started and (died := sender_died(self._producer)):
            await self._replace_producer(died)
        if not self._producer_started:
            await self._producer.start()  # raises while Kafka is away: the loop retries
            self._producer_started = True
        async with self._pool.acquire() as conn, transaction(conn, *_ROUND_SETTINGS):
            # The lock first, in a statement of its own: a statement reads what was committed
            # when it started, and a read begun before another replica's round committed (and
            # released the lock) would still see the records that round published and deleted,
            # and publish them again. Not ours: the outbox is not even scanned.
            # And the server's writes looked at before anything is sent: read-only (a standby behind
            # a stale endpoint after a failover, a managed server full), the round's deletion
            # failed after its sends, and each round published the same records again.
            ours = await conn.fetchval(
                "SELECT CASE WHEN current_setting('transaction_read_only') = 'on' THEN NULL "
                "ELSE pg_try_advisory_xact_lock($1) END",
                self._lock_id,
            )
            if ours is None:
                raise DatabaseReadOnly("PostgreSQL refuses writes (transaction_read_only): nothing published")
            if not ours:
                return 0
            rows = await conn.fetch(*_round_query(self._batch, self._left_out()))
            if not rows:
                return 0
            errors, out_of_step = await self._publish(rows)
            failed = [(r, e) for r, e in zip(rows, errors, strict=True) if isinstance(e, _UNPUBLISHABLE)]
            retry = [e for e in errors if e is not None and not isinstance(e, (*_UNPUBLISHABLE, TopicAbsent))]
            if failed:
                await conn.execute(
                    f"INSERT INTO outbox_failed ({_SET_ASIDE}, error, created_at) "
                    f"SELECT {_SET_ASIDE}, f.error, created_at "
                    "FROM outbox JOIN unnest($1::bigint[], $2::text[]) AS f(seq, error) USING (seq)",
                    [r["seq"] for r, _ in failed],
                    [f"{type(e).__name__}: {e}" for _, e in failed],
                )
            done = [r for r, e in zip(rows, errors, strict=True) if e is None]
            # The set-aside records (or twins) of a compacted topic that a record published now
            # supersedes (migration 0013): on such a topic, retried, one would stand for its key
            # in place of the newer state. Looked for only when there are set-aside records
            # (nearly never); then the rows deleted.
            looked = failed or rows[0]["set_aside"]
            superseding = [
                (r["seq"], topic, key)
                for r in (done if looked else ())
                for topic, key in ((r["topic"], r["key"]), (r["twin_topic"], r["twin_key"]))
                if topic is not None and topic.endswith(COMPACTED)
            ]
            for part in ("", "twin_") if superseding else ():  # each on its own: one row may have both
                await conn.execute(
                    f"UPDATE outbox_failed f SET {part}superseded_at = now() "
                    "FROM unnest($1::bigint[], $2::text[], $3::bytea[]) AS u(seq, topic, key) "
                    f"WHERE f.{part}topic = u.topic AND f.{part}key = u.key AND f.seq < u.seq "
                    f"AND f.{part}superseded_at IS NULL",
                    *map(list, zip(*superseding, strict=True)),
                )
            await conn.execute(
                "DELETE FROM outbox WHERE seq = ANY($1::bigint[])",
                [r["seq"] for r in done] + [r["seq"] for r, _ in failed],
            )
            if failed:
                total = await count_failed(conn)
                for r, e in failed:
                    log.error(
                        "outbox.unpublishable",
                        seq=r["seq"],
                        topic=r["topic"],
                        size=len(r["record_value"] or b""),
                        error=type(e).__name__,
                        failed_total=total,
                        hint="./dev outbox list",
                    )
        log.debug("outbox.published", count=len(done))
        self._published(len(done), len(failed))
        if out_of_step:
            await self._replace_producer(out_of_step)
        if retry:  # Kafka away: what went out is deleted, the rest waits for the next round
            log.debug("outbox.retry_later", pending=len(retry), error=type(retry[0]).__name__)
            self._kafka_away = retry[0]
            return 0
        return len(rows) - sum(isinstance(e, TopicAbsent) for e in errors)  # those waiting did not go out

    def _left_out(self) -> list[str]:
        """The topics Kafka did not have in the last ABSENT_RECHECK_SECONDS, whose records (and
        those of the topics twinned with them: `_round_query`) the rounds leave in the outbox."""
        now = time.monotonic()
        self._absent = {topic: until for topic, until in self._absent.items() if until > now}
        return sorted(self._absent)

    def _is_absent(self, topic: str, error: BaseException) -> TopicAbsent:
        """`topic` taken as absent for ABSENT_RECHECK_SECONDS (said once, until it is back)."""
        self._absent[topic] = time.monotonic() + ABSENT_RECHECK_SECONDS
        if topic not in self._said_absent:
            self._said_absent.add(topic)
            log.warning(
                "outbox.topic_absent",
                topic=topic,
                error=type(error).__name__,
                hint=f"its records wait in the outbox, the other topics' go on; asked again every "
                f"{ABSENT_RECHECK_SECONDS:g} s: make the topic, or let the service's principal write it",
            )
        return TopicAbsent(topic)

    async def _partitions(self, topic: str) -> Sequence[int] | None:
        """The partitions `topic`'s records go to (spread_over); None when Kafka does not know it
        or refuses it to the relay's principal within TOPIC_LOOKUP_SECONDS."""
        try:
            async with asyncio.timeout(TOPIC_LOOKUP_SECONDS):
                found = await self._producer.partitions_for(topic)
        except (UnknownTopicOrPartitionError, TopicAuthorizationFailedError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError) and not _metadata_answered(self._producer, TOPIC_LOOKUP_SECONDS):
                # Kafka gave no metadata at all meanwhile: away, not this topic absent (the round waits).
                raise KafkaTimeoutError(f"no metadata within {TOPIC_LOOKUP_SECONDS:g} s") from None
            self._is_absent(topic, exc)
            return None
        if topic in self._said_absent:
            self._said_absent.discard(topic)
            log.info("outbox.topic_back", topic=topic)
        return spread_over(topic, sorted(found))

    async def _silence_producer(self) -> None:
        """The producer silenced (`silence`), then stopped at the relay's stop, and renewed when
        the relay can renew it; without `renew`, the caller's producer stays silent, failing
        until its restart."""
        silence(self._producer)
        await asyncio.sleep(0)  # the sender's task takes its cancellation before the lock goes
        self._silenced.append(self._producer)
        if self._renew is not None and not self._stopping:
            self._producer, self._producer_started = self._renew(), False

    async def _replace_producer(self, reason: BaseException) -> None:
        """A new producer in place of one that can no longer send (or whose sequence numbers
        are out of step); without `renew`, the caller's producer stays, failing until its restart.
        Not once the relay is stopping: nothing would stop the new one."""
        if self._renew is None or self._stopping:
            return
        former, self._producer, self._producer_started = self._producer, self._renew(), False
        log.info("outbox.producer_renewed", reason=type(reason).__name__)
        try:  # the new one is in place whatever this does
            await former.stop()
        except Exception as e:
            log.warning("outbox.former_producer_not_stopped", error=type(e).__name__)

    async def _publish(self, rows: Sequence[asyncpg.Record]) -> tuple[list[BaseException | None], BaseException | None]:
        """Sends `rows` in batches of one partition each, filled in `seq` order (one key, one
        partition: a key's records keep their order), and waits for the broker to acknowledge
        each batch; per row, None once published, else the error of its batch. What aiokafka's
        `send` did per record (a future, the accumulator) is done once per batch. And the error
        of a batch after which the producer is out of step with the broker, if one failed so."""
        errors: list[BaseException | None] = [None] * len(rows)
        partitions: dict[str, Sequence[int] | None] = {}  # each topic's its records may go to (spread_over)
        held: dict[tuple[str, int], TopicAbsent] = {}  # partitions where a row waits for an absent topic
        filling: dict[tuple[str, int], _Batch] = {}
        batches: list[_Batch] = []
        loaded: dict[str, list[tuple[str, bytes | None]]] = {}  # a round's records share a few headers
        for i, row in enumerate(rows):
            value = row["record_value"]
            headers = loaded.get(row["headers"])
            if headers is None:
                headers = loaded[row["headers"]] = list(load_headers(row["headers"]))
            records = [(row["topic"], row["key"], value)]
            if (twin := row["twin_topic"]) is not None:
                records.append((twin, row["twin_key"], value))
                if row["twin_ends"]:
                    records.append((twin, row["twin_key"], None))
            try:
                for topic, key, record_value in records:
                    _check_size(key, record_value, headers)
                    if topic not in partitions:
                        partitions[topic] = await self._partitions(topic)
            except _UNPUBLISHABLE as exc:  # refused before sending: the row, none of its records
                errors[i] = exc
                continue
            places = [
                (topic, partition_for(routing_key(topic, key), spread))
                for topic, key, _ in records
                if (spread := partitions[topic]) is not None
            ]
            absent = next((TopicAbsent(topic) for topic, _, _ in records if partitions[topic] is None), None)
            if (waits := absent or next((held[p] for p in places if p in held), None)) is not None:
                # Neither its records nor those behind them on their partitions: a key's stay in order.
                errors[i] = waits
                held.update(dict.fromkeys(places, waits))
                continue
            for (topic, partition), (_, key, record_value) in zip(places, records, strict=True):
                batch = filling.get((topic, partition))
                if batch is None or not batch.add(i, key, record_value, headers):
                    batch = filling[(topic, partition)] = _Batch(topic, partition, self._producer.create_batch())
                    batch.add(i, key, record_value, headers)  # a first record always fits
                    batches.append(batch)
        # Once a batch is handed to aiokafka it goes out whatever becomes of this task: a round
        # cancelled then (a halt past ROUND_WAIT_SECONDS) waits for Kafka's answers before its
        # transaction ends. Released at once, the relay's lock would let another replica's relay
        # publish newer records of a key while these were still being retried, to land after
        # them (a raise after its tombstone on alertes.etat.v1). The records go out again from
        # the outbox (same ids, same order). An idempotent producer retries until the broker
        # answers, so the wait is bounded too (a stop must end): past it, the round is given up,
        # and its producer silenced first, so that it sends nothing more once the lock is free
        # (another one takes its place, for `flush`): only a request already on the wire may
        # still land, as when the process is killed.
        sending = asyncio.ensure_future(self._send(batches))
        try:
            results = await asyncio.shield(sending)
        except asyncio.CancelledError:
            _, unanswered = await asyncio.wait({sending}, timeout=ANSWER_WAIT_SECONDS)
            if unanswered:
                log.warning("outbox.round_given_up", batches=len(batches), waited_s=ANSWER_WAIT_SECONDS)
                await self._silence_producer()
            raise
        # After a batch of a partition failed, the later batches of that partition count as
        # failed too, acknowledged or not: they go out again after it next round (at least once,
        # same ids), so a key's records never end in another order (a raise after its tombstone
        # on alertes.etat.v1 would reopen a resolved alert). Not after a batch refused for good:
        # it is set aside, and those behind it go on, judged by their own outcome.
        broken: dict[tuple[str, int], BaseException] = {}
        for batch, result in zip(batches, results, strict=True):
            where = (batch.topic, batch.partition)
            if isinstance(result, TopicAuthorizationFailedError):  # described, not writable: absent too
                result = self._is_absent(batch.topic, result)
            error = result if isinstance(result, BaseException) else broken.get(where)
            if error is not None:
                if not isinstance(error, _UNPUBLISHABLE):
                    broken.setdefault(where, error)
                for i in batch.rows:  # a row in several batches: set aside only if none can be retried
                    if errors[i] is None or isinstance(errors[i], _UNPUBLISHABLE):
                        errors[i] = error
        return errors, next((r for r in results if isinstance(r, OUT_OF_STEP)), None)

    async def _send(self, batches: Sequence["_Batch"]) -> list[object]:
        """Each batch handed to the producer in order, then each one's outcome: its broker
        acknowledgement, or the error it failed with."""
        acks: list[asyncio.Future] = []
        try:
            for batch in batches:
                batch.builder.close()
                acks.append(await self._producer.send_batch(batch.builder, batch.topic, partition=batch.partition))
        except BaseException:  # (the accumulator full past its timeout): those handed over are answered for first
            await asyncio.gather(*acks, return_exceptions=True)
            raise
        return await asyncio.gather(*acks, return_exceptions=True)


_SET_ASIDE = "seq, topic, key, record_value, headers, twin_topic, twin_key, twin_ends"
"""The outbox's columns that `outbox_failed` keeps of a record set aside."""

COMPACTED = (ALERTES_ETAT, PROFILS, COUVERTURES)
"""The topics that keep only the last record of each key (deploy/topology.py): the state of an
entity, each record newer than the one before it."""

BY_UAI = (PROFILS, COUVERTURES)
"""The derived topics whose records of one UAI (keys `{uai}` and `{uai}/{entity}`) make one state
together: a teacher counted with a tool training moves a coverage's `{uai}` and `{uai}/{kind}`
records in one transaction."""


ROUTED_PARTITIONS = 12
"""The partitions the relay spreads the keys of the platform's own topics over (OWN_TOPICS, the
DLQs with them): those they are made with (deploy/topology.py), and never more, whatever partitions
are added to them later. Spread over the new count, a key's next records went to another
partition than its earlier ones: on alertes.etat.v1 a resolved alert's raise, the last record
of its key on its former partition, was kept there by the compaction for good (a dashboard
reading the table showed it open), and a UAI's groups on the internal topics were read out of
order. Partitions added to those topics get none of their records. A partner's topic is spread
as the partner's own clients spread it: over all of its partitions. A topic made with fewer
(the tests') is spread over all of its own: partitions added to it, up to 12, move keys."""
OWN_TOPICS = (ALERTES, *COMPACTED, dlq(""))  # the DLQs: `<topic>.dlq`


def spread_over(topic: str, partitions: Sequence[int]) -> Sequence[int]:
    """The partitions (sorted) a record of `topic` may go to, by its key (ROUTED_PARTITIONS)."""
    return partitions[:ROUTED_PARTITIONS] if topic.endswith(OWN_TOPICS) else partitions


def routing_key(topic: str, key: bytes | None) -> bytes | None:
    """What a record's partition is chosen by: its key, but on BY_UAI topics its UAI, so that
    one UAI's records are read in the order they were committed, by one consumer, mostly in one
    batch. Each key kept on its own partition, ressources could combine a new teacher count
    with the former tool count of another partition, read later or by another replica: an
    alert raised then resolved for a state that never was. (Only this relay writes these
    topics; ressources keeps each key's highest version, whatever partition it came from.)"""
    if key is not None and topic.endswith(BY_UAI):
        return key.partition(b"/")[0]
    return key


def _check_size(key: bytes | None, value: bytes, headers: list[tuple[str, bytes | None]]) -> None:
    """What aiokafka's `send` checks before sending a record: over this, no request can carry it."""
    size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
    if size > MAX_REQUEST_BYTES:
        raise MessageSizeTooLargeError(
            f"the record is {size} bytes, over the relay's max_request_size {MAX_REQUEST_BYTES}"
        )


@dataclass
class _Batch:
    """Records of one partition going out in one batch: their rows in the relay's round."""

    topic: str
    partition: int
    builder: BatchBuilder
    rows: list[int] = field(default_factory=list)

    def add(self, row: int, key: bytes | None, value: bytes, headers: list[tuple[str, bytes | None]]) -> bool:
        if self.builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
            return False  # full
        self.rows.append(row)
        return True
