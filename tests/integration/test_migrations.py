"""Migrations against the real PostgreSQL: one that needs a table another session holds (a
backup's pg_dump holds every table for its whole run) gives way, lets the table's writers
through, and is tried again until it is applied."""

import asyncio
import hashlib
import json
import time
from types import SimpleNamespace

import asyncpg

import contracts as c
from contracts import parse_event
from helpers import Said, college, event, eventually, uai
from services.common.runtime import startup
from services.common.runtime.settings import ServiceSettings
from services.common.storage import db, inbox
from services.common.storage.db import create_pool, migrate
from services.ressources.app import SPEC

LATEST = "ressources/0013_reevaluations_tour.sql"  # an ALTER TABLE of reevaluations


async def _behind_a_backup(backup: asyncpg.Connection, table: str, pool: asyncpg.Pool, monkeypatch):
    """`table` held as a backup's pg_dump holds it (ACCESS SHARE, in its repeatable-read
    transaction), and ressources' migrations started behind it: (the backup's transaction, the
    migrating task, what db logs meanwhile)."""
    held = backup.transaction(isolation="repeatable_read")
    await held.start()
    await backup.execute(f"LOCK TABLE ressources.{table} IN ACCESS SHARE MODE")
    said = Said()
    monkeypatch.setattr(db, "log", said)
    return held, asyncio.create_task(migrate(pool, "ressources", SPEC.package_dir)), said


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
        held, migrating, said = await _behind_a_backup(backup, "reevaluations", pool, monkeypatch)
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


async def test_each_migration_is_kept_with_its_text_checksum_and_a_changed_file_is_said(database_url, monkeypatch):
    """A migration edited after it was applied (common/0015 was, three times in 40 minutes) left
    the deployed schemas what the former text made, a new one what the new text makes, and
    nothing said so (audit helper-177 #4)."""
    pool = await create_pool(database_url, "ressources")
    try:
        await migrate(pool, "ressources", SPEC.package_dir)
        kept = {r["name"]: r["checksum"] for r in await pool.fetch("SELECT name, checksum FROM schema_migrations")}
        files = dict(db._migration_files(SPEC.package_dir))
        assert kept == {name: hashlib.sha256(sql.encode()).hexdigest() for name, sql in files.items()}

        said = Said()
        monkeypatch.setattr(db, "log", said)
        edited = {**files, LATEST: files[LATEST] + "\n-- reworded after it was deployed\n"}
        monkeypatch.setattr(db, "_migration_files", lambda d: list(edited.items()))
        await migrate(pool, "ressources", SPEC.package_dir)

        [line] = said.named("migration.changed")
        assert (line["level"], line["schema"], line["migrations"]) == ("warning", "ressources", [LATEST])
        assert not said.named("migration.applied"), "an applied migration is never applied again"
        assert await pool.fetchval("SELECT checksum FROM schema_migrations WHERE name = $1", LATEST) == kept[LATEST]
    finally:
        await pool.close()


async def test_a_schema_an_early_text_of_0015_migrated_is_repaired(database_url):
    """common/0015 was rewritten after its first commits (audit helper-194 #2): a schema one of
    those texts migrated kept `value` and a trigger refusing to delete a twin row, so every batch
    and relay round failed for good. 0020 makes what 0015's final text makes."""
    schema = "ressources_0015_ancien"
    pool = await create_pool(database_url, schema)
    try:
        await migrate(pool, schema, SPEC.package_dir)
        for table in ("outbox", "outbox_failed"):
            await pool.execute(f"ALTER TABLE {table} RENAME COLUMN record_value TO value")
        await pool.execute(
            "CREATE FUNCTION outbox_twin_guard() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF current_setting('feo.outbox_twins', true) IS DISTINCT FROM 'on' THEN RAISE EXCEPTION 'guarded'; "
            "END IF; RETURN OLD; END $$"
        )
        await pool.execute(
            "CREATE TRIGGER outbox_twin_guard BEFORE DELETE ON outbox "
            "FOR EACH ROW WHEN (OLD.twin_topic IS NOT NULL) EXECUTE FUNCTION outbox_twin_guard()"
        )
        await pool.execute("DELETE FROM schema_migrations WHERE name = 'common/0020_outbox_twins_reparation.sql'")

        await migrate(pool, schema, SPEC.package_dir)
        await pool.execute(
            "INSERT INTO outbox (topic, key, record_value, twin_topic, twin_key) VALUES ('t', 'k', 'v', 't2', 'k')"
        )
        assert await pool.fetchval("WITH d AS (DELETE FROM outbox RETURNING 1) SELECT count(*) FROM d") == 1
        assert await pool.fetchval("SELECT count(*) FROM outbox_failed WHERE record_value IS NULL") == 0
        await migrate(pool, schema, SPEC.package_dir)  # nothing to do the second time, nor on a fresh schema
    finally:
        await pool.execute(f"DROP SCHEMA {schema} CASCADE")
        await pool.close()


