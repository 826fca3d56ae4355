"""Retention of the inbox, the dead letters and the DLQ copies set aside, on the real database."""

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
