"""A schema a restore did not catch up with the log (a custom DB_SCHEMA) is rebuilt, not drained:
its outbox is the backup's, of records published since or superseded, and sent again one would
stand for its key after newer ones on a compacted topic (deploy/reconstruire.py)."""

import asyncpg
import pytest

import contracts as c
from contracts.internal import PROFILS
from deploy import rattrapage, reconstruire
from deploy.rattrapage import RESTORE_LOCK, read_topic
from helpers import college, eventually, running, send, uai
from services.common.messaging.outbox import OutboxRecord, enqueue
from services.common.runtime.lifecycle import CATCH_UP_PENDING, restored_mark
from services.equipement.app import SPEC as EQUIPEMENT
from test_dead_letters import lot


async def test_a_restored_schema_is_rebuilt_without_publishing_the_backups_outbox(kafka, settings):
    bootstrap, where = kafka.bootstrap_servers, uai("0350901")
    async with running(EQUIPEMENT, settings) as pipeline:
        await send(bootstrap, settings.topic(c.REFERENTIEL), [(where, college(where))])
        await send(bootstrap, settings.topic(c.EQUIPEMENT), [(where, lot(where, "L1", 4))])
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM lots"), what="the lot stored")
    profiles = settings.topic(PROFILS)
    [profile] = await eventually(lambda: read_topic(bootstrap, profiles), what="the lot's profile published")
    conn = await asyncpg.connect(settings.database_url)
    try:  # as `./dev restore` leaves a schema it does not catch up: the backup's outbox, marked
        await conn.execute("SET search_path TO equipement")
        await enqueue(conn, [OutboxRecord(profiles, profile.key, profile.value)])  # published since the backup
        await conn.execute(f"CREATE TABLE {CATCH_UP_PENDING} AS SELECT now() AS depuis, 0::bigint AS journal_floor")
        former = await reconstruire.rebuild(EQUIPEMENT, settings)
        assert await restored_mark(conn, "equipement") is None, "the rebuilt schema is caught up"
        assert await restored_mark(conn, former) is not None
        assert await conn.fetchval("SELECT count(*) FROM equipement.lots") == 1
    finally:
        await conn.close()
    published = await read_topic(bootstrap, profiles)
    assert [r.key for r in published] == [profile.key], "the backup's outbox was not sent again"


async def test_a_restored_schema_rebuilt_keeps_the_dead_letter_copies_its_restore_found_unsent(
    kafka, settings, monkeypatch
):
    """A restore whose catch-up failed keeps, with its mark, the DLQ copies the schema it replaced
    had not sent; rebuilt instead of restored again, the schema queues them too (the replay
    refuses their records again, and their committed offsets alone said they went out)."""
    from deploy.rattrapage import committed_offsets, copies_pending_sql, pending_dead_letters
    from services.common.messaging.outbox import OutboxRelay

    async def nothing(self) -> int:
        return 0

    bootstrap, where, refused = kafka.bootstrap_servers, uai("0350902"), settings.topic(c.EQUIPEMENT)
    with monkeypatch.context() as m:  # its relay stopped before it sent the copy
        m.setattr(OutboxRelay, "drain_once", nothing)
        m.setattr(OutboxRelay, "flush", nothing)
        async with running(EQUIPEMENT, settings):
            await send(bootstrap, settings.topic(c.REFERENTIEL), [(where, college(where))])
            await send(bootstrap, refused, [(where, b"{pas du json")])

            async def committed() -> bool:
                return any(t == refused for t, _ in await committed_offsets(bootstrap, settings.topic("equipement")))

            await eventually(committed, what="the refused record's offset committed")
    conn = await asyncpg.connect(settings.database_url)
    try:  # as a failed restore leaves it: marked, the copy kept with the mark, not in the outbox
        [origin] = await pending_dead_letters(conn, "equipement", EQUIPEMENT, settings)
        await conn.execute("DELETE FROM equipement.outbox")
        await conn.execute(
            f"CREATE TABLE equipement.{CATCH_UP_PENDING} AS SELECT now() AS depuis, 0::bigint AS journal_floor; "
            + copies_pending_sql("equipement", {origin})
        )
        await reconstruire.rebuild(EQUIPEMENT, settings)
        copies = await conn.fetch("SELECT headers FROM equipement.outbox WHERE topic = $1", c.dlq(refused))
        assert len(copies) == 1, "queued, for the service's relay to send"
    finally:
        await conn.close()


async def test_no_rebuild_while_a_restore_replaces_the_schemas(settings):
    """A restore replaces schemas in one transaction, then catches them up: a rebuild meanwhile
    would switch a schema under it. The rebuild is refused, nothing made; one started once the
    restore is done goes on."""
    async with running(EQUIPEMENT, settings):
        pass  # the service's schema, to rebuild
    restoring = await asyncpg.connect(settings.database_url)
    try:
        await restoring.execute("SELECT pg_advisory_lock($1)", RESTORE_LOCK)
        with pytest.raises(reconstruire.ReconstructionError, match="a restore of this database is under way"):
            await reconstruire.rebuild(EQUIPEMENT, settings)
        schemas = await restoring.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'equipement%'")
        assert [s["nspname"] for s in schemas] == ["equipement"], "nothing made"
        await restoring.execute("SELECT pg_advisory_unlock_all()")
        assert await reconstruire.rebuild(EQUIPEMENT, settings)
    finally:
        await restoring.close()


