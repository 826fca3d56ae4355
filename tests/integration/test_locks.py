"""Locks per key (services/common/storage/locks.py) on the real database: transactions on
different keys do not wait for each other, on a shared key the second waits for the first."""

import asyncio

import asyncpg
import pytest

from helpers import eventually, lock_waiters, migrated_pool, uai
from services.common.storage.locks import lock_keys
from services.equipement.app import SPEC


@pytest.fixture
async def pool(database_url):
    async with migrated_pool(database_url, SPEC, "verrous_test") as pool:
        yield pool


@pytest.mark.parametrize("used_before", [False, True], ids=["new keys", "keys used before"])
async def test_disjoint_keys_do_not_wait_shared_keys_do(pool: asyncpg.Pool, used_before: bool):
    """A key's row is created by its first use (and held by the inserting transaction), then
    locked by every later one: both ways, the second transaction on a key waits."""
    if used_before:
        async with pool.acquire() as conn, conn.transaction():
            await lock_keys(conn, "uai", ["0350001A", "0350002B", "0350003C", "0350009Z"])
            await lock_keys(conn, "enseignant", ["0350001A"])
    async with pool.acquire() as first, first.transaction():
        await lock_keys(first, "uai", ["0350001A", "0350002B"])

        async with pool.acquire() as other, other.transaction():
            # Different keys: immediate (a timeout here would mean a schema-wide wait).
            await asyncio.wait_for(lock_keys(other, "uai", ["0350003C"]), timeout=5)
            await asyncio.wait_for(lock_keys(other, "enseignant", ["0350001A"]), timeout=5)

        async def second() -> None:
            async with pool.acquire() as conn, conn.transaction():
                await lock_keys(conn, "uai", ["0350002B", "0350009Z"])

        waiting = asyncio.create_task(second())

        async def blocked() -> bool:  # the second transaction waits on a row lock, not done
            return not waiting.done() and await lock_waiters(first)

        await eventually(blocked, what="the second transaction waiting for the shared key")
        assert not waiting.done()
    await asyncio.wait_for(waiting, timeout=5)  # released when the first transaction ends


async def test_unknown_namespace_is_refused(pool: asyncpg.Pool):
    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(ValueError, match="unknown lock namespace 'lot'"):
            await lock_keys(conn, "lot", ["x"])
        await lock_keys(conn, "uai", [])  # nothing to lock: no statement, no error


async def test_equipement_numbers_a_uais_groups_in_commit_order(pool: asyncpg.Pool):
    """A UAI's records are read by one consumer, but those that waited for their établissement
    are judged again beside it, in another transaction (Pipeline.revive): the second to publish
    about a UAI waits for the first to commit, so its group, drawn after, is committed after
    (ressources assembles a UAI's profile from its latest whole group)."""
    import json

    import contracts as c
    from services.common.pipeline import Applied
    from services.equipement import handlers
    from services.equipement.store import EquipementStore
    from test_equipement import lot

    where = uai("0350951")

    def declared(lot_id: str) -> list[c.CloudEvent]:
        return [c.parse_event(json.dumps(lot(where, lot_id, 3, 1)).encode(), c.EQUIPEMENT)]

    async with pool.acquire() as first, first.transaction():
        held = await handlers.apply(EquipementStore(first), declared("L1"), set())

        async def second() -> Applied:
            async with pool.acquire() as conn, conn.transaction():
                return await handlers.apply(EquipementStore(conn), declared("L2"), set())

        waiting = asyncio.create_task(second())

        async def blocked() -> bool:
            return not waiting.done() and await lock_waiters(first)

        await eventually(blocked, what="the second transaction on the UAI waiting for the first")
    later = await asyncio.wait_for(waiting, timeout=5)
    [group] = {o.event.data["group"] for o in held.outgoing}
    [next_group] = {o.event.data["group"] for o in later.outgoing}
    assert next_group > group
