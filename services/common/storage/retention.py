"""Forgetting what no replay can bring back.

The inbox and `dead_letters` exist to make replays harmless. A replay older than the retention
is harmless nearly always: state events are full states compared by `time` (an old one is
stale), trainings accumulate by max and union, and the platform's own records carry versions.
The exception: a state event whose `time` equals the entity's current state's, which another
event of that same `time` replaced (equal times: the later arrival wins, CONTRACTS.md), takes
effect again (README, INBOX_RETENTION_DAYS). Rows older than `INBOX_RETENTION_DAYS` are
deleted, a bounded chunk at a time; so are the DLQ copies Kafka refused for good
(`outbox_failed`), made as long ago: a refused record, a partner's personal data maybe, is kept
no longer there than in its DLQ and the dead-letter log (README, INBOX_RETENTION_DAYS).
"""

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import asyncpg
import structlog

from services.common.runtime.outages import Outage

log = structlog.get_logger(__name__)
CHUNK_PAGES = 1024
"""Pages of a table (8 MB) one purge statement looks at: a purge reads each table once, in
order, whatever it deletes. The inbox has no index on its date (each event would pay for it),
and `LIMIT`ed chunks read it again from its first page each time, past what the chunks before
had deleted: 30 days after a rebuild, whose replayed events are all dated that day, millions of
rows expired at once and the purge took hours."""
PERIOD_SECONDS = 3600


_EXPIRED = {
    "inbox": "received_at < now() - make_interval(days => $1)",
    "dead_letters": "received_at < now() - make_interval(days => $1)",
    "outbox_failed": "created_at < now() - make_interval(days => $1) AND topic LIKE '%.dlq'",
}


async def purge(pool: asyncpg.Pool, days: int) -> int:
    """Delete inbox and dead-letter rows received more than `days` days ago, and the DLQ copies
    set aside made as long ago; returns how many."""
    return await purge_expired(pool, _EXPIRED, days)


async def purge_expired(pool: asyncpg.Pool, tables: Mapping[str, str], days: int) -> int:
    """Delete the rows of each table its condition (on `$1`, `days`) says expired, a range of its
    pages a statement; returns how many."""
    removed = 0
    # PostgreSQL before 14 has no TID range scan: each range would be a scan of the whole table.
    by_pages = int(await pool.fetchval("SHOW server_version_num")) >= 140000
    for table, expired in tables.items():
        if not by_pages:
            removed += await _purge_limited(pool, table, expired, days)
            continue
        pages = await pool.fetchval("SELECT pg_relation_size($1::regclass) / current_setting('block_size')::int", table)
        for first in range(0, pages, CHUNK_PAGES):  # a TID range scan each, one transaction each
            deleted = await pool.execute(
                f"DELETE FROM {table} WHERE ctid >= '({first},0)'::tid AND ctid < '({first + CHUNK_PAGES},0)'::tid "
                f"AND {expired}",
                days,
            )
            removed += int(deleted.split()[-1])
    return removed


OLD_SERVER_CHUNK = 10_000


async def _purge_limited(pool: asyncpg.Pool, table: str, expired: str, days: int) -> int:
    """On PostgreSQL before 14: OLD_SERVER_CHUNK rows a statement, each scan from the table's
    first page (slow when many rows expire at once, as after a rebuild)."""
    removed = 0
    while True:
        deleted = await pool.execute(
            f"DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} WHERE {expired} LIMIT {OLD_SERVER_CHUNK})",
            days,
        )
        removed += (count := int(deleted.split()[-1]))
        if count < OLD_SERVER_CHUNK:
            return removed


async def periodically(
    what: str, purge: Callable[[], Awaitable[int]], period: float = PERIOD_SECONDS, **context: object
) -> None:
    """Runs `purge` every `period` seconds until cancelled, logging what it removed (`what`.purged)
    and its failures, which never end the loop: a purge is retried at the next period. PostgreSQL
    away is said once (`what`.purge_failed, then `what`.purge_recovered), not at every period
    with a traceback."""
    outage = Outage(
        log, f"{what}.purge_failed", f"{what}.purge_recovered", "PostgreSQL away: the purge runs again next period"
    )
    while True:
        try:
            removed = await purge()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            outage.failed(exc)
        else:
            outage.succeeded()
            if removed:
                log.info(f"{what}.purged", rows=removed, **context)
        await asyncio.sleep(period)


async def run(pool: asyncpg.Pool, days: int) -> None:
    await periodically("retention", lambda: purge(pool, days), older_than_days=days)
