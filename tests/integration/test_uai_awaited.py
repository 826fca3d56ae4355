"""A declaration refused `uai-inconnu` is judged again once the référentiel brings its UAI
(pipeline.Pipeline.revive), against the real broker and database: applied if the declarant may
declare it there, dead-lettered again with the reason otherwise, never applied twice."""

import asyncpg
import pytest

import contracts as c
from contracts.internal import PROFILS
from helpers import TopicReader, at, college, event, eventually, record_count, running, send, uai
from services.common import pipeline as pipeline_module
from services.common.pipeline import Pipeline
from services.common.storage.db import create_pool, migrate
from services.equipement.app import SPEC as EQUIPEMENT
from services.ressources.app import SPEC as RESSOURCES
from test_ressources import RID, abonnement, alerts_of, profil, publiee

KNOWN, LATE, HOSTILE = uai("0350601"), uai("0350602"), uai("0350603")
DEPARTEMENT, COMMUNE = "/collectivites/departements/035", "/collectivites/communes/35238"


def lot(source: str, where: str, lot_id: str = "L1") -> dict:
    return event(
        c.LOT,
        source,
        {"uai": where, "lot_id": lot_id, "kind": "tablette", "quantity": 3, "os": None, "browsers": []},
        time_=at(1),
    )


def reasons(records) -> list[tuple[str, str]]:
    """(dlq-reason, dlq-offset) of each DLQ copy, in order."""
    return [(dict(r.headers)["dlq-reason"].decode(), dict(r.headers)["dlq-offset"].decode()) for r in records]


async def test_a_declaration_waits_for_its_etablissement_then_is_applied_once(kafka, settings, monkeypatch):
    bootstrap = kafka.bootstrap_servers
    equipement, referentiel = settings.topic(c.EQUIPEMENT), settings.topic(c.REFERENTIEL)
    declared, misplaced = lot(DEPARTEMENT, LATE), lot(COMMUNE, LATE, "L2")  # a commune does not equip a collège
    service = running(EQUIPEMENT, settings)
    async with service as pipeline, TopicReader(bootstrap, c.dlq(equipement)) as dlq:
        await send(bootstrap, referentiel, [(KNOWN, college(KNOWN))])
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM etablissements"), what="référentiel")
        await send(bootstrap, equipement, [(LATE, declared), (LATE, misplaced)])
        await dlq.wait_for(lambda rs: len(rs) == 2, what="two refusals")
        assert [reason for reason, _ in reasons(dlq.records)] == ["uai-inconnu", "uai-inconnu"]
        await eventually(
            lambda: pipeline.pool.fetchval("SELECT count(*) = 2 FROM attente_referentiel WHERE uai = $1", LATE),
            what="both waiting for their établissement",
        )
        assert await pipeline.pool.fetchval("SELECT count(*) FROM lots") == 0
        status, body = await service.app.health()
        assert (status, body["awaiting_referentiel"]) == (200, 2), body
        scraped = (await service.app.metrics()).decode()
        assert 'feo_awaiting_referentiel{service="equipement"} 2.0' in scraped

        await send(bootstrap, referentiel, [(LATE, college(LATE, minute=2))])
        await eventually(
            lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM lots WHERE uai = $1", LATE),
            what="the declaration applied once its établissement came",
        )
        copies = await dlq.wait_for(lambda rs: len(rs) == 3, what="the misplaced one refused again")
        first, second, third = reasons(copies)
        assert third[0] == "hors-competence" and third[1] == second[1] != first[1], "the same record, judged again"
        rows = {
            r["id"]: r
            for r in await pipeline.pool.fetch("SELECT id, reason, message, accepted_at, rejudged_at FROM dead_letters")
        }
        assert rows[declared["id"]]["accepted_at"] is not None and rows[declared["id"]]["reason"] == "uai-inconnu"
        assert rows[misplaced["id"]]["reason"] == "hors-competence" and rows[misplaced["id"]]["rejudged_at"]
        assert rows[misplaced["id"]]["accepted_at"] is None and "n'équipe pas" in rows[misplaced["id"]]["message"]
        assert await pipeline.pool.fetchval("SELECT count(*) FROM attente_referentiel") == 0
        assert await pipeline.pool.fetchval("SELECT count(*) FROM inbox WHERE id = $1", declared["id"]) == 1
        status, body = await service.app.health()
        assert body["awaiting_referentiel"] == 0, body
        revived = lambda outcome, reason="": pipeline.metrics.registry.get_sample_value(  # noqa: E731
            "feo_revived_total", {"service": "equipement", "outcome": outcome, "reason": reason}
        )
        await eventually(
            lambda: _is((revived("applied"), revived("refused", "hors-competence")), (1, 1)), what="counted"
        )

        # The référentiel entry again (a later version): the revival it asks for judges nothing twice.
        judged = await pipeline.pool.fetch("SELECT * FROM dead_letters ORDER BY id")
        revived_for: list[set[str]] = []  # the UAIs of each revival the batches asked for, once it ended
        revive = pipeline.revive

        async def recorded(uais=None):
            try:
                return await revive(uais)
            finally:
                revived_for.append(set(uais or ()))

        monkeypatch.setattr(pipeline, "revive", recorded)
        await send(bootstrap, referentiel, [(LATE, college(LATE, minute=3))])
        # Asked once the batch storing the later version committed, which the test may see first.
        await eventually(lambda: _is(any(LATE in u for u in revived_for), True), what="its revival done")
        assert await pipeline.pool.fetch("SELECT * FROM dead_letters ORDER BY id") == judged
        assert await pipeline.pool.fetchval("SELECT count(*) FROM inbox WHERE id = $1", declared["id"]) == 1
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 0 FROM outbox"), what="the outbox published")
        assert await record_count(bootstrap, c.dlq(equipement)) == 3


