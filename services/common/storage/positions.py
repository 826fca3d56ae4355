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


def ends(records: Iterable[ConsumerRecord]) -> dict[tuple[str, int], int]:
    """Per (topic, partition) of `records`, the offset past the last of them there, whatever
    their order."""
    out: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.topic, r.partition)
        if out.get(key, -1) <= r.offset:
            out[key] = r.offset + 1
    return out


async def advance(conn: Conn, records: Iterable[ConsumerRecord]) -> None:
    """Past every record of `records`, never backwards (a replica replaying a batch another
    one handled during a rebalance does not move a partition back)."""
    if past := ends(records):
        keys = sorted(past)  # rows locked in key order: two writers never wait in a cycle
        await conn.execute(
            "INSERT INTO positions AS p (topic, partition, next_offset) "
            "SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[]) "
            "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = GREATEST(p.next_offset, EXCLUDED.next_offset)",
            [t for t, _ in keys],
            [p for _, p in keys],
            [past[k] for k in keys],
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
            "CASE WHEN $4 THEN EXCLUDED.next_offset ELSE GREATEST(p.next_offset, EXCLUDED.next_offset) END",
            o.tp.topic,
            o.tp.partition,
            o.start,
            o.position > o.end,
        )


async def latest_out_of_range(conn: Conn | asyncpg.Pool, limit: int = 20) -> list[dict[str, Any]]:
    """The latest positions found outside their partition's log, for /health."""
    rows = await conn.fetch(
        "SELECT topic, partition, position, log_start, log_end, records_lost, found_at "
        "FROM positions_hors_limites ORDER BY found_at DESC LIMIT $1",
        limit,
    )
    return [dict(r) | {"found_at": r["found_at"].isoformat()} for r in rows]