@pytest.mark.parametrize("skew", ["newer", "older"])
async def test_no_rebuild_by_another_version_than_the_service_s(settings, skew):
    """The rebuilt schema is migrated by the tool's version, the service's replicas never migrate
    again: one from another version switched in under them failed their batches for good."""
    async with running(EQUIPEMENT, settings):
        pass  # the service's schema, migrated by this version
    conn = await asyncpg.connect(settings.database_url)
    try:
        if skew == "newer":  # the service runs a version with a migration this tool has not
            await conn.execute("INSERT INTO equipement.schema_migrations (name) VALUES ('equipement/9999_later.sql')")
            said = "it has equipement/9999_later.sql, which this version does not"
        else:  # the tool is newer than the service
            said = await conn.fetchval(
                "DELETE FROM equipement.schema_migrations WHERE name = "
                "(SELECT max(name) FROM equipement.schema_migrations WHERE name LIKE 'equipement/%') RETURNING name"
            )
            said = f"this version has {said}, which it has not"
        with pytest.raises(
            reconstruire.ReconstructionError, match="run the rebuild with the version equipement runs"
        ) as e:
            await reconstruire.rebuild(EQUIPEMENT, settings)
        assert said in str(e.value)
        schemas = await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'equipement%'")
        assert [s["nspname"] for s in schemas] == ["equipement"], "nothing made"
    finally:
        await conn.close()


async def test_a_service_upgraded_while_its_rebuild_replays_keeps_its_schema(settings, monkeypatch):
    """Checked at the start only, a rebuild whose service was upgraded during its hours-long
    replay (the new replicas migrating the live schema) switched in a schema of the former
    version under them (audit helper-170 #3). Checked again at the switch, its writers held."""
    async with running(EQUIPEMENT, settings):
        pass
    conn = await asyncpg.connect(settings.database_url)
    replay = rattrapage.rattraper

    async def replayed_while_upgraded(cible, said=None):
        await conn.execute(
            "INSERT INTO equipement.schema_migrations (name) VALUES ('equipement/9999_later.sql') "
            "ON CONFLICT DO NOTHING"
        )
        return await replay(cible, said)

    monkeypatch.setattr(rattrapage, "rattraper", replayed_while_upgraded)
    try:
        with pytest.raises(reconstruire.ReconstructionError, match=r"it has equipement/9999_later\.sql"):
            await reconstruire.rebuild(EQUIPEMENT, settings)
        schemas = await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'equipement%'")
        assert [s["nspname"] for s in schemas] == ["equipement"], "the service keeps its schema, nothing else left"
    finally:
        await conn.close()


async def test_a_restored_schema_of_an_earlier_version_is_migrated_then_rebuilt(kafka, settings, capsys, monkeypatch):
    """A custom DB_SCHEMA restored from a backup taken before this version's latest migration:
    the restore does not catch it up, a service refuses to start on it (marked) before it would
    migrate it, and the rebuild its refusal advises refused a schema of another version: no way
    back. The rebuild migrates it first (no replica runs on it), then rebuilds it."""
    bootstrap, where = kafka.bootstrap_servers, uai("0350902")
    async with running(EQUIPEMENT, settings) as pipeline:
        await send(bootstrap, settings.topic(c.REFERENTIEL), [(where, college(where))])
        await send(bootstrap, settings.topic(c.EQUIPEMENT), [(where, lot(where, "L1", 4))])
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM lots"), what="the lot stored")
    conn = await asyncpg.connect(settings.database_url)
    try:  # the backup's: before equipement's latest migration (an ALTER TABLE that runs again), marked
        latest = await conn.fetchval(
            "DELETE FROM equipement.schema_migrations WHERE name = "
            "(SELECT max(name) FROM equipement.schema_migrations WHERE name LIKE 'equipement/%') RETURNING name"
        )
        await conn.execute(
            f"CREATE TABLE equipement.{CATCH_UP_PENDING} AS SELECT now() AS depuis, 0::bigint AS journal_floor"
        )
        capsys.readouterr()
        monkeypatch.setattr(rattrapage, "PROGRESS_SECONDS", 0)  # a line at every batch replayed
        former = await reconstruire.rebuild(EQUIPEMENT, settings)
        said = capsys.readouterr().out
        assert f"migrated first ({latest})" in said
        assert "equipement_reconstruit: 2 of about 2 records replayed (100 %)" in said, said
        assert await restored_mark(conn, "equipement") is None, "rebuilt, caught up"
        assert await conn.fetchval("SELECT count(*) FROM equipement.lots") == 1
        migrated = f'SELECT count(*) FROM "{former}".schema_migrations WHERE name = $1'
        assert await conn.fetchval(migrated, latest) == 1
    finally:
        await conn.close()


async def test_a_schema_that_applied_a_withdrawn_migration_is_rebuilt(settings):
    """common/0016_attente_referentiel_origin was committed, then deleted minutes later: no
    version has it, and a schema that applied it had every rebuild refused, for good, as one of
    another version (audit s62 #7)."""
    async with running(EQUIPEMENT, settings):
        pass
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(
            "INSERT INTO equipement.schema_migrations (name) VALUES ('common/0016_attente_referentiel_origin.sql')"
        )
        former = await reconstruire.rebuild(EQUIPEMENT, settings)
        schemas = await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'equipement%' ORDER BY 1")
        assert [s["nspname"] for s in schemas] == ["equipement", former], "rebuilt and switched"
    finally:
        await conn.close()
