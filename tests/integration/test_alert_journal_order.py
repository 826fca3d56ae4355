"""The alert journal behind the SSE stream, with batches and re-evaluation chunks committing
concurrently (locks per UAI, no schema-wide lock): seq order stays commit order, so a reader
that has seen seq N never sees a smaller seq appear later."""

import asyncio
import json

import pytest

from helpers import eventually, lock_waiters, migrated_pool
from services.ressources import stream
from services.ressources.app import SPEC
from test_sse import alert


@pytest.fixture
async def pool(database_url):
    async with migrated_pool(database_url, SPEC) as pool:
        yield pool


async def test_a_later_journal_waits_for_the_earlier_to_commit(pool):
    """The second transaction draws its seq only once the first has committed: without the
    wait, it could commit a larger seq first, and a reader past it would never see the first's."""
    async with pool.acquire() as first, first.transaction():
        await stream.notify(first, [alert(1).value])  # seq drawn, not committed yet
        mine = await first.fetchval("SELECT max(seq) FROM alert_journal")

        async def second() -> int:
            async with pool.acquire() as conn, conn.transaction():
                await stream.notify(conn, [alert(2).value])
                return await conn.fetchval("SELECT max(seq) FROM alert_journal")

        later = asyncio.create_task(second())

        async def waiting() -> bool:
            return not later.done() and await lock_waiters(first)

        await eventually(waiting, what="the second journal waiting for the first transaction")
    assert await asyncio.wait_for(later, timeout=10) > mine


async def test_a_journal_larger_than_a_part_goes_in_parts_in_order(pool, monkeypatch):
    """One transaction's alerts may weigh more than a jsonb array holds (256 MiB): they go in
    parts (here of two events' bytes), each row in order, ids read from its event."""
    events = [alert(n).value for n in range(5)]
    monkeypatch.setattr(stream, "JOURNAL_PART_BYTES", 2 * len(events[0]) + 2)
    async with pool.acquire() as conn, conn.transaction():
        await stream.notify(conn, events)
        rows = await conn.fetch("SELECT event_id, alert_id, event FROM alert_journal ORDER BY seq")
    ids = [json.loads(e) for e in events]
    assert [(r["event_id"], r["alert_id"]) for r in rows] == [(e["id"], e["data"]["alert_id"]) for e in ids]
    assert [json.loads(r["event"]) for r in rows] == ids
    assert len(stream._parts(events, stream.JOURNAL_PART_BYTES)) == 3