async def _is(value, expected) -> bool:
    return value == expected


async def test_a_service_started_again_judges_what_waited_for_an_etablissement_stored_meanwhile(kafka, settings):
    """The revival comes after the commit of the batch that stores the UAI: one stopped in between
    (or a record refused in a transaction that read the référentiel before that batch committed)
    is judged at the next start."""
    bootstrap = kafka.bootstrap_servers
    equipement = settings.topic(c.EQUIPEMENT)
    declared = lot(DEPARTEMENT, LATE)
    async with running(EQUIPEMENT, settings) as pipeline:
        await send(bootstrap, equipement, [(LATE, declared)])
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM attente_referentiel"), what="waiting")
    conn = await asyncpg.connect(settings.database_url, server_settings={"search_path": "equipement"})
    try:  # the row a référentiel batch stores, its revival never run
        await conn.execute(
            "INSERT INTO etablissements (uai, nom, type, statut, code_commune, code_departement, code_academie, "
            "code_region, ouvert, event_time) VALUES ($1, 'Collège', 'college', 'public', '35238', '035', '14', "
            "'53', true, $2)",
            LATE,
            at(0),
        )
    finally:
        await conn.close()
    async with running(EQUIPEMENT, settings) as pipeline:
        await eventually(
            lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM lots WHERE uai = $1", LATE),
            what="applied at start",
        )
        assert await pipeline.pool.fetchval("SELECT accepted_at IS NOT NULL FROM dead_letters") is True


async def test_a_waiting_record_the_database_refuses_is_dead_lettered_alone(kafka, settings):
    """Accepted by the contract, refused by PostgreSQL once applied (here a trigger's data
    exception, as a value beyond a column would raise): judged one record at a time, it alone is
    dead-lettered again (`donnees-invalides`), the other one applied."""
    bootstrap = kafka.bootstrap_servers
    equipement, referentiel = settings.topic(c.EQUIPEMENT), settings.topic(c.REFERENTIEL)
    poisoned, fine = lot(DEPARTEMENT, HOSTILE, "POISON"), lot(DEPARTEMENT, HOSTILE, "L2")
    async with running(EQUIPEMENT, settings) as pipeline, TopicReader(bootstrap, c.dlq(equipement)) as dlq:
        await pipeline.pool.execute(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.lot_id = 'POISON' THEN RAISE EXCEPTION 'refused' USING ERRCODE = 'data_exception'; END IF; "
            "RETURN NEW; END $$; "
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON lots FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
        )
        await send(bootstrap, equipement, [(HOSTILE, poisoned), (HOSTILE, fine)])
        await dlq.wait_for(lambda rs: len(rs) == 2, what="two refusals")
        await send(bootstrap, referentiel, [(HOSTILE, college(HOSTILE))])
        await eventually(
            lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM lots WHERE uai = $1", HOSTILE),
            what="the good one applied",
        )
        copies = await dlq.wait_for(lambda rs: len(rs) == 3, what="the poisoned one refused again")
        assert reasons(copies)[2][0] == "donnees-invalides"
        row = await pipeline.pool.fetchrow("SELECT reason, message FROM dead_letters WHERE id = $1", poisoned["id"])
        assert row["reason"] == "donnees-invalides" and "SQLSTATE 22000" in row["message"], row
        assert await pipeline.pool.fetchval("SELECT count(*) FROM attente_referentiel") == 0


