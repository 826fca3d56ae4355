"""Consumer positions kept with the data (migration 0007): the offset of the next record of
each partition, advanced in the transaction of the batch that handled the records before it.
The database says where a service resumes (`messaging.consumer.StoredPositions`), so a schema
and its position can never disagree: a restored backup replays what came after it, a fresh
schema replays every topic from the beginning."""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import asyncpg
from aiokafka import ConsumerRecord, TopicPartition

from services.common.storage.db import Conn

LOG_APPEND_TIME = 1
"""A record's `timestamp_type` when the broker stamped it as it appended it (Kafka's protocol)."""


def ends(records: Iterable[ConsumerRecord]) -> dict[tuple[str, int], int]:
    """Per (topic, partition) of `records`, the offset past the last of them there, whatever
    their order."""
    return {key: last.offset + 1 for key, last in _lasts(records).items()}


def _lasts(records: Iterable[ConsumerRecord]) -> dict[tuple[str, int], ConsumerRecord]:
    """Per (topic, partition) of `records`, the last of them there, whatever their order."""
    out: dict[tuple[str, int], ConsumerRecord] = {}
    for r in records:
        key = (r.topic, r.partition)
        if key not in out or out[key].offset <= r.offset:
            out[key] = r
    return out


async def advance(conn: Conn, records: Iterable[ConsumerRecord]) -> None:
    """Past every record of `records`, never backwards (a replica replaying a batch another
    one handled during a rebalance does not move a partition back), with the instant the
    broker appended the last one (`appended_at_ms`, where the topic stamps it: migration 0019)."""
    if lasts := _lasts(records):
        keys = sorted(lasts)  # rows locked in key order: two writers never wait in a cycle
        await conn.execute(
            "INSERT INTO positions AS p (topic, partition, next_offset, appended_at_ms) "
            "SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[]) "
            "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = GREATEST(p.next_offset, EXCLUDED.next_offset), "
            "appended_at_ms = CASE WHEN EXCLUDED.next_offset >= p.next_offset "
            "THEN EXCLUDED.appended_at_ms ELSE p.appended_at_ms END",
            [t for t, _ in keys],
            [p for _, p in keys],
            [lasts[k].offset + 1 for k in keys],
            [lasts[k].timestamp if lasts[k].timestamp_type == LOG_APPEND_TIME else None for k in keys],
        )


async def load(conn: Conn | asyncpg.Pool, partitions: Iterable[TopicPartition]) -> Mapping[TopicPartition, int]:
    """The stored position of each of `partitions` that has one."""
    wanted = set(partitions)
    rows = await conn.fetch(
        "SELECT topic, partition, next_offset FROM positions WHERE topic = ANY($1::text[])",
        sorted({tp.topic for tp in wanted}),
    )
    found = {TopicPartition(r["topic"], r["partition"]): r["next_offset"] for r in rows}
    return {tp: offset for tp, offset in found.items() if tp in wanted}


async def appended(conn: Conn | asyncpg.Pool, partitions: Iterable[TopicPartition]) -> Mapping[TopicPartition, int]:
    """The instant the broker appended the record before the stored position (ms), of each of
    `partitions` whose topic stamps it and whose position is past a record."""
    wanted = set(partitions)
    rows = await conn.fetch(
        "SELECT topic, partition, appended_at_ms FROM positions "
        "WHERE topic = ANY($1::text[]) AND appended_at_ms IS NOT NULL AND next_offset > 0",
        sorted({tp.topic for tp in wanted}),
    )
    found = {TopicPartition(r["topic"], r["partition"]): r["appended_at_ms"] for r in rows}
    return {tp: ms for tp, ms in found.items() if tp in wanted}


async def out_of_range(conn: Conn, found: Sequence[Any]) -> None:
    """Positions found outside their partition's log (consumer.Outside), kept for /health, and
    the stored position moved to the log's start: up from below it (else the same loss was told
    again at every assignment until a record came), back from past its end (a topic made again:
    its records are read from there, and `advance` never moves back)."""
    await conn.executemany(
        "INSERT INTO positions_hors_limites (topic, partition, position, log_start, log_end, records_lost) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        [(o.tp.topic, o.tp.partition, o.position, o.start, o.end, o.lost) for o in found],
    )
    for o in found:  # told once: the position moves to the log's start, up or back
        await conn.execute(
            "INSERT INTO positions AS p (topic, partition, next_offset) VALUES ($1, $2, $3) "
            "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = "
            "CASE WHEN $4 THEN EXCLUDED.next_offset ELSE GREATEST(p.next_offset, EXCLUDED.next_offset) END, "
            "appended_at_ms = CASE WHEN $4 OR EXCLUDED.next_offset > p.next_offset THEN NULL ELSE p.appended_at_ms END",
            o.tp.topic,
            o.tp.partition,
            o.start,
            o.another_log,
        )


async def latest_out_of_range(conn: Conn | asyncpg.Pool, limit: int = 20) -> list[dict[str, Any]]:
    """The latest positions found outside their partition's log, for /health."""
    rows = await conn.fetch(
        "SELECT topic, partition, position, log_start, log_end, records_lost, found_at "
        "FROM positions_hors_limites ORDER BY found_at DESC LIMIT $1",
        limit,
    )
    return [dict(r) | {"found_at": r["found_at"].isoformat()} for r in rows]
