"""Dead letters: a record the service cannot accept goes, bytes unchanged, to `<topic>.dlq`.

Headers name the reason code, a human message and where the record came from. The record
goes through the outbox, in the batch's transaction, so the service commits past it only
once it is safely kept, and `dead_letters` makes a replay dead-letter it only once.

`dead_letters` is also the operator's log (`./dev dead-letters`): beside the reason it keeps
who sent the record, as far as its value could be read (CloudEvents `source`, `id`, `type`,
`subject`) and its key; never the value itself, nor a key or subject that may be a teacher_id.

A record refused for want of its établissement (`uai-inconnu`) also waits, bytes and all, in
`attente_referentiel`, for the référentiel to bring its UAI: then the service judges it again
(pipeline.Pipeline.revive), which marks its `dead_letters` row (`accepted`, `rejudged`).
"""

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import asyncpg
import jiter
import structlog
from aiokafka import ConsumerRecord

from contracts import CATALOGUE, EQUIPEMENT, FORMATION, REFERENTIEL, RESSOURCE_PUBLIEE, RESSOURCE_RETIREE, is_valid_uai
from contracts import dlq as dlq_topic
from services.common.messaging.outbox import OutboxRecord, count_rows, dump_headers, enqueue
from services.common.storage.db import Conn

log = structlog.get_logger(__name__)

REASON = "dlq-reason"
MESSAGE = "dlq-message"
TOPIC = "dlq-topic"
PARTITION = "dlq-partition"
OFFSET = "dlq-offset"
REPLAY = "dlq-replay"
"""On a record an operator replayed from a DLQ to its topic (`./dev dead-letters replay`): the
`topic:partition@offset` of the refused record it is a copy of."""
_OURS = (REASON, MESSAGE, TOPIC, PARTITION, OFFSET)

Origin = tuple[str, int, int]
"""Where a refused record was read: (topic, partition, offset), the key of `dead_letters`."""


@dataclass(frozen=True)
class Rejection:
    record: ConsumerRecord
    code: str
    message: str
    awaits: str | None = None
    """The UAI the référentiel does not hold yet (`uai-inconnu`): the record waits for it."""


def dead_letter(rejection: Rejection) -> OutboxRecord:
    """The DLQ copy: value (null stays null), key and the partner's headers byte-exact (any bytes,
    null, repeated names), then the `dlq-*` headers, which a reader taking the last of each name sees."""
    record = rejection.record
    ours = (
        (REASON, rejection.code),
        (MESSAGE, rejection.message),
        (TOPIC, record.topic),
        (PARTITION, str(record.partition)),
        (OFFSET, str(record.offset)),
    )
    headers = (*record.headers, *((name, value.encode()) for name, value in ours))
    return OutboxRecord(dlq_topic(record.topic), record.key, record.value, headers)


RETRIED = "outbox-retry"
"""The marker `./dev outbox retry` appends to a record it puts back (outbox_failed): after a DLQ
copy's `dlq-*` headers, which then no longer end it."""


def _copy(headers: Sequence[tuple[str, bytes | None]]) -> Sequence[tuple[str, bytes | None]]:
    """A DLQ copy's headers without the retry markers appended after its `dlq-*` headers."""
    end = len(headers)
    while end and headers[end - 1][0] == RETRIED:
        end -= 1
    return headers[:end]


def origin(headers: Sequence[tuple[str, bytes | None]]) -> Origin | None:
    """Where the refused record of a DLQ copy was read, from the `dlq-*` headers it ends with."""
    tail = dict(_copy(headers)[-len(_OURS) :])
    try:
        return tail[TOPIC].decode(), int(tail[PARTITION]), int(tail[OFFSET])  # type: ignore[union-attr,arg-type]
    except (KeyError, AttributeError, ValueError, UnicodeDecodeError):
        return None


def replayed_headers(headers: Sequence[tuple[str, bytes | None]], of: Origin) -> list[tuple[str, bytes | None]]:
    """The headers of a DLQ copy replayed to its topic: the partner's as they were (without the
    `dlq-*` headers the copy ends with, nor the retry markers after them, nor the marker of an
    earlier replay), then the marker."""
    partner = list(_copy(headers)[: -len(_OURS)]) if origin(headers) is not None else list(headers)
    topic, partition, offset = of
    return [*(h for h in partner if h[0] != REPLAY), (REPLAY, f"{topic}:{partition}@{offset}".encode())]


ATTRIBUTES = ("source", "id", "type", "subject")
SHOWN = 256  # characters kept of a key or an attribute: enough to search by, always indexable


def _text(value: str) -> str:
    return value.replace("\x00", "")  # PostgreSQL text cannot hold NUL


def _shown(value: str) -> str:
    value = _text(value)
    return value if len(value) <= SHOWN else value[: SHOWN - 1] + "…"