async def test_a_subscription_that_waited_for_its_etablissement_raises_its_alert(kafka, settings):
    """ressources: the GAR subscribes a collège the ministère has not published yet; once it
    does, the subscription is applied and its pair evaluated (its equipment known already)."""
    where = uai("0350604")
    bootstrap = kafka.bootstrap_servers
    catalogue = settings.topic(c.CATALOGUE)
    subscription = abonnement(where, 1)
    async with (
        running(RESSOURCES, settings) as pipeline,
        TopicReader(bootstrap, settings.topic(c.ALERTES)) as alerts,
        TopicReader(bootstrap, c.dlq(catalogue)) as dlq,
    ):
        await send(bootstrap, settings.topic(PROFILS), [profil(where, 1, "12.5")])
        await send(bootstrap, catalogue, [(RID, publiee(1)), (where, subscription)])
        await dlq.wait_for(lambda rs: reasons(rs) and reasons(rs)[0][0] == "uai-inconnu", what="uai-inconnu")
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM recus"), what="the profile")
        assert await pipeline.pool.fetchval("SELECT count(*) FROM abonnements") == 0

        await send(bootstrap, settings.topic(c.REFERENTIEL), [(where, college(where))])
        records = await alerts.wait_for(lambda rs: alerts_of(rs, c.ALERTE_LEVEE), what="alerte-levee")
        [levee] = alerts_of(records, c.ALERTE_LEVEE)
        assert levee["data"]["uai"] == where and levee["data"]["kind"] == "equipement-incompatible"
        assert await pipeline.pool.fetchval("SELECT accepted_at IS NOT NULL FROM dead_letters") is True
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 0 FROM outbox"), what="the outbox published")
        assert await record_count(bootstrap, c.dlq(catalogue)) == 1


async def test_a_fault_judging_one_waiting_record_leaves_it_waiting_and_judges_the_others(kafka, settings):
    """Not its data (a fault: here a trigger's error, as PostgreSQL away would be): the record
    stays waiting, the others of its pass are applied, and the next pass applies it."""
    bootstrap = kafka.bootstrap_servers
    equipement, referentiel = settings.topic(c.EQUIPEMENT), settings.topic(c.REFERENTIEL)
    faulty, fine = lot(DEPARTEMENT, HOSTILE, "FAULT"), lot(DEPARTEMENT, HOSTILE, "L2")
    async with running(EQUIPEMENT, settings) as pipeline:
        await pipeline.pool.execute(
            "CREATE FUNCTION fault() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.lot_id = 'FAULT' THEN RAISE EXCEPTION 'fault'; END IF; RETURN NEW; END $$; "
            "CREATE TRIGGER fault BEFORE INSERT ON lots FOR EACH ROW EXECUTE FUNCTION fault()"
        )
        await send(bootstrap, equipement, [(HOSTILE, faulty), (HOSTILE, fine)])
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 2 FROM attente_referentiel"), what="waiting")
        await send(bootstrap, referentiel, [(HOSTILE, college(HOSTILE))])
        await eventually(
            lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM lots WHERE uai = $1", HOSTILE),
            what="the other one applied",
        )
        assert await pipeline.pool.fetchval("SELECT count(*) FROM attente_referentiel") == 1
        assert await pipeline.pool.fetchval("SELECT reason FROM dead_letters WHERE id = $1", faulty["id"]) == (
            "uai-inconnu"
        ), "not refused: it was not its data"

        await pipeline.pool.execute("DROP TRIGGER fault ON lots")
        await pipeline.revive()  # as the next pass does (or the minute's, if the test got that slow)
        assert await pipeline.pool.fetchval("SELECT count(*) FROM lots WHERE uai = $1", HOSTILE) == 2
        assert await pipeline.pool.fetchval("SELECT count(*) FROM attente_referentiel") == 0