async def test_the_inbox_scoped_by_domain_keeps_the_events_it_held_before(database_url):
    """common/0021 scopes the inbox's key by the types' domain: an event held before it is
    still a duplicate after it, while the same (source, id) in another domain is not."""
    schema = "ressources_0021_inbox"
    pool = await create_pool(database_url, schema)
    retiree = event(c.RESSOURCE_RETIREE, "/ministere", {"resource_id": "ark:/67375/m"}, subject="ark:/67375/m")
    catalogue = parse_event(json.dumps(retiree | {"id": "taken"}).encode(), c.CATALOGUE)
    etablissement = parse_event(json.dumps(college(uai("0350210")) | {"id": "taken"}).encode(), c.REFERENTIEL)
    try:
        await migrate(pool, schema, SPEC.package_dir)
        await pool.execute(
            "ALTER TABLE inbox DROP COLUMN domaine, ADD PRIMARY KEY (source, id); "
            "DELETE FROM schema_migrations WHERE name = 'common/0021_inbox_par_domaine.sql'"
        )
        former_claim = (  # the statement before 0021, its key (source, id)
            "INSERT INTO inbox (source, id, type, event_time) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT DO NOTHING RETURNING id"
        )
        for e, claimed in ((catalogue, "taken"), (etablissement, None)):
            assert await pool.fetchval(former_claim, e.source, e.id, e.type, e.time) == claimed

        await migrate(pool, schema, SPEC.package_dir)
        async with pool.acquire() as conn:
            assert await inbox.claim(conn, [catalogue]) == []
            assert await inbox.claim(conn, [etablissement]) == [etablissement]
            assert await inbox.claim(conn, [etablissement]) == []
    finally:
        await pool.execute(f"DROP SCHEMA {schema} CASCADE")
        await pool.close()


async def test_a_migration_longer_than_the_session_s_statement_timeout_is_applied(database_url, monkeypatch):
    """A role's or database's statement_timeout (here the session's: 200 ms) stopped a migration
    that runs longer, at every start, for good (audit helper-194 #4)."""
    schema = "ressources_migration_lente"
    files = [*db._migration_files(SPEC.package_dir), ("ressources/9999_lente.sql", "SELECT pg_sleep(0.5)")]
    monkeypatch.setattr(db, "_migration_files", lambda d: files)
    pool = await create_pool(database_url, schema, settings={"statement_timeout": "200"})
    try:
        await migrate(pool, schema, SPEC.package_dir)
        assert await pool.fetchval("SELECT count(*) FROM schema_migrations WHERE name = 'ressources/9999_lente.sql'")
    finally:
        await pool.execute(f"DROP SCHEMA {schema} CASCADE")
        await pool.close()


async def test_a_migration_longer_than_the_startup_timeout_is_applied_and_the_deadline_then_holds(
    database_url, monkeypatch
):
    """The start-up guard ended a process STARTUP_TIMEOUT_SECONDS after its start whatever it was
    doing: a migration that runs longer (a table rewritten on a large deployment) was rolled back
    at every start, for good (audit helper-194 #4). The seconds its statements run are not
    counted, and the guard still ends a process that is not consuming once the rest is spent."""
    schema = "ressources_migration_longue"
    files = [*db._migration_files(SPEC.package_dir), ("ressources/9999_longue.sql", "SELECT pg_sleep(2.5)")]
    monkeypatch.setattr(db, "_migration_files", lambda d: files)
    pool = await create_pool(database_url, schema)
    broker, pipeline = SimpleNamespace(subscribers=[]), SimpleNamespace(pool=pool, relay=None)
    guard = startup.Guard("ressources", ServiceSettings(startup_timeout_seconds=1.5), broker, pipeline)
    failures: list[str] = []
    guard._fail = failures.append  # type: ignore[method-assign]
    try:
        watching = asyncio.create_task(guard.watch(time.monotonic() + 1.5))
        await migrate(pool, schema, SPEC.package_dir)
        assert not failures, "not ended while its migration ran"
        assert await pool.fetchval("SELECT count(*) FROM schema_migrations WHERE name = 'ressources/9999_longue.sql'")
        await asyncio.wait_for(watching, 10)
        assert [f.split(" (")[0] for f in failures] == [
            "not consuming 1.5 s after start, its migrations' statements not counted"
        ]
    finally:
        await pool.execute(f"DROP SCHEMA {schema} CASCADE")
        await pool.close()


