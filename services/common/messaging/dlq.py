"""Dead letters: a record the service cannot accept goes, bytes unchanged, to `<topic>.dlq`.

Headers name the reason code, a human message and where the record came from. The record
goes through the outbox, in the batch's transaction, so the service commits past it only
once it is safely kept, and `dead_letters` makes a replay dead-letter it only once.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from aiokafka import ConsumerRecord

from contracts import dlq as dlq_topic
from services.common.messaging.outbox import OutboxRecord, enqueue
from services.common.storage.db import Conn

log = structlog.get_logger(__name__)

REASON = "dlq-reason"
MESSAGE = "dlq-message"
TOPIC = "dlq-topic"
PARTITION = "dlq-partition"
OFFSET = "dlq-offset"


@dataclass(frozen=True)
class Rejection:
    record: ConsumerRecord
    code: str
    message: str


def dead_letter(rejection: Rejection) -> OutboxRecord:
    """The DLQ copy: value, key and the partner's headers byte-exact (any bytes, null, repeated
    names), then the `dlq-*` headers, which a reader taking the last of each name sees."""
    record = rejection.record
    ours = (
        (REASON, rejection.code),
        (MESSAGE, rejection.message),
        (TOPIC, record.topic),
        (PARTITION, str(record.partition)),
        (OFFSET, str(record.offset)),
    )
    headers = (*record.headers, *((name, value.encode()) for name, value in ours))
    return OutboxRecord(dlq_topic(record.topic), record.key, record.value or b"", headers)


def _text(value: str) -> str:
    return value.replace("\x00", "")


async def reject(conn: Conn, rejections: Sequence[Rejection]) -> None:
    if not rejections:
        return
    rows = await conn.fetch(
        """
        INSERT INTO dead_letters (topic, partition, "offset", reason, message)
        SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::text[], $5::text[])
        ON CONFLICT DO NOTHING RETURNING topic, partition, "offset"
        """,
        [r.record.topic for r in rejections],
        [r.record.partition for r in rejections],
        [r.record.offset for r in rejections],
        [r.code for r in rejections],
        [_text(r.message) for r in rejections],
    )
    new = {(r["topic"], r["partition"], r["offset"]) for r in rows}
    fresh = [r for r in rejections if (r.record.topic, r.record.partition, r.record.offset) in new]
    for r in fresh:
        log.warning(
            "event.rejected",
            reason=r.code,
            detail=r.message,
            topic=r.record.topic,
            partition=r.record.partition,
            offset=r.record.offset,
        )
    await enqueue(conn, [dead_letter(r) for r in fresh])
