"""Migrations against the real PostgreSQL: one that needs a table another session holds (a
backup's pg_dump holds every table for its whole run) gives way, lets the table's writers
through, and is tried again until it is applied."""

import asyncio

import asyncpg

from helpers import Said, eventually
from services.common.storage import db
from services.common.storage.db import create_pool, migrate
from services.ressources.app import SPEC

LATEST = "ressources/0013_reevaluations_tour.sql"  # an ALTER TABLE of reevaluations


async def test_a_migration_behind_a_held_table_lets_its_writers_through_and_ends_once_it_is_free(
    database_url, monkeypatch
):
    """It waited for the lock for good, every other session's writes on the table queued behind
    its request (the former version's replicas stalled), until the start-up guard ended it."""
    monkeypatch.setattr(db, "MIGRATION_LOCK_TIMEOUT_MS", 200)
    monkeypatch.setattr(db, "MIGRATION_RETRY_SECONDS", 0.2)
    every = db._migration_files
    monkeypatch.setattr(db, "_migration_files", lambda d: [m for m in every(d) if m[0] != LATEST])
    pool = await create_pool(database_url, "ressources")
    backup = await asyncpg.connect(database_url)
    try:
        await migrate(pool, "ressources", SPEC.package_dir)
        monkeypatch.setattr(db, "_migration_files", every)
        held = backup.transaction(isolation="repeatable_read")
        await held.start()
        await backup.execute("LOCK TABLE ressources.reevaluations IN ACCESS SHARE MODE")  # as pg_dump does
        said = Said()
        monkeypatch.setattr(db, "log", said)
        migrating = asyncio.create_task(migrate(pool, "ressources", SPEC.package_dir))
        waiting = lambda: said.named("migration.waiting_for_lock")  # noqa: E731
        await eventually(lambda: asyncio.sleep(0, len(waiting()) >= 2), what="the migration tried twice")
        async with asyncio.timeout(10):  # a writer of the table meanwhile, as a running replica
            await pool.execute("INSERT INTO reevaluations (resource_id, part, after_uai) VALUES ('ark:/x', 0, '')")
        assert not migrating.done()
        await held.rollback()
        await asyncio.wait_for(migrating, timeout=30)
        assert waiting()[0]["migration"] == LATEST and waiting()[0]["schema"] == "ressources"
        assert await pool.fetchval("SELECT count(*) FROM schema_migrations WHERE name = $1", LATEST) == 1
        assert await pool.fetchval("SELECT tour FROM reevaluations") is not None
    finally:
        await backup.close()
        await pool.close()


async def test_a_schema_migrated_by_a_newer_version_is_said_to_be_so(database_url, monkeypatch):
    """A rollback to a former version started it on a schema it does not know all of: every batch
    then failed on what a newer migration changed, and nothing said why (audit helper-177 #1)."""
    pool = await create_pool(database_url, "ressources")
    try:
        await migrate(pool, "ressources", SPEC.package_dir)
        said = Said()
        monkeypatch.setattr(db, "log", said)
        await migrate(pool, "ressources", SPEC.package_dir)
        assert not said.named("migration.schema_newer"), "every migration known: nothing to say"
        await pool.execute("INSERT INTO schema_migrations (name) VALUES ('ressources/9999_a_venir.sql')")
        await migrate(pool, "ressources", SPEC.package_dir)
        [line] = said.named("migration.schema_newer")
        assert (line["level"], line["schema"], line["migrations"]) == (
            "warning",
            "ressources",
            ["ressources/9999_a_venir.sql"],
        )
    finally:
        await pool.close()