async def test_a_rebuild_carries_the_live_judgements_and_keeps_its_own(database_url):
    """deploy/reconstruire.carry_dead_letters: the live schema's judgement of a record that waited
    is taken whole; one the live schema has not judged keeps the rebuild's; a record the live
    schema settled (judged, replayed) waits no longer in the rebuilt one; one whose DLQ copy a
    replay found gone stays marked so (else the next replays take it among the oldest again)."""
    from deploy.reconstruire import carry_dead_letters

    live, fresh = "carry_live", "carry_fresh"
    pools = {schema: await create_pool(database_url, schema) for schema in (live, fresh)}
    try:
        for schema, pool in pools.items():
            await migrate(pool, schema, EQUIPEMENT.package_dir)
        accepted_live, rejudged_live, replayed_live, accepted_rebuilt = range(4)
        waiting = "INSERT INTO attente_referentiel VALUES ('t', 0, $1, $2, NULL, '{}', '[]')"
        refused = "INSERT INTO dead_letters (topic, partition, \"offset\", reason, message) VALUES ('t', 0, $1, $2, $3)"
        for offset in range(4):  # both schemas refused all four for want of their UAI
            for pool in pools.values():
                await pool.execute(refused, offset, "uai-inconnu", "inconnu")
        for offset in (accepted_live, rejudged_live, replayed_live):  # the rebuild's still wait
            await pools[fresh].execute(waiting, offset, LATE)
        await pools[live].execute('UPDATE dead_letters SET accepted_at = now() WHERE "offset" = $1', accepted_live)
        await pools[live].execute(
            "UPDATE dead_letters SET reason = 'hors-competence', message = 'n''équipe pas', rejudged_at = now() "
            'WHERE "offset" = $1',
            rejudged_live,
        )
        await pools[live].execute('UPDATE dead_letters SET replayed_at = now() WHERE "offset" = $1', replayed_live)
        await pools[live].execute(
            'UPDATE dead_letters SET copy_missing_at = now() WHERE "offset" = $1', accepted_rebuilt
        )
        await pools[fresh].execute('UPDATE dead_letters SET accepted_at = now() WHERE "offset" = $1', accepted_rebuilt)

        async with pools[fresh].acquire() as session:
            await carry_dead_letters(session, live, fresh)
        rows = {
            r["offset"]: r
            for r in await pools[fresh].fetch('SELECT "offset", reason, accepted_at, rejudged_at FROM dead_letters')
        }
        live_rows = {r["offset"]: r for r in await pools[live].fetch('SELECT "offset", accepted_at FROM dead_letters')}
        assert rows[accepted_live]["accepted_at"] == live_rows[accepted_live]["accepted_at"]
        assert rows[rejudged_live]["reason"] == "hors-competence" and rows[rejudged_live]["rejudged_at"]
        assert rows[accepted_rebuilt]["accepted_at"] is not None, "the rebuild's own judgement kept"
        missing = 'SELECT "offset" FROM dead_letters WHERE copy_missing_at IS NOT NULL'
        assert [r["offset"] for r in await pools[fresh].fetch(missing)] == [accepted_rebuilt]
        assert rows[replayed_live]["reason"] == "uai-inconnu" and rows[replayed_live]["accepted_at"] is None
        assert await pools[fresh].fetchval("SELECT count(*) FROM attente_referentiel") == 0, "settled: none waits"
    finally:
        for pool in pools.values():
            await pool.close()


def hold_revivals(monkeypatch) -> None:
    """Records waiting for their établissement are judged again when the test says (`revive()`),
    not when it comes, nor by the periodic pass, which a test still running 60 s after its start
    (a loaded machine) met first (audit helper-189 #12)."""
    from services.common.runtime import lifecycle

    monkeypatch.setattr(Pipeline, "_due", lambda self, uais: None)
    monkeypatch.setattr(lifecycle, "REVIVAL_PERIOD_SECONDS", 3600)


async def test_a_record_that_waited_loses_equal_times_to_the_state_that_came_after_it(kafka, settings, monkeypatch):
    """A lot refused for want of its établissement, then the établissement and the same lot
    again with the same `time` (a correction) accepted before the first is judged again: the
    later arrival wins equal times, so the correction stays, though the first is applied after it."""
    hold_revivals(monkeypatch)
    bootstrap = kafka.bootstrap_servers
    equipement, referentiel = settings.topic(c.EQUIPEMENT), settings.topic(c.REFERENTIEL)
    where = uai("0350604")
    first = lot(DEPARTEMENT, where)
    correction = lot(DEPARTEMENT, where)
    correction["data"]["quantity"] = 30  # the same lot and `time`, another event
    async with running(EQUIPEMENT, settings) as pipeline:
        await send(bootstrap, equipement, [(where, first)])
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM attente_referentiel"), what="waiting")
        await send(bootstrap, referentiel, [(where, college(where))])
        await send(bootstrap, equipement, [(where, correction)])
        quantity = "SELECT quantity FROM lots WHERE uai = $1"
        await eventually(
            lambda: pipeline.pool.fetchval("SELECT quantity = 30 FROM lots WHERE uai = $1", where),
            what="the correction applied",
        )
        assert await pipeline.revive() == 1
        assert await pipeline.pool.fetchval(quantity, where) == 30, "the correction stays"
        assert await pipeline.pool.fetchval("SELECT count(*) FROM attente_referentiel") == 0