async def test_a_schema_migrated_before_checksums_gets_them_even_behind_a_backup(database_url, monkeypatch):
    """Its schema_migrations has no checksum column, and rows written by a former replica during
    a rolling update none: the column is added once (waiting behind a backup's lock, which held
    every table, as a migration does), each row takes its file's, and nothing is said changed."""
    monkeypatch.setattr(db, "MIGRATION_LOCK_TIMEOUT_MS", 200)
    monkeypatch.setattr(db, "MIGRATION_RETRY_SECONDS", 0.2)
    pool = await create_pool(database_url, "ressources")
    backup = await asyncpg.connect(database_url)
    try:
        await migrate(pool, "ressources", SPEC.package_dir)
        await pool.execute("ALTER TABLE schema_migrations DROP COLUMN checksum")
        held, migrating, said = await _behind_a_backup(backup, "schema_migrations", pool, monkeypatch)
        waiting = lambda: said.named("migration.waiting_for_lock")  # noqa: E731
        await eventually(lambda: asyncio.sleep(0, bool(waiting())), what="the column's addition waiting")
        assert not migrating.done()
        await held.rollback()
        await asyncio.wait_for(migrating, timeout=30)

        files = dict(db._migration_files(SPEC.package_dir))
        kept = {r["name"]: r["checksum"] for r in await pool.fetch("SELECT name, checksum FROM schema_migrations")}
        assert kept == {name: hashlib.sha256(sql.encode()).hexdigest() for name, sql in files.items()}
        assert not said.named("migration.changed") and not said.named("migration.applied")

        await pool.execute("UPDATE schema_migrations SET checksum = NULL WHERE name = $1", LATEST)  # a former replica's
        await migrate(pool, "ressources", SPEC.package_dir)
        assert await pool.fetchval("SELECT checksum FROM schema_migrations WHERE name = $1", LATEST) == kept[LATEST]
        assert not said.named("migration.changed")
    finally:
        await backup.close()
        await pool.close()


async def test_the_row_of_a_withdrawn_migration_is_not_taken_for_a_newer_version_s(database_url, monkeypatch):
    """common/0016_attente_referentiel_origin and ressources/0011_reevaluations_reprises were
    committed, then deleted minutes later: a schema that applied one was said migrated by a newer
    version at every start, with a hint (roll forward) no version could follow (audit s62 #7)."""
    pool = await create_pool(database_url, "ressources")
    try:
        await migrate(pool, "ressources", SPEC.package_dir)
        said = Said()
        monkeypatch.setattr(db, "log", said)
        withdrawn = ["common/0016_attente_referentiel_origin.sql", "ressources/0011_reevaluations_reprises.sql"]
        await pool.executemany("INSERT INTO schema_migrations (name) VALUES ($1)", [(n,) for n in withdrawn])
        await migrate(pool, "ressources", SPEC.package_dir)
        assert not said.named("migration.schema_newer")
        await pool.execute("INSERT INTO schema_migrations (name) VALUES ('ressources/9999_a_venir.sql')")
        await migrate(pool, "ressources", SPEC.package_dir)
        [line] = said.named("migration.schema_newer")
        assert line["migrations"] == ["ressources/9999_a_venir.sql"], "a newer version's still said"
    finally:
        await pool.close()


RESSOURCES_0018_BEFORE_ITS_COMMENT = """\
-- The dashboards' list of resolved alerts, the latest resolution first: sorted by their raise,
-- one raised months ago and resolved a minute ago was pages down the list, where someone
-- checking what was just fixed never looked. Its pages and its count read through this index,
-- as the open alerts' through alertes_ouvertes.
CREATE INDEX alertes_resolues ON alertes (resolved_at DESC, alert_id) WHERE NOT ouverte;
"""
"""ressources/0018 as 4646add committed it; d94663c added a comment line 25 minutes later."""


async def test_a_schema_ressources_0018_s_former_text_migrated_is_not_said_changed(database_url, monkeypatch):
    """Its text differs from the file by a comment alone, the schema is what the file makes: it
    was said changed at every start (audit s62 #7). Another text still is."""
    name = "ressources/0018_alertes_resolues.sql"
    pool = await create_pool(database_url, "ressources")
    try:
        await migrate(pool, "ressources", SPEC.package_dir)
        said = Said()
        monkeypatch.setattr(db, "log", said)
        former = db.checksum(RESSOURCES_0018_BEFORE_ITS_COMMENT)
        await pool.execute("UPDATE schema_migrations SET checksum = $2 WHERE name = $1", name, former)
        await migrate(pool, "ressources", SPEC.package_dir)
        assert not said.named("migration.changed")
        assert await pool.fetchval("SELECT checksum FROM schema_migrations WHERE name = $1", name) == former, "kept"
        other = db.checksum(RESSOURCES_0018_BEFORE_ITS_COMMENT + "-- another text\n")
        await pool.execute("UPDATE schema_migrations SET checksum = $2 WHERE name = $1", name, other)
        await migrate(pool, "ressources", SPEC.package_dir)
        [line] = said.named("migration.changed")
        assert line["migrations"] == [name]
    finally:
        await pool.close()
