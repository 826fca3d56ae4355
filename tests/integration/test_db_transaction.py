"""`db.transaction` on the real database: the statements sent with its BEGIN run inside the
transaction, the block's work commits when it ends and rolls back when it raises."""

import asyncpg
import pytest

from services.common.storage.db import DATABASE_AWAY, REFUSED_BY_DATABASE, CommitRefused, transaction

HELD = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
"""This session's advisory locks (pg_locks is the server's: other tests' sessions are in it)."""


@pytest.fixture
async def conn(database_url):
    conn = await asyncpg.connect(database_url)
    await conn.execute("CREATE TABLE faits (n int)")
    yield conn
    await conn.close()


async def test_first_statements_run_inside_the_transaction(conn: asyncpg.Connection):
    async with transaction(conn, "SET LOCAL synchronous_commit TO off", "SELECT pg_advisory_xact_lock(42)"):
        assert conn.is_in_transaction()
        assert await conn.fetchval("SHOW synchronous_commit") == "off"
        assert await conn.fetchval(f"{HELD} AND granted") == 1
    assert not conn.is_in_transaction()
    # Both were the transaction's: the setting is back to the session's, the lock released.
    assert await conn.fetchval("SHOW synchronous_commit") == "on"
    assert await conn.fetchval(HELD) == 0


async def test_commits_at_the_end_rolls_back_on_error(conn: asyncpg.Connection):
    async with transaction(conn):
        await conn.execute("INSERT INTO faits VALUES (1)")
    with pytest.raises(RuntimeError, match="en cours de route"):
        async with transaction(conn):
            await conn.execute("INSERT INTO faits VALUES (2)")
            raise RuntimeError("en cours de route")
    assert not conn.is_in_transaction()
    assert [r["n"] for r in await conn.fetch("SELECT n FROM faits")] == [1]


async def test_a_failed_statement_rolls_back_and_leaves_the_connection_usable(conn: asyncpg.Connection):
    with pytest.raises(asyncpg.DivisionByZeroError):
        async with transaction(conn):
            await conn.execute("INSERT INTO faits VALUES (3)")
            await conn.execute("SELECT 1 / 0")
    assert await conn.fetchval("SELECT count(*) FROM faits") == 0


async def test_a_pool_s_transactions_read_committed_whatever_the_database_s_default(database_url):
    """The per-key locks rely on each statement seeing what the lock's previous holder committed;
    a database whose default isolation is repeatable read took the snapshot before the lock was
    waited for (audit helper-191 #5)."""
    from services.common.storage.db import create_pool

    admin = await asyncpg.connect(database_url)
    try:
        name = await admin.fetchval("SELECT current_database()")
        await admin.execute(f"ALTER DATABASE \"{name}\" SET default_transaction_isolation = 'repeatable read'")
    finally:
        await admin.close()
    pool = await create_pool(database_url, "isolement")
    try:
        async with pool.acquire() as conn, transaction(conn):
            assert await conn.fetchval("SHOW transaction_isolation") == "read committed"
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            assert await conn.fetchval("SHOW transaction_isolation") == "repeatable read", "asked for: kept"
    finally:
        await pool.close()


async def test_a_refused_commit_is_told_apart_from_a_refused_statement(conn: asyncpg.Connection):
    """A COMMIT PostgreSQL refuses with what would be a value's fault (here a deferred check; in
    production a full NOTIFY queue, 54000) is CommitRefused, which the pipeline takes for the
    database refusing writes (the batch taken again), not for a record to dead-letter."""
    await conn.execute("ALTER TABLE faits ADD UNIQUE (n) DEFERRABLE INITIALLY DEFERRED")
    with pytest.raises(CommitRefused, match="SQLSTATE 23505") as refused:
        async with transaction(conn):
            await conn.execute("INSERT INTO faits VALUES (1), (1)")  # checked at the COMMIT
    assert isinstance(refused.value.__cause__, asyncpg.UniqueViolationError)
    assert isinstance(refused.value, DATABASE_AWAY) and not isinstance(refused.value, REFUSED_BY_DATABASE)
    assert not conn.is_in_transaction()
    with pytest.raises(asyncpg.UniqueViolationError):  # a statement's own refusal is raised as it is
        async with transaction(conn, "SET CONSTRAINTS ALL IMMEDIATE"):
            await conn.execute("INSERT INTO faits VALUES (2), (2)")
    assert await conn.fetchval("SELECT count(*) FROM faits") == 0
