"""Retention of the inbox, the dead letters and the DLQ copies set aside, on the real database."""

from contextlib import asynccontextmanager

from helpers import migrated_pool
from services.common.storage.db import create_pool, migrate
from services.common.storage.retention import purge
from services.equipement.app import SPEC


@asynccontextmanager
async def migrated(database_url: str, schema: str, expired: int = 0, recent: int = 0):
    """equipement's schema, its inbox holding `expired` rows received 40 days ago and `recent` of 1 day: its pool."""
    async with migrated_pool(database_url, SPEC, schema) as pool:
        await pool.execute(
            "INSERT INTO inbox (source, id, type, event_time, received_at) "
            "SELECT '/gar', 'e' || n, 't', now(), now() - CASE WHEN n <= $1 THEN interval '40 days' "
            "ELSE interval '1 day' END FROM generate_series(1, $1::int + $2::int) AS n",
            expired,
            recent,
        )
        yield pool


async def test_rows_older_than_the_retention_are_deleted_and_recent_ones_kept(database_url):
    pool = await create_pool(database_url, "retention")
    try:
        await migrate(pool, "retention", SPEC.package_dir)
        await pool.executemany(
            "INSERT INTO inbox (source, id, type, event_time, received_at) "
            "VALUES ('/ministere', $1, 't', now(), now() - make_interval(days => $2))",
            [(f"old-{n}", 40) for n in range(3)] + [("recent", 5)],
        )
        await pool.execute(
            'INSERT INTO dead_letters (topic, partition, "offset", reason, message, received_at) '
            "VALUES ('t', 0, 1, 'r', 'm', now() - interval '40 days'), ('t', 0, 2, 'r', 'm', now())"
        )
        # Set aside (Kafka refused them for good): a DLQ copy, a partner's record, and an alert.
        await pool.execute(
            "INSERT INTO outbox_failed (seq, topic, key, record_value, headers, error, created_at) VALUES "
            "(1, 'p.equipement.declarations.v1.dlq', 'k', 'v', '[]', 'e', now() - interval '40 days'), "
            "(2, 'p.equipement.declarations.v1.dlq', 'k', 'v', '[]', 'e', now() - interval '5 days'), "
            "(3, 'p.profils.v1', 'k', 'v', '[]', 'e', now() - interval '40 days')"
        )
        assert await purge(pool, 30) == 5
        assert [r["id"] for r in await pool.fetch("SELECT id FROM inbox")] == ["recent"]
        assert await pool.fetchval('SELECT "offset" FROM dead_letters') == 2
        kept = await pool.fetch("SELECT seq FROM outbox_failed ORDER BY seq")
        assert [r["seq"] for r in kept] == [2, 3], "a recent DLQ copy, and what is no refused record, are kept"
        assert await purge(pool, 30) == 0
    finally:
        await pool.close()


class Recorded:
    """A pool whose statements are kept, to be explained."""

    def __init__(self, pool):
        self._pool, self.statements = pool, []

    async def execute(self, sql, *args):
        self.statements.append((sql, args))
        return await self._pool.execute(sql, *args)

    async def fetchval(self, sql, *args):
        return await self._pool.fetchval(sql, *args)


async def test_a_purge_reads_each_page_once_however_many_rows_expire(database_url, monkeypatch):
    """Thirty days after a rebuild, its replayed events (all dated that day) expire at once: the
    purge deleted them by LIMITed chunks, each reading the inbox again from its first page (no
    index on the date), past every row the chunks before had deleted, for hours. Now each
    statement reads a range of pages of its own (a TID range scan): one pass over the table."""
    from services.common.storage import retention

    monkeypatch.setattr(retention, "CHUNK_PAGES", 4)
    async with migrated(database_url, "retention_pages", expired=2970, recent=30) as pool:
        pages = await pool.fetchval("SELECT pg_relation_size('inbox') / current_setting('block_size')::int")
        assert pages > 3 * 4, "rows over several chunks of pages"
        recorded = Recorded(pool)
        assert await purge(recorded, 30) == 2970
        assert await pool.fetchval("SELECT count(*) FROM inbox") == 30, "the recent rows kept"
        inbox = [(sql, args) for sql, args in recorded.statements if "FROM inbox" in sql]
        assert len(inbox) == -(-pages // 4)
        for sql, args in inbox:
            plan = "\n".join(r[0] for r in await pool.fetch(f"EXPLAIN {sql}", *args))
            assert "Tid Range Scan on inbox" in plan and "Seq Scan" not in plan, plan


async def test_before_postgresql_14_the_purge_deletes_by_limited_chunks(database_url, monkeypatch):
    """No TID range scan there: each range of pages would be a scan of the whole table, every hour
    even when nothing expires. A server that says it is 13 is purged as before."""
    from services.common.storage import retention

    monkeypatch.setattr(retention, "OLD_SERVER_CHUNK", 100)

    class Thirteen(Recorded):
        async def fetchval(self, sql, *args):
            return "130011" if sql == "SHOW server_version_num" else await super().fetchval(sql, *args)

    async with migrated(database_url, "retention_13", expired=250) as pool:
        recorded = Thirteen(pool)
        assert await purge(recorded, 30) == 250
        inbox = [sql for sql, _ in recorded.statements if "FROM inbox" in sql]
        assert len(inbox) == 3 and all("LIMIT 100" in sql and "ctid >=" not in sql for sql in inbox)
        assert await pool.fetchval("SELECT count(*) FROM inbox") == 0