def key_text(key: bytes | None) -> str | None:
    """The record key as text: itself when UTF-8 (without NUL), else `\\x` and its hex."""
    if key is None:
        return None
    try:
        text: str | None = key.decode()
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        return _shown("\\x" + key[:SHOWN].hex())
    return _shown(text)


def attributes(value: bytes | None) -> dict[str, str]:
    """The CloudEvents attributes of a refused value that are strings, as far as it could be read:
    none when it is not a JSON object. NaN elsewhere in it does not hide them."""
    try:
        event = jiter.from_json(value or b"", allow_inf_nan=True, cache_mode=False)
    except ValueError:
        return {}
    if not isinstance(event, dict):
        return {}
    return {name: _shown(v) for name in ATTRIBUTES if isinstance(v := event.get(name), str)}


PARTNER_TOPICS = (REFERENTIEL, FORMATION, EQUIPEMENT, CATALOGUE)
RESOURCE_TYPES = (RESSOURCE_PUBLIEE, RESSOURCE_RETIREE)


def searchable(record: ConsumerRecord) -> tuple[str | None, ...]:
    """`source`, `id`, `type`, `subject` and key of a refused record, for `dead_letters`.

    `formation-suivie` is keyed by `teacher_id`, which is also its subject (CONTRACTS.md), and a
    partner may send one to any of its topics (refused there, type-hors-topic): on the partners'
    topics (whatever their prefix) a key or subject is kept only if it is a UAI, or the
    `resource_id` a resource's publication or withdrawal is keyed by on the catalogue."""
    found = attributes(record.value)
    subject, key = found.get("subject"), key_text(record.key)
    if any(record.topic.endswith(topic) for topic in PARTNER_TOPICS):
        resource = record.topic.endswith(CATALOGUE) and found.get("type") in RESOURCE_TYPES
        subject, key = (v if v is not None and (resource or is_valid_uai(v)) else None for v in (subject, key))
    return found.get("source"), found.get("id"), found.get("type"), subject, key


@dataclass(frozen=True)
class Told:
    """Records a transaction dead-lettered: how many of them wait for their établissement, and
    what the log says of them once it committed (`say`; built by `_told`). Said inside it, a
    batch rolled back on a conflict and replayed said them twice, and one that failed after
    them said "dead-lettered" of records that were not."""

    awaiting: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    """How many by reason."""
    first: dict | None = None
    lines: tuple[dict, ...] = ()
    """One per record, when DEBUG lines are written."""
    event: str = "event.rejected"
    places_reused: int = 0
    """Of them, those at the place of a former record (a topic made again), in these topics."""
    reused_in: tuple[str, ...] = ()

    def say(self) -> None:
        if self.places_reused:
            log.warning(
                "dead_letters.place_reused",
                records=self.places_reused,
                topics=list(self.reused_in),
                hint="a topic made again: its new records refused at the places of former ones, told as new",
            )
        for line in self.lines:
            log.debug(self.event, **line)
        if self.first is not None:
            log.warning(self.event.replace("event.", "events.", 1), refused=self.refused, first=self.first)


async def reject(conn: Conn, rejections: Sequence[Rejection]) -> Told:
    """Each record dead-lettered once (a replayed batch's are not again); how many of them now
    wait for their établissement (`Rejection.awaits`), and what to say once committed."""
    if not rejections:
        return Told()
    senders = [searchable(r.record) for r in rejections]
    # The same record refused again (a batch replayed) is not told again; another record at the
    # place of one logged (a topic made again) replaces its row, and is told (empreinte: 0018).
    rows = await conn.fetch(
        """
        INSERT INTO dead_letters (topic, partition, "offset", reason, message, source, id, type, subject, key,
                                  empreinte)
        SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::text[], $5::text[],
                             $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bytea[])
        ON CONFLICT (topic, partition, "offset") DO UPDATE SET
            reason = EXCLUDED.reason, message = EXCLUDED.message, source = EXCLUDED.source, id = EXCLUDED.id,
            type = EXCLUDED.type, subject = EXCLUDED.subject, key = EXCLUDED.key, empreinte = EXCLUDED.empreinte,
            received_at = now(), accepted_at = NULL, rejudged_at = NULL, copy_missing_at = NULL
        WHERE dead_letters.empreinte IS DISTINCT FROM EXCLUDED.empreinte AND dead_letters.empreinte IS NOT NULL
        RETURNING topic, partition, "offset", xmax <> 0 AS replaced
        """,
        *_origins(rejections),
        [r.code for r in rejections],
        [_text(r.message) for r in rejections],
        *(list(column) for column in zip(*senders, strict=True)),
        [hashlib.sha256(r.record.value or b"").digest() for r in rejections],
    )
    if replaced := [(r["topic"], r["partition"], r["offset"]) for r in rows if r["replaced"]]:
        # The former record's wait, if any, ends with its place: its topic is gone.
        await conn.execute(
            'DELETE FROM attente_referentiel WHERE (topic, partition, "offset") '
            "IN (SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[]))",
            *columns(replaced),
        )
    new = {(r["topic"], r["partition"], r["offset"]) for r in rows}
    fresh = [
        (r, sender)
        for r, sender in zip(rejections, senders, strict=True)
        if (r.record.topic, r.record.partition, r.record.offset) in new
    ]
    await enqueue(conn, [dead_letter(r) for r, _ in fresh])
    awaiting = await _waits(conn, [r for r, _ in fresh])
    told = _told([(r, source, event_id) for r, (source, event_id, *_) in fresh], awaiting=awaiting)
    return replace(told, places_reused=len(replaced), reused_in=tuple(sorted({topic for topic, _, _ in replaced})))


