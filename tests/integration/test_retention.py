"""Retention of the inbox and dead letters, on the real database."""

from services.common.storage.db import create_pool, migrate
from services.common.storage.retention import purge
from services.equipement.app import SPEC


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
        assert await purge(pool, 30) == 4
        assert [r["id"] for r in await pool.fetch("SELECT id FROM inbox")] == ["recent"]
        assert await pool.fetchval('SELECT "offset" FROM dead_letters') == 2
        assert await purge(pool, 30) == 0
    finally:
        await pool.close()
