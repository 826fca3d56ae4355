"""A batch whose transaction meets a deadlock (replicas locking the same keys) is replayed,
against the real broker and database: applied once, published once."""

import asyncpg

import contracts as c
from contracts.internal import PROFILS
from helpers import Said, TopicReader, college, eventually, record_count, running, send
from helpers import uai as valid_uai
from services.equipement.app import SPEC
from test_equipement import lot, referentiel_loaded


async def test_a_deadlocked_batch_is_replayed_once(kafka, settings):
    uai = valid_uai("0350801")
    async with (
        running(SPEC, settings) as pipeline,
        TopicReader(kafka.bootstrap_servers, settings.topic(PROFILS)) as profils,
    ):
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)

        original, attempts = pipeline._apply, []

        async def deadlocked_once(store, events, ref_changed):
            attempts.append(events)
            applied = await original(store, events, ref_changed)  # written, not committed
            if len(attempts) == 1:
                raise asyncpg.DeadlockDetectedError("deadlock detected")  # the transaction rolls back
            return applied

        pipeline._apply = deadlocked_once
        await send(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT), [(uai, lot(uai, "L1", 30, 1))])
        await profils.wait_for(lambda rs: len(rs) >= 1, what="the lot's record")
        assert len(attempts) == 2
        assert await pipeline.pool.fetchval("SELECT count(*) FROM inbox WHERE type = $1", c.LOT) == 1

        async def drained() -> bool:
            return await pipeline.pool.fetchval("SELECT count(*) FROM outbox") == 0

        await eventually(drained, what="the outbox published")
        assert await record_count(kafka.bootstrap_servers, settings.topic(PROFILS)) == 1, "published once"


async def test_a_batch_replayed_after_its_evaluation_says_its_alerts_once(kafka, settings, monkeypatch):
    """ressources logged a batch's alerts inside its transaction: rolled back after its
    evaluation and replayed, it said them twice (and said alerts never raised had the replay
    found otherwise). Now once, after the commit."""
    from services.ressources import handlers
    from services.ressources.app import SPEC as RESSOURCES
    from test_metrics import subscribe_unequipped

    said = Said()
    monkeypatch.setattr(handlers, "log", said)
    async with running(RESSOURCES, settings) as pipeline:
        original, attempts, failed = pipeline._apply, [], []

        async def deadlocked_once(store, events, ref_changed):
            applied = await original(store, events, ref_changed)  # evaluated, not committed
            if applied.outgoing and not failed:
                failed.append(applied)
                raise asyncpg.DeadlockDetectedError("deadlock detected")  # the transaction rolls back
            attempts.append(applied)
            return applied

        pipeline._apply = deadlocked_once
        await subscribe_unequipped(kafka, settings, valid_uai("0350802"), "ark:/67375/rejouee")
        await eventually(
            lambda: pipeline.pool.fetchval("SELECT count(*) > 0 FROM alertes WHERE ouverte"), what="the alerts stored"
        )
        assert failed, "the batch that raised the alerts failed once"
        raised = sum(len(a.outgoing) for a in attempts)
        lines = said.named("alerts.evaluated")
        assert raised > 0 and len(lines) == 1, lines
        assert lines[0]["raised"] == raised


async def test_a_batch_replayed_after_a_conflict_says_its_dead_letters_once(kafka, settings, monkeypatch):
    """`events.rejected` was said inside the batch's transaction: rolled back on a deadlock met
    after its refused record was dead-lettered, and replayed, the batch said that record twice
    (audit helper-181 #13). Now once, after the commit that dead-letters it."""
    from services.common.messaging import dlq
    from services.common.storage import positions

    said = Said()
    monkeypatch.setattr(dlq, "log", said)
    uai = valid_uai("0350803")
    async with running(SPEC, settings) as pipeline:
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)
        original, attempts = positions.advance, []

        async def deadlocked_once(conn, records):
            attempts.append(records)
            await original(conn, records)
            if len(attempts) == 1:  # the last write of the batch's transaction, after its dead letters
                raise asyncpg.DeadlockDetectedError("deadlock detected")

        monkeypatch.setattr(positions, "advance", deadlocked_once)
        refused = lot(uai, "L1", 30, 1)
        refused["data"]["quantity"] = -3  # refused: a negative quantity
        await send(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT), [(uai, refused)])

        async def dead_lettered() -> bool:
            return await pipeline.pool.fetchval("SELECT count(*) FROM dead_letters") == 1

        await eventually(dead_lettered, what="the refused record dead-lettered")
        assert len(attempts) == 2, "replayed once"
        lines = said.named("events.rejected")
        assert len(lines) == 1, lines
        assert sum(lines[0]["refused"].values()) == 1


async def test_a_batch_whose_commit_postgresql_refuses_is_taken_again_not_dead_lettered(kafka, settings):
    """A COMMIT refused with what would be a record's fault (SQLSTATE 54000 here as when the
    server's NOTIFY queue is full, which every transaction that notified meets at its COMMIT) is
    the database's state: the batch is taken again until it commits. It was isolated and each of
    its records dead-lettered, its position passed: never applied."""
    uai = valid_uai("0350802")
    async with running(SPEC, settings) as pipeline:
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)
        await pipeline.pool.execute(
            """
            CREATE SEQUENCE commit_tries;
            CREATE FUNCTION refuse_commit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM nextval('commit_tries');
                RAISE EXCEPTION 'too many notifications in the NOTIFY queue' USING ERRCODE = '54000';
            END $$;
            CREATE CONSTRAINT TRIGGER refuse_commit AFTER INSERT OR UPDATE ON lots
                DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_commit();
            """
        )
        await send(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT), [(uai, lot(uai, "L1", 30, 1))])
        await eventually(
            lambda: pipeline.pool.fetchval("SELECT is_called AND last_value >= 3 FROM commit_tries"),
            what="the batch's COMMIT refused three times",
        )
        assert await pipeline.pool.fetchval("SELECT count(*) FROM lots") == 0
        await pipeline.pool.execute("DROP TRIGGER refuse_commit ON lots")
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM lots"), what="the lot stored")
        assert await pipeline.pool.fetchval("SELECT count(*) FROM dead_letters") == 0
    assert await record_count(kafka.bootstrap_servers, settings.topic(c.dlq(c.EQUIPEMENT))) == 0
