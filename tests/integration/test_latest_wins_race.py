"""Latest time wins against a concurrent writer, on the real database: an older event whose
locking read found no row (the newer one was inserted, not yet committed, by another replica)
is refused by the upsert's guard and reported stale, so it is never published as the state."""

import asyncio
import json

import pytest

import contracts as c
from helpers import eventually, lock_waiters, migrated_pool
from helpers import uai as valid_uai
from services.equipement.app import SPEC
from services.equipement.store import EquipementStore
from test_equipement import lot


@pytest.fixture
async def pool(database_url):
    async with migrated_pool(database_url, SPEC) as pool:
        yield pool


def parsed(value: dict) -> c.CloudEvent:
    return c.parse_event(json.dumps(value).encode(), c.EQUIPEMENT)


async def test_an_older_event_racing_a_newer_insert_is_stale(pool):
    uai = valid_uai("0350901")
    newer, older = parsed(lot(uai, "L1", 30, 20)), parsed(lot(uai, "L1", 10, 5))
    async with pool.acquire() as first:
        transaction = first.transaction()
        await transaction.start()
        assert list((await EquipementStore(first).store_lots([newer])).winners.values()) == [newer]

        async def second():
            async with pool.acquire() as conn, conn.transaction():
                return await EquipementStore(conn).store_lots([older])

        racing = asyncio.create_task(second())
        await eventually(lambda: lock_waiters(first), what="the older event's upsert waiting for the newer insert")
        await transaction.commit()
    verdicts = await asyncio.wait_for(racing, timeout=10)
    assert (verdicts.winners, verdicts.stale) == ({}, [older])
    assert await pool.fetchval("SELECT quantity FROM lots WHERE uai = $1 AND lot_id = 'L1'", uai) == 30
