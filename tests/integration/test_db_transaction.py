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


async def test_a_commit_refused_for_a_program_limit_is_told_apart_from_a_value_refused(conn: asyncpg.Connection):
    """A COMMIT PostgreSQL refuses for a program limit (class 54: its NOTIFY queue full, 54000,
    staged here by a deferred trigger) is CommitRefused, which the pipeline takes for the
    database refusing writes (the batch taken again), not for a record to dead-letter; a
    deferred check refused at COMMIT is a value's, raised as it is (its records isolated)."""
    await conn.execute(
        """
        CREATE FUNCTION plein() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.n = 54 THEN
                RAISE EXCEPTION 'too many notifications in the NOTIFY queue' USING ERRCODE = '54000';
            END IF;
            RETURN NULL;
        END $$;
        CREATE CONSTRAINT TRIGGER plein AFTER INSERT ON faits DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION plein();
        ALTER TABLE faits ADD UNIQUE (n) DEFERRABLE INITIALLY DEFERRED;
        """
    )
    with pytest.raises(CommitRefused, match="SQLSTATE 54000") as refused:
        async with transaction(conn):
            await conn.execute("INSERT INTO faits VALUES (54)")  # the trigger runs at the COMMIT
    assert isinstance(refused.value.__cause__, asyncpg.ProgramLimitExceededError)
    assert isinstance(refused.value, DATABASE_AWAY) and not isinstance(refused.value, REFUSED_BY_DATABASE)
    assert not conn.is_in_transaction()
    with pytest.raises(asyncpg.UniqueViolationError):  # checked at the COMMIT too: a value's
        async with transaction(conn):
            await conn.execute("INSERT INTO faits VALUES (1), (1)")
    assert not conn.is_in_transaction()
    assert await conn.fetchval("SELECT count(*) FROM faits") == 0