async def _waits(conn: Conn, rejections: Sequence[Rejection]) -> int:
    """Those of `rejections` refused for want of their UAI wait for it; returns how many."""
    awaiting = [r for r in rejections if r.awaits is not None]
    if awaiting:
        await conn.execute(
            'INSERT INTO attente_referentiel (topic, partition, "offset", uai, key, value, headers) '
            "SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::text[], $5::bytea[], $6::bytea[], "
            "$7::jsonb[])",
            *_origins(awaiting),
            [r.awaits for r in awaiting],
            [r.record.key for r in awaiting],
            [r.record.value for r in awaiting],
            [dump_headers(r.record.headers) for r in awaiting],
        )
    return len(awaiting)


def columns(origins: Iterable[Origin]) -> tuple[list[str], list[int], list[int]]:
    """The topics, partitions and offsets of `origins`, as three columns for unnest (three empty
    ones for none)."""
    topics: list[str] = []
    partitions: list[int] = []
    offsets: list[int] = []
    for topic, partition, offset in origins:
        topics.append(topic)
        partitions.append(partition)
        offsets.append(offset)
    return topics, partitions, offsets


def _origins(rejections: Sequence[Rejection]) -> tuple[list[str], list[int], list[int]]:
    """The topics, partitions and offsets of the refused records, as three columns for unnest."""
    return (
        [r.record.topic for r in rejections],
        [r.record.partition for r in rejections],
        [r.record.offset for r in rejections],
    )


def _told(
    refused: Sequence[tuple[Rejection, str | None, str | None]], event: str = "event.rejected", awaiting: int = 0
) -> "Told":
    """What to say of records dead-lettered: a DEBUG line per record (`event`: its reason, where
    it is, its sender), and one WARNING line for all of them (`events.…`: how many by reason, the
    first one's): a broken feed was a warning per record. Only what the lines need is kept, not
    the records (a revival's, thousands, are said once its transaction committed)."""
    if not refused:
        return Told(awaiting, event=event)
    lines = tuple(
        {
            "reason": r.code,
            "detail": r.message,
            "topic": r.record.topic,
            "partition": r.record.partition,
            "offset": r.record.offset,
            "source": source,
            "event_id": event_id,
        }
        # Checked once: the lines are built only when they are written.
        for r, source, event_id in (refused if log.is_enabled_for(logging.DEBUG) else ())
    )
    first = refused[0][0]
    return Told(
        awaiting,
        dict(Counter(r.code for r, _, _ in refused)),
        {
            "reason": first.code,
            "detail": first.message,
            "topic": first.record.topic,
            "partition": first.record.partition,
            "offset": first.record.offset,
        },
        lines,
        event,
    )


async def rejudged(conn: Conn, accepted: Sequence[Origin], refused: Sequence[Rejection]) -> Told:
    """Records that waited for their établissement, judged again now that it is known: the
    accepted ones marked so; the refused ones (another reason: the declarant out of its
    competence there, say) dead-lettered again, their row saying why now (said once committed)."""
    if accepted:
        await conn.execute(
            'UPDATE dead_letters SET accepted_at = now() WHERE (topic, partition, "offset") '
            "IN (SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[]))",
            *columns(accepted),
        )
    if refused:
        await conn.execute(
            "UPDATE dead_letters AS d SET reason = r.reason, message = r.message, rejudged_at = now() "
            "FROM unnest($1::text[], $2::int[], $3::bigint[], $4::text[], $5::text[]) "
            'AS r(topic, partition, "offset", reason, message) '
            'WHERE (d.topic, d.partition, d."offset") = (r.topic, r.partition, r."offset")',
            *_origins(refused),
            [r.code for r in refused],
            [_text(r.message) for r in refused],
        )
        await enqueue(conn, [dead_letter(r) for r in refused])
        await _waits(conn, refused)  # for want of a UAI again (another one, read by a newer contract): waits again
    found = [attributes(r.record.value) for r in refused]
    return _told([(r, f.get("source"), f.get("id")) for r, f in zip(refused, found, strict=True)], "event.rejudged")


async def count_awaiting(conn: Conn | asyncpg.Pool, at_most: int | None = None) -> int:
    """Records refused `uai-inconnu` waiting for their établissement; `at_most` bounds the count."""
    return await count_rows(conn, "attente_referentiel", at_most)