async def test_a_uai_s_waiting_records_are_judged_again_together_so_equal_times_keep_their_order(
    kafka, settings, monkeypatch
):
    """Two waiting records of one lot with the same `time`, the correction after: the later
    arrival wins (CONTRACTS.md). Judged again 500 records per transaction, the 500th and the
    501st fell in two: the first one's state, held, counted as come after the correction,
    which was stale. A UAI's waiting records are judged in one transaction."""
    hold_revivals(monkeypatch)
    bootstrap = kafka.bootstrap_servers
    where = uai("0350605")
    fillers = [(where, lot(DEPARTEMENT, where, f"F{n}")) for n in range(499)]
    first = lot(DEPARTEMENT, where, "X")
    correction = lot(DEPARTEMENT, where, "X")
    correction["data"]["quantity"] = 30  # the same lot and `time`, sent after
    async with running(EQUIPEMENT, settings) as pipeline:
        await send(bootstrap, settings.topic(c.EQUIPEMENT), [*fillers, (where, first), (where, correction)])
        await eventually(
            lambda: pipeline.pool.fetchval("SELECT count(*) = 501 FROM attente_referentiel"), what="501 waiting"
        )
        await send(bootstrap, settings.topic(c.REFERENTIEL), [(where, college(where))])
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM etablissements"), what="the UAI")
        assert await pipeline.revive() == 501
        assert await pipeline.pool.fetchval("SELECT quantity FROM lots WHERE lot_id = 'X'") == 30
        assert await pipeline.pool.fetchval("SELECT count(*) FROM inbox WHERE outcome = 'stale'") == 0


async def test_uais_waiting_records_go_together_up_to_the_bound_and_a_uai_s_never_apart(kafka, settings, monkeypatch):
    """REVIVAL_RECORDS (here 4) bounds what a revival's transaction takes of several UAIs (250 of
    them, whatever their records, before); a UAI with more, 11, is judged alone, in one
    transaction still, in parts of 4 in their order (memory bounded): its two records of lot X
    with the same `time`, in the first part and the last, keep their order (the correction
    wins), and a later `time` wins whatever its place (Y)."""
    hold_revivals(monkeypatch)
    monkeypatch.setattr(pipeline_module, "REVIVAL_RECORDS", 4)
    transactions: list[int] = []
    parts: list[int] = []
    judge, take = Pipeline._revival, pipeline_module._waiting

    async def judged(self, origins):
        transactions.append(len(origins))
        return await judge(self, origins)

    async def taken(conn, origins):
        parts.append(len(origins))
        return await take(conn, origins)

    monkeypatch.setattr(Pipeline, "_revival", judged)
    monkeypatch.setattr(pipeline_module, "_waiting", taken)
    bootstrap = kafka.bootstrap_servers
    many, few = uai("0350606"), [uai(f"035061{n}") for n in range(3)]
    first, correction = lot(DEPARTEMENT, many, "X"), lot(DEPARTEMENT, many, "X")
    correction["data"]["quantity"] = 30  # the same lot and `time`, sent after
    later, earlier = lot(DEPARTEMENT, many, "Y"), lot(DEPARTEMENT, many, "Y")
    later["time"], later["data"]["quantity"] = at(5).isoformat(), 50  # sent first, with the later `time`
    fillers = [(many, lot(DEPARTEMENT, many, f"F{n}")) for n in range(7)]
    records = [(many, first), (many, later), *fillers, (many, earlier), (many, correction)]
    records += [(u, lot(DEPARTEMENT, u, f"L{n}")) for u in few for n in range(2)]  # 2 each: 2 + 2, then 2
    async with running(EQUIPEMENT, settings) as pipeline:
        await send(bootstrap, settings.topic(c.EQUIPEMENT), records, partition=0)
        await eventually(
            lambda: pipeline.pool.fetchval("SELECT count(*) = 17 FROM attente_referentiel"), what="17 waiting"
        )
        await send(bootstrap, settings.topic(c.REFERENTIEL), [(u, college(u)) for u in [many, *few]])
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 4 FROM etablissements"), what="the UAIs")
        assert await pipeline.revive() == 17
        assert sorted(transactions) == [2, 4, 11], "the 11 of one UAI together; the others' 6 as 4 then 2"
        assert sorted(parts) == [2, 3, 4, 4, 4], "the 11 taken 4, 4, then 3"
        assert await pipeline.pool.fetchval("SELECT quantity FROM lots WHERE lot_id = 'X'") == 30
        assert await pipeline.pool.fetchval("SELECT quantity FROM lots WHERE lot_id = 'Y'") == 50
        assert await pipeline.pool.fetchval("SELECT count(*) FROM inbox WHERE outcome = 'stale'") == 1, "Y's earlier"
        assert await pipeline.pool.fetchval("SELECT count(*) FROM lots") == 2 + 7 + 6
        assert await pipeline.pool.fetchval("SELECT count(*) FROM attente_referentiel") == 0


async def test_a_record_the_database_refuses_leaves_the_other_uais_equal_times_in_their_order(
    kafka, settings, monkeypatch
):
    """A waiting record PostgreSQL refuses (here a trigger's data_exception) is found by judging
    again apart: first its UAI's records from the others', so that another UAI's two records of
    one lot with the same time still go in one transaction (the correction wins); one at a time,
    they did not."""
    hold_revivals(monkeypatch)
    bootstrap = kafka.bootstrap_servers
    poisoned, fine = uai("0350705"), uai("0350706")
    first, correction = lot(DEPARTEMENT, fine, "X"), lot(DEPARTEMENT, fine, "X")
    correction["data"]["quantity"] = 30  # the same lot and `time`, sent after
    async with running(EQUIPEMENT, settings) as pipeline:
        await pipeline.pool.execute(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.lot_id = 'POISON' THEN RAISE EXCEPTION 'refused' USING ERRCODE = 'data_exception'; END IF; "
            "RETURN NEW; END $$; "
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON lots FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
        )
        records = [(poisoned, lot(DEPARTEMENT, poisoned, "POISON")), (fine, first), (fine, correction)]
        await send(bootstrap, settings.topic(c.EQUIPEMENT), records, partition=0)
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 3 FROM attente_referentiel"), what="waiting")
        await send(bootstrap, settings.topic(c.REFERENTIEL), [(poisoned, college(poisoned)), (fine, college(fine))])
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 2 FROM etablissements"), what="the UAIs")
        assert await pipeline.revive() == 3
        assert await pipeline.pool.fetchval("SELECT quantity FROM lots WHERE lot_id = 'X'") == 30
        assert await pipeline.pool.fetchval("SELECT count(*) FROM attente_referentiel") == 0
        assert await pipeline.pool.fetchval("SELECT count(*) FROM lots WHERE lot_id = 'POISON'") == 0


async def test_a_server_refusing_writes_ends_a_revival_pass_at_once_leaving_every_record_waiting(
    kafka, settings, monkeypatch
):
    """Read-only (a standby after a failover), full, or shutting down, PostgreSQL fails every
    record alike: the pass took each for a faulty record, one transaction and one ERROR line
    with its traceback per waiting record (audit helper-176 #2: 40 records, 40 lines)."""
    from helpers import Said

    hold_revivals(monkeypatch)
    where = uai("0350606")
    lots = [(where, lot(DEPARTEMENT, where, f"L{n}")) for n in range(5)]
    async with running(EQUIPEMENT, settings) as pipeline:
        await send(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT), lots)
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 5 FROM attente_referentiel"), what="waiting")
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(where, college(where))])
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM etablissements"), what="the UAI")
        writable = pipeline._pool
        read_only = await create_pool(
            settings.database_url, "equipement", settings={"default_transaction_read_only": "on"}
        )
        said = Said()
        monkeypatch.setattr(pipeline_module, "log", said)
        try:
            monkeypatch.setattr(pipeline, "_pool", read_only)
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await pipeline.revive()
        finally:
            monkeypatch.setattr(pipeline, "_pool", writable)
            await read_only.close()
        assert not said.named("referentiel.revival_failed") and not said.named("referentiel.revival_isolating")
        assert await pipeline.pool.fetchval("SELECT count(*) FROM attente_referentiel") == 5, "every one waiting"
        assert await pipeline.revive() == 5
