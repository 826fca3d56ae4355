"""Catching a schema up with the log (deploy/rattrapage.py) on the real broker and database:
records are replayed in the order of their timestamps across topics, so an établissement
published before its equipment is known when the equipment is judged, whatever order the
partitions are read in."""

import asyncio
import json
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError

import contracts as c
from contracts.internal import PROFILS
from deploy.rattrapage import (
    DERIVED,
    AccesInsuffisant,
    _accord_derived,
    accorder,
    check_access,
    journal_allocated,
    ouvrir,
    rattraper,
    read_by,
    read_topic,
)
from helpers import (
    NotUtf8,
    also_deleted_by_age,
    alter_topics,
    college,
    delete_before,
    event,
    eventually,
    python_record_builder,
    running,
    send,
    send_in_transactions,
)
from helpers import uai as valid_uai
from services.common.messaging.connection import KafkaAccess, kafka_options
from services.common.messaging.outbox import relay_producer
from services.common.storage.db import create_pool, migrate
from services.equipement.app import SPEC
from services.formation.app import SPEC as FORMATION
from services.ressources import queries
from services.ressources.app import SPEC as RESSOURCES
from services.ressources.lifecycle import event_id
from test_equipement import DEPARTEMENT
from test_ressources import RID, abonnement, old_tablets_at, publiee


async def test_the_replay_follows_the_timestamps_across_topics(kafka, settings) -> None:
    bootstrap, uai = kafka.bootstrap_servers, valid_uai("0350401")
    lots = [event(c.LOT, DEPARTEMENT, {**lot, "uai": uai}, subject=uai) for lot in LOTS]
    # Topics that keep the producer's timestamps (made before the partner topics were stamped by
    # the broker, LogAppendTime): the replay follows those.
    await keep_producer_timestamps(bootstrap, [settings.topic(c.EQUIPEMENT), settings.topic(c.REFERENTIEL)])
    producer = AIOKafkaProducer(**kafka_options(bootstrap), acks="all")
    await producer.start()
    try:  # the lots written first, but stamped after the établissement they are about
        for n, lot in enumerate(lots):
            await producer.send_and_wait(
                settings.topic(c.EQUIPEMENT), json.dumps(lot).encode(), key=uai.encode(), timestamp_ms=T0 + n + 1
            )
        await producer.send_and_wait(
            settings.topic(c.REFERENTIEL), json.dumps(college(uai)).encode(), key=uai.encode(), timestamp_ms=T0
        )
    finally:
        await producer.stop()

    held = relay_producer(KafkaAccess.of(settings), "test-rattrapage")
    one_by_one = settings.model_copy(update={"batch_max_records": 1})  # no batch holds both topics
    cible = await ouvrir(SPEC, one_by_one, "equipement_rattrape", held)
    try:
        assert await rattraper(cible) == 1 + len(lots)
        pool = cible.pipeline.pool
        assert await pool.fetchval("SELECT count(*) FROM lots") == len(lots)
        assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0
        assert await rattraper(cible) == 0, "caught up: its positions are the end of the log"
    finally:
        await cible.close()
        await held.stop()


T0 = 1_788_000_000_000


async def schema_made(settings) -> None:
    """equipement's schema made as `ouvrir` makes it, nothing else (the relay's producer, which
    `Cible.close` leaves to its owner, stopped: unclosed, asyncio said so when it was collected)."""
    held = relay_producer(KafkaAccess.of(settings), "test")
    try:
        await (await ouvrir(SPEC, settings, SPEC.name, held)).close()
    finally:
        await held.stop()


async def keep_producer_timestamps(bootstrap: str, topics: list[str]) -> None:
    """These topics stamp their records with the producer's time (CreateTime), kept forever."""
    wanted = {"message.timestamp.type": "CreateTime", "retention.ms": "-1"}
    await alter_topics(bootstrap, dict.fromkeys(topics, wanted), "the topics keeping the producer's timestamps")


LOTS = [{"lot_id": f"L{n}", "kind": "tablette", "quantity": 10, "os": None, "browsers": []} for n in range(1, 4)]


async def test_a_table_missing_its_open_alerts_is_filled_by_the_alignment(kafka, settings) -> None:
    """A deployment from before alertes.etat.v1 (here: the table emptied) rebuilds ressources:
    the alignment writes each open alert's last event to the table, as the stream holds it."""
    bootstrap = kafka.bootstrap_servers
    await alert_then_table_emptied(bootstrap, settings, valid_uai("0350402"))
    [raised] = [r for r in await read_topic(bootstrap, settings.topic(c.ALERTES)) if r.value]
    table = settings.topic(c.ALERTES_ETAT)
    held = relay_producer(KafkaAccess.of(settings), "test-rattrapage")
    cible = await ouvrir(RESSOURCES, settings, "ressources_reconstruit", held)
    try:
        await rattraper(cible)
        assert await accorder(cible) == 1, "one record for the table, no alert announced again"
        rows = await cible.pipeline.pool.fetch("SELECT topic, key, record_value FROM outbox")
    finally:
        await cible.close()
        await held.stop()
    assert [(r["topic"], r["key"], r["record_value"]) for r in rows] == [
        (table, json.loads(raised.value)["data"]["alert_id"].encode(), raised.value)
    ]


async def test_a_rebuild_numbers_the_records_set_aside_before_those_the_alignment_queues(kafka, settings) -> None:
    """A record of alertes.etat.v1 set aside before a rebuild, whose key the alignment then
    queues afresh (here the table was emptied): carried with a lower seq than the queued one, so
    that one going out marks it superseded (never to be retried after it: compaction would keep
    the stale record as the alert's state)."""
    from deploy import reconstruire

    alert_id, schema = await alert_then_table_emptied(kafka.bootstrap_servers, settings, valid_uai("0350403"))
    table = settings.topic(c.ALERTES_ETAT)
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(
            f'INSERT INTO "{schema}".outbox_failed (seq, topic, key, record_value, headers, error, created_at) '
            "VALUES (1, $1, $2, 'stale', '[]', 'RecordTooLargeError: too large', now())",
            table,
            alert_id.encode(),
        )
        await reconstruire.rebuild(RESSOURCES, settings)
        [carried] = await conn.fetch(f'SELECT seq FROM "{schema}".outbox_failed')
        queued = await conn.fetch(
            f'SELECT seq FROM "{schema}".outbox WHERE topic = $1 AND key = $2', table, alert_id.encode()
        )
        assert queued and all(carried["seq"] < q["seq"] for q in queued), (carried, queued)
    finally:
        await conn.close()


async def test_an_alert_a_rebuild_could_not_see_raised_again_keeps_its_first_raise_s_id_apart(kafka, settings):
    """A finite ALERTS_RETENTION_DAYS: the stream lost an alert's raise and resolution (deleted
    here), and its table the tombstone (emptied). The rebuild cannot know the alert was raised
    before and numbers its next raise from 1 again: that raise's id was its first raise's, which
    a dashboard remembering ids (CONTRACTS.md: the same id again has no second effect) dropped."""

    from deploy import reconstruire

    bootstrap, where, stream = kafka.bootstrap_servers, valid_uai("0350405"), settings.topic(c.ALERTES)
    alerts = "SELECT count(*) FILTER (WHERE ouverte) = $1 AND (SELECT count(*) = 0 FROM outbox) FROM alertes"
    async with running(RESSOURCES, settings) as pipeline:
        await old_tablets_at(bootstrap, settings, pipeline, where)
        await send(bootstrap, settings.topic(c.CATALOGUE), [(RID, publiee(1)), (where, abonnement(where, 1))])
        await eventually(lambda: pipeline.pool.fetchval(alerts, 1), what="the alert raised and published")
        await send(bootstrap, settings.topic(c.CATALOGUE), [(where, abonnement(where, 2, end="2026-09-02"))])
        await eventually(lambda: pipeline.pool.fetchval(alerts, 0), what="the alert resolved and published")
    records = await read_topic(bootstrap, stream)
    [first] = [json.loads(r.value) for r in records if json.loads(r.value)["type"] == c.ALERTE_LEVEE]
    await delete_before(bootstrap, stream, {r.partition: r.offset + 1 for r in records})
    await table_emptied(bootstrap, settings)

    await reconstruire.rebuild(RESSOURCES, settings)
    async with running(RESSOURCES, settings) as pipeline:
        await send(bootstrap, settings.topic(c.CATALOGUE), [(where, abonnement(where, 3))])
        await eventually(lambda: pipeline.pool.fetchval(alerts, 1), what="the alert raised again and published")
        assert await pipeline.pool.fetchval("SELECT cycle FROM alertes") == 1, "numbered from 1 again"
    [again] = [json.loads(r.value) for r in await read_topic(bootstrap, stream)]
    assert (again["type"], again["data"]["alert_id"]) == (c.ALERTE_LEVEE, first["data"]["alert_id"])
    assert again["id"] != first["id"]


async def test_an_open_alert_whose_abonnement_a_rebuild_refuses_is_resolved(kafka, settings) -> None:
    """The live service, its MAX_CLOCK_SKEW two hours, accepted an abonnement dated an hour
    ahead and raised its alert; rebuilt with the default 5 minutes, the replay refuses it
    (time-futur) and the rebuilt schema has no abonnement row for the pair, which no
    re-evaluation then looks at (audit helper-191 #2). The rebuild resolves the alert, as when a
    subscription ends (CONTRACTS.md): on the stream, and a tombstone on its table."""
    from deploy import reconstruire

    bootstrap, where = kafka.bootstrap_servers, valid_uai("0350407")
    lenient = settings.model_copy(update={"max_clock_skew": timedelta(hours=2)})
    alerts = "SELECT count(*) FILTER (WHERE ouverte) = $1 AND (SELECT count(*) = 0 FROM outbox) FROM alertes"
    ahead = abonnement(where, 1) | {"time": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}
    async with running(RESSOURCES, lenient) as pipeline:
        await old_tablets_at(bootstrap, lenient, pipeline, where)
        await send(bootstrap, settings.topic(c.CATALOGUE), [(RID, publiee(1)), (where, ahead)])
        await eventually(lambda: pipeline.pool.fetchval(alerts, 1), what="the alert raised and published")

    await reconstruire.rebuild(RESSOURCES, settings)
    async with running(RESSOURCES, settings) as pipeline:
        assert await pipeline.pool.fetchval("SELECT count(*) FROM abonnements") == 0, "the replay refused it"
        await eventually(lambda: pipeline.pool.fetchval(alerts, 0), what="the alert resolved and published")
    stream = await read_topic(bootstrap, settings.topic(c.ALERTES))
    events = [json.loads(r.value) for r in stream]
    assert [(e["type"], e["data"]["uai"]) for e in events] == [(c.ALERTE_LEVEE, where), (c.ALERTE_RESOLUE, where)]
    table = await read_topic(bootstrap, settings.topic(c.ALERTES_ETAT))
    assert {r.key.decode() for r in table} == {events[0]["data"]["alert_id"]}
    assert [r.value for r in table] == [r.value for r in stream] + [None], "each event, then a tombstone"


async def test_the_alignment_marks_superseded_the_alert_rows_set_aside_whose_event_kafka_holds_or_passed(
    kafka, settings
):
    """A restore brings back the alert rows set aside at the backup, unmarked (audit helper-192
    #3): the alert's raise set aside, its resolution published since. The alignment marks the
    raise's row superseded as the relay would have (`./dev outbox retry` put it back after its
    resolution on the stream), and leaves the row of a later raise Kafka does not hold."""
    bootstrap, where, stream = kafka.bootstrap_servers, valid_uai("0350408"), settings.topic(c.ALERTES)
    published = "(SELECT count(*) = 0 FROM outbox) AND (SELECT count(*) = $1 FROM alertes WHERE ouverte)"
    async with running(RESSOURCES, settings) as pipeline:
        await old_tablets_at(bootstrap, settings, pipeline, where)
        await send(bootstrap, settings.topic(c.CATALOGUE), [(RID, publiee(1)), (where, abonnement(where, 1))])
        await eventually(lambda: pipeline.pool.fetchval(f"SELECT {published}", 1), what="the alert raised")
        await send(bootstrap, settings.topic(c.CATALOGUE), [(where, abonnement(where, 2, end="2026-09-02"))])
        await eventually(lambda: pipeline.pool.fetchval(f"SELECT {published}", 0), what="the alert resolved")
    raise_, _ = await read_topic(bootstrap, stream)
    raised = json.loads(raise_.value)
    alert_id, raised_at = raised["data"]["alert_id"], datetime.fromisoformat(raised["data"]["raised_at"])
    later = {**raised, "id": event_id(alert_id, 2, "levee", raised_at)}  # a second raise, not on Kafka

    held = relay_producer(KafkaAccess.of(settings), "test-rattrapage")
    cible = await ouvrir(RESSOURCES, settings, "ressources_reconstruit", held)
    try:
        await rattraper(cible)
        await cible.pipeline.pool.executemany(
            "INSERT INTO outbox_failed (seq, topic, key, record_value, headers, twin_topic, twin_key, error, "
            "created_at) VALUES ($1, $2, $3, $4, '[]', $5, $6, 'RecordTooLargeError: too large', now())",
            [
                (seq, stream, where.encode(), value, settings.topic(c.ALERTES_ETAT), alert_id.encode())
                for seq, value in ((1, raise_.value), (2, json.dumps(later).encode()))
            ],
        )
        await accorder(cible)
        marked = await cible.pipeline.pool.fetch(
            "SELECT seq, twin_superseded_at IS NOT NULL AS superseded FROM outbox_failed ORDER BY seq"
        )
    finally:
        await cible.close()
        await held.stop()
    assert [tuple(r) for r in marked] == [(1, True), (2, False)]


async def test_the_pairs_a_catch_up_resolves_have_an_open_alert_of_a_known_kind_and_no_abonnement(database_url):
    """store.unsubscribed on PostgreSQL: of five pairs, the one subscribed, the one whose alert is
    resolved and the one whose only open alert is of a kind this version does not know are left;
    the others come in the order of their keys, `limit` at a time."""
    from services.ressources.store import UNSUBSCRIBED, Pair, RessourcesStore

    schema = "ressources_orphelins"
    rows = [  # (uai, resource_id, kind, ouverte)
        ("0350001A", "r1", "equipement-incompatible", True),  # subscribed below
        ("0350002B", "r1", "equipement-incompatible", False),
        ("0350003C", "r1", "kind-from-the-future", True),
        ("0350004D", "r2", "equipement-incompatible", True),
        ("0350004D", "r2", "formation-insuffisante", True),
        ("0350005E", "r1", "formation-insuffisante", True),
    ]
    pool = await create_pool(database_url, schema)
    try:
        await migrate(pool, schema, RESSOURCES.package_dir)
        await pool.execute(
            "INSERT INTO abonnements (resource_id, uai, start, event_time) "
            "VALUES ('r1', '0350001A', '2026-09-01', now())"
        )
        await pool.executemany(
            "INSERT INTO alertes (alert_id, uai, resource_id, kind, ouverte, cycle, raised_at, alerte) "
            "VALUES ($1 || '/' || $2 || '/' || $3, $1, $2, $3, $4, 1, now(), '{}')",
            rows,
        )
        async with pool.acquire() as conn:
            store = RessourcesStore(conn)
            assert await store.unsubscribed(10) == [
                Pair("0350004D", "r2", UNSUBSCRIBED),
                Pair("0350005E", "r1", UNSUBSCRIBED),
            ]
            assert await store.unsubscribed(1) == [Pair("0350004D", "r2", UNSUBSCRIBED)]
    finally:
        await pool.execute(f"DROP SCHEMA {schema} CASCADE")
        await pool.close()


async def alert_then_table_emptied(bootstrap: str, settings, where: str) -> tuple[str, str]:
    """An alert raised at `where` and published, then alertes.etat.v1 emptied (deleted and made
    again, in the cluster's metadata): (its alert_id, ressources' schema)."""
    async with running(RESSOURCES, settings) as pipeline:
        await old_tablets_at(bootstrap, settings, pipeline, where)
        await send(bootstrap, settings.topic(c.CATALOGUE), [(RID, publiee(1)), (where, abonnement(where, 1))])
        published = "(SELECT count(*) = 0 FROM outbox) AND (SELECT count(*) = 1 FROM alertes WHERE ouverte)"
        await eventually(lambda: pipeline.pool.fetchval(f"SELECT {published}"), what="the alert raised and published")
        alert_id = await pipeline.pool.fetchval("SELECT alert_id FROM alertes WHERE ouverte")
        schema = pipeline.settings.db_schema or RESSOURCES.name
    await table_emptied(bootstrap, settings)
    return alert_id, schema


async def table_emptied(bootstrap: str, settings) -> None:
    """alertes.etat.v1 deleted and made again, in the cluster's metadata."""
    table = settings.topic(c.ALERTES_ETAT)
    admin = AIOKafkaAdminClient(**kafka_options(bootstrap))
    await admin.start()
    try:
        await admin.delete_topics([table])
        await eventually(lambda: _recreated(admin, table), what="the table recreated empty")
        await eventually(lambda: _listed(admin, table), what="the table in the cluster's metadata")
    finally:
        await admin.close()


async def _listed(admin: AIOKafkaAdminClient, topic: str) -> bool:
    return topic in await admin.list_topics()


async def _recreated(admin: AIOKafkaAdminClient, topic: str) -> bool:
    response = await admin.create_topics([NewTopic(topic, 6, 1, topic_configs={"cleanup.policy": "compact"})])
    return all(code == 0 for _, code, *_ in response.topic_errors)


async def test_the_journal_goes_on_past_ids_a_rolled_back_transaction_took(kafka, settings) -> None:
    """The replaced schema handed out more journal ids than the stream has events (a journalling
    transaction rolled back): the rebuilt journal's next ids go past them all, so a dashboard
    resuming from the highest gets the next event, not a silent gap."""
    bootstrap, where = kafka.bootstrap_servers, valid_uai("0350403")
    async with running(RESSOURCES, settings) as pipeline:
        await old_tablets_at(bootstrap, settings, pipeline, where)
        await send(bootstrap, settings.topic(c.CATALOGUE), [(RID, publiee(1)), (where, abonnement(where, 1))])
        published = "(SELECT count(*) = 0 FROM outbox) AND (SELECT count(*) = 1 FROM alert_journal)"
        await eventually(lambda: pipeline.pool.fetchval(f"SELECT {published}"), what="the alert journalled")
        async with pipeline.pool.acquire() as conn:
            rollback = conn.transaction()
            await rollback.start()
            await conn.execute(
                "INSERT INTO alert_journal (event_id, alert_id, event) SELECT 'e', 'a', '{}' FROM generate_series(1, 5)"
            )
            await rollback.rollback()
            last = await journal_allocated(conn, "ressources")
    assert last == 6, "one event journalled, five ids taken by the rolled-back transaction"

    held = relay_producer(KafkaAccess.of(settings), "test-rattrapage")
    cible = await ouvrir(RESSOURCES, settings, "ressources_reconstruit", held)
    try:
        await rattraper(cible)
        await accorder(cible, last)
        async with cible.pipeline.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO alert_journal (event_id, alert_id, event) VALUES ('suivant', 'a', '{\"data\": {}}')"
            )
            replay = await queries.journal_replay(conn, last, 1_000_000, queries.AlertFilter(), 10)
    finally:
        await cible.close()
        await held.stop()
    assert replay.last_allocated == last + 1 and [seq for seq, _ in replay.rows] == [last + 1]


def as_principal(settings, kafka, principal: str):
    """`settings` with the Kafka credentials of `principal` on the session's broker."""
    access = kafka.access_as(principal)
    return settings.model_copy(update={"kafka_username": access.username, "kafka_password": access.password})


async def test_a_principal_that_may_not_read_what_a_catch_up_reads_is_named_before_anything(kafka, settings) -> None:
    """A service's principal reads its inputs, not what it published nor its dead letters: a
    catch-up (rebuild, restore) run with it is refused, naming them, before it touches anything."""
    as_equipement = as_principal(settings, kafka, "equipement")
    # Records in an input it may read: a fetch returns them before the refusal of another topic.
    await send(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT), [("k", b"{}")] * 50, partition=0)
    with pytest.raises(AccesInsuffisant) as refused:
        await check_access(as_equipement, [SPEC])
    message = str(refused.value)
    assert settings.topic(PROFILS) in message and settings.topic(c.dlq(c.EQUIPEMENT)) in message, message
    assert settings.topic(c.EQUIPEMENT) + "," not in message, "its inputs it may read"
    assert "equipement" in message and as_equipement.kafka_password not in message
    await check_access(settings, [SPEC, RESSOURCES])  # the tests' principal: an operator's rights
    with pytest.raises(AccesInsuffisant) as refused:
        await check_access(as_principal(settings, kafka, "tableau-de-bord"), [SPEC])
    assert all(settings.topic(t) in str(refused.value) for t in read_by(SPEC)), refused.value
    elsewhere = settings.model_copy(update={"topic_prefix": settings.topic_prefix + "absent."})
    with pytest.raises(AccesInsuffisant, match="do not exist"):
        await check_access(elsewhere, [SPEC])


async def test_a_restore_into_a_topic_made_again_that_reaches_the_backup_s_position_replaces_nothing(
    kafka, settings, tmp_path
) -> None:
    """The topic made again after the backup, and more records written to its new log than the
    backup's position: the check compared that position with the log's bounds only, found it
    within, and the catch-up replayed the new log from there, its first records skipped without
    a word (audit helper-194 #3). The backup's position keeps the instant its record was
    appended, which no record of the new log was: refused before anything is replaced."""
    from deploy import sauvegarde
    from test_equipement import lot
    from test_positions import _made_again

    uai = valid_uai("0350005")
    topic = settings.topic(c.EQUIPEMENT)
    await _lots_published(settings, uai, ("A", 10))  # the backup's position: 1, past lot A's record
    backup = tmp_path / "avant.dump"
    sauvegarde.backup(settings.database_url, backup)
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(f"CREATE TABLE {SPEC.name}.depuis_la_sauvegarde ()")  # a restore would drop it
    finally:
        await conn.close()
    await _made_again(kafka.bootstrap_servers, settings, topic)
    await send(kafka.bootstrap_servers, topic, [(uai, lot(uai, "B", 5, 2)), (uai, lot(uai, "C", 3, 3))], partition=0)

    with pytest.raises(sauvegarde.SauvegardeError) as refused:
        await sauvegarde.restore(settings, backup)
    assert str(refused.value).startswith(
        f"nothing restored: equipement: Kafka no longer holds what it has to read, {topic}[0] from offset 1: "
        "its log holds no record appended when the one before that offset was (the topic made again, or "
        "another cluster)"
    ), refused.value
    conn = await asyncpg.connect(settings.database_url)
    try:
        tables = "SELECT array_agg(tablename::text) FROM pg_tables WHERE schemaname = $1"
        assert "depuis_la_sauvegarde" in await conn.fetchval(tables, SPEC.name), "nothing replaced"
    finally:
        await conn.close()


async def test_a_restore_or_a_rebuild_without_an_operator_s_access_changes_nothing(kafka, settings, tmp_path) -> None:
    """Run with a service's own principal, a restore and a rebuild stop before they replace or
    make any schema (they used to replace every schema, then fail on Kafka: restored but not
    caught up, or leave a half-built schema behind)."""
    from deploy import reconstruire, sauvegarde

    await schema_made(settings)
    backup = tmp_path / "avant.dump"
    sauvegarde.backup(settings.database_url, backup)
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(f"CREATE TABLE {SPEC.name}.depuis_la_sauvegarde ()")  # a restore would drop it
        as_equipement = as_principal(settings, kafka, "equipement")
        with pytest.raises(sauvegarde.SauvegardeError, match=r"nothing restored: .*may not read"):
            await sauvegarde.restore(as_equipement, backup)
        with pytest.raises(reconstruire.ReconstructionError, match=r"nothing rebuilt: .*may not read"):
            await reconstruire.rebuild(SPEC, as_equipement)
        tables = "SELECT array_agg(tablename::text) FROM pg_tables WHERE schemaname = $1"
        assert "depuis_la_sauvegarde" in await conn.fetchval(tables, SPEC.name)
        schemas = await conn.fetchval("SELECT array_agg(nspname::text) FROM pg_namespace")
        assert f"{SPEC.name}_reconstruit" not in schemas, schemas
    finally:
        await conn.close()


async def test_a_rebuild_that_fails_midway_leaves_no_half_built_schema(kafka, settings, monkeypatch, capsys) -> None:
    """Kafka gone during the replay: the rebuild fails, the service keeps its schema, and the
    one it was building, as far as it got, is dropped (it was left, GBs at national scale)."""
    from deploy import rattrapage, reconstruire

    await schema_made(settings)
    uai = valid_uai("0350403")
    await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
    fresh, replay = f"{SPEC.name}_reconstruit", rattrapage.rattraper
    schemas = "SELECT array_agg(nspname::text) FROM pg_namespace"
    conn = await asyncpg.connect(settings.database_url)

    async def broker_gone_after_a_part(target, said=None):
        assert await replay(target, said) >= 1
        assert await conn.fetchval(f"SELECT count(*) FROM {fresh}.etablissements") >= 1, "built halfway"
        raise KafkaConnectionError("the broker went away")

    monkeypatch.setattr(rattrapage, "rattraper", broker_gone_after_a_part)
    try:
        with pytest.raises(KafkaConnectionError):
            await reconstruire.rebuild(SPEC, settings)
        assert fresh not in await conn.fetchval(schemas)
        assert await conn.fetchval(f"SELECT count(*) FROM {SPEC.name}.etablissements") == 0, "the live one untouched"
    finally:
        await conn.close()
    assert f"the half-built schema {fresh} was dropped" in capsys.readouterr().out


def test_a_rebuild_whose_session_postgresql_ended_says_so_and_leaves_no_half_built_schema(
    kafka, settings, monkeypatch, capsys
) -> None:
    """PostgreSQL restarts during the replay (here: the rebuild's sessions ended): its pool
    reconnects, its own session does not. `./dev rebuild` ended in a traceback and left the
    half-built schema; it is one error line, exit 1, and the schema is dropped on a new session."""
    from deploy import rattrapage, reconstruire

    asyncio.run(schema_made(settings))
    fresh, replay = f"{SPEC.name}_reconstruit", rattrapage.rattraper

    async def during_a_restart(target, said=None):
        await terminate(settings.database_url, reconstruire.APPLICATION)
        return await replay(target, said)

    async def schemas() -> list[str]:
        conn = await asyncpg.connect(settings.database_url)
        try:
            return await conn.fetchval("SELECT array_agg(nspname::text) FROM pg_namespace")
        finally:
            await conn.close()

    monkeypatch.setattr(rattrapage, "rattraper", during_a_restart)
    monkeypatch.setenv("DATABASE_URL", settings.database_url)  # the broker's access: in the session's environment
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", settings.kafka_bootstrap_servers)
    monkeypatch.setenv("TOPIC_PREFIX", settings.topic_prefix)
    assert reconstruire.main([SPEC.name]) == 1
    err = capsys.readouterr().err
    assert "error: the rebuild's session with PostgreSQL ended" in err and "Traceback" not in err, err
    assert fresh not in asyncio.run(schemas())


async def test_after_a_rebuild_a_record_set_aside_never_shares_its_seq_with_another(kafka, settings) -> None:
    """The records Kafka refused are carried into the rebuilt schema numbered in its outbox's
    sequence: with their former seq, a record the rebuilt outbox numbered the same, set aside in
    turn, broke outbox_failed's key and the relay failed on it at every round."""
    from deploy import reconstruire

    await schema_made(settings)
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(
            f"INSERT INTO {SPEC.name}.outbox_failed (seq, topic, key, record_value, headers, error, created_at) "
            "VALUES (1, 't', 'k', 'v', '[]', 'RecordTooLargeError: too large', now())"
        )
        await reconstruire.rebuild(SPEC, settings)
        [carried] = await conn.fetch(f"SELECT seq, error FROM {SPEC.name}.outbox_failed")
        assert carried["error"] == "RecordTooLargeError: too large"
        # What the relay does with a record Kafka refuses: moved to outbox_failed under its seq.
        for _ in range(3):
            await conn.execute(
                f"WITH moved AS (INSERT INTO {SPEC.name}.outbox (topic, key, record_value) VALUES ('t', 'k', 'v') "
                "RETURNING seq, topic, key, record_value, headers, created_at) "
                f"INSERT INTO {SPEC.name}.outbox_failed (seq, topic, key, record_value, headers, error, created_at) "
                "SELECT seq, topic, key, record_value, headers, 'RecordTooLargeError', created_at FROM moved"
            )
        assert await conn.fetchval(f"SELECT count(DISTINCT seq) FROM {SPEC.name}.outbox_failed") == 4
    finally:
        await conn.close()


async def test_a_replay_that_kafka_stops_answering_fails_instead_of_waiting_for_ever(
    kafka, settings, monkeypatch
) -> None:
    """Records left to read, none coming (the broker gone): after STALL_SECONDS the catch-up
    fails, a rebuild during its switch no longer holding the service's writes for ever."""
    from aiokafka import AIOKafkaConsumer

    import deploy.rattrapage as module

    uai = valid_uai("0350404")
    await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
    held = relay_producer(KafkaAccess.of(settings), "test-rattrapage")
    cible = await ouvrir(SPEC, settings, "equipement_cale", held)

    async def silent(self, *partitions, timeout_ms=0, max_records=None):
        await asyncio.sleep(0.05)
        return {}

    monkeypatch.setattr(module, "STALL_SECONDS", 0.5)
    monkeypatch.setattr(AIOKafkaConsumer, "getmany", silent)
    try:
        with pytest.raises(TimeoutError, match=r"no record from Kafka for 0\.5 s"):
            await asyncio.wait_for(rattraper(cible), 30)
    finally:
        await cible.close()
        await held.stop()


async def test_a_restore_warns_of_no_schema_that_needs_no_catch_up(settings, tmp_path, capsys) -> None:
    """The passerelle's schema (its view of the référentiel, which it catches up itself) and the
    local runtime's `plateforme` are restored as they are without a warning to rebuild them
    (./dev rebuild takes neither); a custom one is still warned of."""
    from deploy import sauvegarde

    conn = await asyncpg.connect(settings.database_url)
    try:
        for schema in ("passerelle", "plateforme", "sur_mesure"):
            await conn.execute(f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.t (n int)")
    finally:
        await conn.close()
    backup = tmp_path / "sauvegarde.dump"
    sauvegarde.backup(settings.database_url, backup)
    assert sorted(await sauvegarde.restore(settings, backup)) == ["passerelle", "plateforme", "sur_mesure"]
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: sur_mesure restored"), warnings


@asynccontextmanager
async def scratch_holding(pool, on_kafka: dict):
    """The catch-up's scratch table of a compacted topic, holding these records: (type, uai,
    entity) -> (version, data); the connection whose session holds it."""
    from deploy.rattrapage import STAGED_PUBLIES, _Scratch

    async with _Scratch(pool, STAGED_PUBLIES) as staged:
        for (type_, uai, entity), (version, data) in on_kafka.items():
            await staged.add(STAGED_PUBLIES, (type_, uai, entity, version, json.dumps(data)))
        await staged.flush()
        yield staged.conn  # the scratch table is its session's


async def test_the_alignment_numbers_its_group_past_those_kafka_holds(database_url) -> None:
    """A restored schema's sequence of groups is behind the groups on Kafka: a UAI's next group
    numbered below its last would never be seen whole by ressources. The alignment moves it
    past them, and compares contents without the group fields (a key as Kafka holds it is
    not published again)."""
    code = valid_uai("0350462")
    _, source, kinds = DERIVED["formation"]
    teachers, tools = kinds
    on_kafka = {
        (teachers.event_type, code, ""): (2, {"uai": code, "version": 2, "group": 500, "group_size": 2,
                                              "enseignants": 3, "competences": {}}),
        (tools.event_type, code, "tni"): (2, {"uai": code, "version": 2, "group": 500, "group_size": 2,
                                             "kind": "tni", "enseignants": 3}),
    }  # fmt: skip
    pool = await create_pool(database_url, "formation_alignee")
    try:
        await migrate(pool, "formation_alignee", FORMATION.package_dir)
        async with scratch_holding(pool, on_kafka) as scratch, scratch.acquire() as conn, conn.transaction():
            # What the replay computed: the teachers as Kafka holds them, one more on the TNI.
            await conn.executemany(
                "INSERT INTO publies (type, uai, entity, version, content) VALUES ($1, $2, $3, 1, $4::jsonb)",
                [
                    (teachers.event_type, code, "", json.dumps({"enseignants": 3, "competences": {}})),
                    (tools.event_type, code, "tni", json.dumps({"enseignants": 4})),
                ],
            )
            queued = await _accord_derived(conn, kinds, source)
    finally:
        await pool.close()
    assert [(o.key, o.event.data["version"], o.event.data["group_size"]) for o in queued] == [(f"{code}/tni", 3, 1)]
    assert queued[0].event.data["group"] > 500


async def test_the_alignment_retires_what_kafka_holds_and_the_replay_no_longer_derives(database_url) -> None:
    """A lot the live service accepted against a référentiel it had not read to its end, which
    the replay (in timestamp order) refuses: Kafka holds it, the rebuilt schema does not. Its
    retirement goes out (quantity 0), or ressources would count it until it changes again; a
    connectivity has no retired form and is left."""
    code = valid_uai("0350460")
    _, source, kinds = DERIVED["equipement"]
    lots, links = kinds
    held = {"kind": "tablette", "quantity": 12, "os": None, "browsers": []}
    on_kafka = {
        (lots.event_type, code, "L1"): (1, {"uai": code, "version": 1, "group": 7, "group_size": 2, "lot_id": "L1",
                                            **held}),
        (links.event_type, code, ""): (1, {"uai": code, "version": 1, "group": 7, "group_size": 2,
                                           "bandwidth_mbps": 8.0, "ent": True}),
    }  # fmt: skip
    pool = await create_pool(database_url, "equipement_alignee")
    try:
        await migrate(pool, "equipement_alignee", SPEC.package_dir)
        async with scratch_holding(pool, on_kafka) as scratch, scratch.acquire() as conn, conn.transaction():
            queued = await _accord_derived(conn, kinds, source)  # the replay derived nothing at that UAI
            stored = await conn.fetchval("SELECT content FROM publies WHERE entity = 'L1'")
    finally:
        await pool.close()
    assert [(o.key, o.event.data["version"]) for o in queued] == [(f"{code}/L1", 2)]
    assert {k: queued[0].event.data[k] for k in held} == {**held, "quantity": 0}
    assert list(queued[0].event.data)[-len(held) :] == list(held), "its fields in the order Kafka holds them"
    assert json.loads(stored)["quantity"] == 0, "remembered as published"


async def test_a_replay_reads_a_record_whose_header_name_is_not_utf8(kafka, settings, monkeypatch) -> None:
    """A rebuild's (or a restore's catch-up's) replay failed on such a record (aiokafka raised).
    Its reader is that of the services: the record is judged by its value (applied here)."""
    from aiokafka.consumer import fetcher
    from aiokafka.record.memory_records import MemoryRecords

    monkeypatch.setattr(fetcher, "MemoryRecords", MemoryRecords)  # as a new process has it: the replay sets its own
    where = valid_uai("0350402")
    await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(where, college(where))])
    lots = [(where, event(c.LOT, DEPARTEMENT, {**lot, "uai": where}, subject=where)) for lot in LOTS]
    with python_record_builder(monkeypatch):
        await send(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT), lots, [(NotUtf8("h"), b"v")])
    held = relay_producer(KafkaAccess.of(settings), "test-rattrapage")
    cible = await ouvrir(SPEC, settings, "equipement_nom_illisible", held)
    try:
        assert await rattraper(cible) == 1 + len(lots)
        assert await cible.pipeline.pool.fetchval("SELECT count(*) FROM lots") == len(lots)
    finally:
        await cible.close()
        await held.stop()


async def test_a_replay_leaves_out_what_a_transactional_producer_aborted(kafka, settings) -> None:
    """A rebuild reads the log as the service does: committed records only. Its log ends with a
    transaction's marker, past the last record: the replay still ends."""
    where = valid_uai("0350403")
    await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(where, college(where))])
    aborted, committed = (event(c.LOT, DEPARTEMENT, {**lot, "uai": where}, subject=where) for lot in LOTS[:2])
    await send_in_transactions(
        kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT), [(where, aborted, False), (where, committed, True)]
    )
    held = relay_producer(KafkaAccess.of(settings), "test-rattrapage")
    cible = await ouvrir(SPEC, settings, "equipement_transactions", held)
    try:
        assert await rattraper(cible) == 2
        assert await cible.pipeline.pool.fetchval("SELECT array_agg(lot_id) FROM lots") == [committed["data"]["lot_id"]]
    finally:
        await cible.close()
        await held.stop()


async def test_a_switch_that_committed_though_its_answer_was_lost_is_finished_not_reported_failed(
    kafka, settings, monkeypatch, capsys
) -> None:
    """The rename's COMMIT done, its answer lost (the rebuild's session cut then): the rebuild said
    "failed, the service keeps its schema" and left the service's sessions as they were, their
    cached statements on the former schema. It finds out the switch committed (the former schema's
    name, this run's own, exists) and finishes it: the service's sessions ended, the former named."""
    from deploy import reconstruire

    await schema_made(settings)
    uai = valid_uai("0350404")
    await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
    build_and_switch = reconstruire._build_and_switch

    async def answer_lost(*args):
        await build_and_switch(*args)  # renamed and committed
        await terminate(settings.database_url, reconstruire.APPLICATION)  # then the session cut
        raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")

    monkeypatch.setattr(reconstruire, "_build_and_switch", answer_lost)
    service = await asyncpg.connect(settings.database_url, server_settings={"application_name": f"feo-{SPEC.name}"})
    try:
        former = await reconstruire.rebuild(SPEC, settings)
        assert await eventually(lambda: asyncio.sleep(0, service.is_closed()), what="the service's session ended")
    finally:
        if not service.is_closed():
            await service.close()
    conn = await asyncpg.connect(settings.database_url)
    try:
        schemas = await conn.fetchval("SELECT array_agg(nspname::text) FROM pg_namespace")
        assert former in schemas and f"{SPEC.name}_reconstruit" not in schemas
        assert await conn.fetchval(f"SELECT count(*) FROM {SPEC.name}.etablissements WHERE uai = $1", uai) == 1
    finally:
        await conn.close()
    said = capsys.readouterr().out
    assert "the switch committed, though its answer was lost" in said and "rebuild failed" not in said, said


@pytest.mark.parametrize(
    "ended",
    [
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.InternalClientError("cannot process message 'E': protocol is in an unexpected state"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_rebuild_says_its_session_ended_however_asyncpg_tells_it(ended, settings, monkeypatch, capsys) -> None:
    """The session's end, found out at once (InterfaceError) or by the next statement (the
    others, depending on when the client reads the server's notice): one line, run it again, exit
    1. Only InterfaceError was told apart: the others were a vaguer line, or a traceback."""
    from deploy import reconstruire

    async def cut(*args) -> str:
        raise ended

    monkeypatch.setattr(reconstruire, "rebuild", cut)
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", settings.kafka_bootstrap_servers)
    assert reconstruire.main([SPEC.name]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the rebuild's session with PostgreSQL ended (") and "run it again" in err, err


def test_a_switch_whose_service_sessions_cannot_be_ended_says_it_is_done_and_to_restart(
    kafka, settings, monkeypatch, capsys
) -> None:
    """The rename committed, then PostgreSQL away before the service's sessions are ended (the
    rebuild's session cut, no new one): it exited 1, which says "the service keeps its schema",
    without the former schema's name. It says the switch is done, names it, says to restart the
    service, and exits 4."""
    from deploy import reconstruire
    from services.common.storage import db

    asyncio.run(schema_made(settings))
    build_and_switch = reconstruire._build_and_switch

    async def then_away(*args):
        queued = await build_and_switch(*args)
        await terminate(settings.database_url, reconstruire.APPLICATION)
        return queued

    async def refused(*args, **kwargs):
        raise asyncpg.CannotConnectNowError("the database system is shutting down")

    monkeypatch.setattr(reconstruire, "_build_and_switch", then_away)
    monkeypatch.setattr(db, "connect_for_tool", refused)
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", settings.kafka_bootstrap_servers)
    monkeypatch.setenv("TOPIC_PREFIX", settings.topic_prefix)
    assert reconstruire.main([SPEC.name]) == 4
    [said] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert said.startswith(f"error: the switch is done ({SPEC.name}'s schema {SPEC.name} is the rebuilt one"), said
    assert f"the former one is {SPEC.name}_avant_" in said and f"restart {SPEC.name} now" in said, said


class EndedUnnoticed:
    """A session PostgreSQL ended whose client has not read the notice yet: it looks open, and
    its next statement fails (asyncpg's InternalClientError, as in a CI run of the test above)."""

    def is_closed(self) -> bool:
        return False

    def terminate(self) -> None:
        self.terminated = True

    async def fetchval(self, *args):
        raise asyncpg.InternalClientError("cannot process message 'E': protocol is in an unexpected state")


async def test_a_session_ended_unnoticed_is_replaced_to_ask_whether_the_switch_committed(settings) -> None:
    """Whether the rename committed is asked on a new session when the rebuild's one, ended by
    PostgreSQL, still looked open: the answer was "unknown", the rebuild reported failed."""
    from deploy import reconstruire

    former = f"{SPEC.name}_avant_session_coupee"
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(f'CREATE SCHEMA "{former}"')
        ended = EndedUnnoticed()
        assert await reconstruire._switched(settings, ended, former) is True
        assert ended.terminated
        assert await reconstruire._switched(settings, EndedUnnoticed(), f"{former}_absent") is False
    finally:
        await conn.execute(f'DROP SCHEMA "{former}"')
        await conn.close()


async def terminate(database_url: str, application: str) -> None:
    """PostgreSQL ends the sessions of `application`, their backends gone when it returns (their
    clients may not have read the notice yet)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE application_name = $1 "
            "AND datname = current_database()",
            application,
        )
    finally:
        await conn.close()


class Read:
    """A record as the catch-up reads it (aiokafka's ConsumerRecord: its key and value)."""

    def __init__(self, key: str, value: bytes | None):
        self.key, self.value = key.encode(), value


def alert_event(alert_id: str, cycle: int, raised: bool, pad: int = 0) -> bytes:
    from services.ressources.lifecycle import event_id

    uai, resource_id, kind = alert_id.split("/", 1)[0], "ark:/67375/memoire", "formation-insuffisante"
    data = {
        "alert_id": alert_id,
        "uai": uai,
        "resource_id": resource_id,
        "kind": kind,
        "raised_at": "2026-09-01T08:00:00+00:00",
        "resolved_at": None if raised else "2026-10-01T08:00:00+00:00",
        "reasons": [{"code": "x", "detail": "y" * pad}],
    }
    what = "levee" if raised else "resolue"
    kind_of = c.ALERTE_LEVEE if raised else c.ALERTE_RESOLUE
    id_ = event_id(alert_id, cycle, what, datetime.fromisoformat(data["raised_at"]))
    return json.dumps({"type": kind_of, "id": id_, "data": data}).encode()


async def test_the_alignment_takes_each_alert_s_last_event_and_holds_little_of_the_topics(database_url) -> None:
    """The alerts stream and its table were held in memory, each alert's last event with its
    content parsed: about 3 KB an alert, a year of a national platform's (millions of alerts)
    more than the operators' pod has. Now staged, a few thousand at a time (what staging holds
    is measured here; the alignment returns what the table lacks, its open alerts at most); each
    alert's last event is still the highest cycle, a resolution after its cycle's raise, whatever
    the order the relay published them in, and the table gets what it lacks."""
    import hashlib
    import tracemalloc

    from deploy.rattrapage import STAGE_ROWS, STAGED_ALERTS, STAGED_SHOWN, _accord_alerts, _Cycles, _Scratch

    cycles = _Cycles()

    async def alert(record: Read) -> None:
        await staged.add(STAGED_ALERTS, cycles.row(record))

    async def shown(record: Read) -> None:
        await staged.add(STAGED_SHOWN, (record.key.decode(), hashlib.sha256(record.value).digest()))

    pool = await create_pool(database_url, "ressources_alignee")
    try:
        await migrate(pool, "ressources_alignee", RESSOURCES.package_dir)
        a, b, d = (f"{valid_uai(f'035090{n}')}/ark:/67375/memoire/formation-insuffisante" for n in (1, 2, 3))
        stream = [
            (a, 1, True), (a, 1, False), (a, 2, True),  # a: raised again, open at cycle 2
            (b, 1, False), (b, 1, True),  # b: its resolution published before its raise: resolved
            (d, 1, True),  # d: open, and the table shows it already
        ]  # fmt: skip
        async with _Scratch(pool, STAGED_ALERTS, STAGED_SHOWN) as staged:
            for alert_id, cycle, raised in stream:
                await alert(Read(alert_id, alert_event(alert_id, cycle, raised)))
            await shown(Read(b, alert_event(b, 1, True)))  # the table still shows b open
            await shown(Read(d, alert_event(d, 1, True)))
            await alert(Read(d, alert_event(d, 1, True)))
            await staged.flush()
            async with staged.conn.acquire() as conn, conn.transaction():
                lacking = await _accord_alerts(conn, 0, len(stream), 0)
            rows = await pool.fetch("SELECT alert_id, ouverte, cycle, resolved_at IS NULL AS ongoing FROM alertes")
            assert sorted(tuple(r) for r in rows) == sorted(
                [(a, True, 2, True), (b, False, 1, False), (d, True, 1, True)]
            )
            assert {(o.key, o.event is None or o.event.to_bytes() is None) for o in lacking} == {
                (a, False),  # a's last event, which the table lacks
                (b, True),  # a tombstone: the table shows b open
            }, "d as the table shows it: nothing"

            # Memory: 30,000 alerts of about 1 KB, read as the topics give them.
            tracemalloc.start()
            try:
                for n in range(30_000):
                    alert_id = f"{valid_uai('0350999')}/ark:/67375/m{n}/formation-insuffisante"
                    await alert(Read(alert_id, alert_event(alert_id, 1, True, pad=800)))
                await staged.flush()
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        assert peak < 8 * STAGE_ROWS * 1024 + 8_000_000, f"{peak / 1e6:.1f} MB held at most"
        assert await pool.fetchval("SELECT count(*) = 0 FROM pg_class WHERE relname LIKE 'rattrapage%'"), (
            "scratch tables dropped, none ever in the schema"
        )
    finally:
        await pool.close()


async def test_the_alignment_of_derived_state_holds_little_of_its_topic(database_url) -> None:
    """equipement's compacted topic was read into memory, each key's latest record parsed
    (about 2.6 KB a key: a national platform's 480,000 lots 1.2 GB), then `publies` read whole
    beside it. Now staged in the schema and compared 2,000 UAIs at a time: the same outcome
    (here nothing to publish: the replay derived what Kafka holds; and one lot retired)."""
    import tracemalloc

    from deploy.rattrapage import STAGED_PUBLIES, _accord_derived, _Scratch

    _, source, kinds = DERIVED["equipement"]
    lots = kinds[0]
    held = {"kind": "tablette", "quantity": 12, "os": {"name": "iPadOS", "version": "17.1"}, "browsers": []}
    codes = [valid_uai(f"{3500000 + n:07d}") for n in range(6_000)]
    pool = await create_pool(database_url, "equipement_memoire")
    try:
        await migrate(pool, "equipement_memoire", SPEC.package_dir)
        await pool.copy_records_to_table(  # what the replay derived: each lot as Kafka holds it, but one
            "publies",
            records=[(lots.event_type, u, f"L{n}", 1, json.dumps(held)) for u in codes[1:] for n in range(3)],
            columns=["type", "uai", "entity", "version", "content"],
        )
        tracemalloc.start()
        try:
            async with _Scratch(pool, STAGED_PUBLIES) as staged:
                for u in codes:
                    for n in range(3):
                        data = {"uai": u, "version": 1, "group": 9, "group_size": 3, "lot_id": f"L{n}", **held}
                        await staged.add(STAGED_PUBLIES, (lots.event_type, u, f"L{n}", 1, json.dumps(data)))
                await staged.flush()
                async with staged.conn.acquire() as conn, conn.transaction():
                    queued = await _accord_derived(conn, kinds, source)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert sorted((o.key, o.event.data["quantity"]) for o in queued) == [(f"{codes[0]}/L{n}", 0) for n in range(3)]
        assert await pool.fetchval("SELECT count(*) FROM publies") == 3 * len(codes)
    finally:
        await pool.close()
    assert peak < 25_000_000, f"{peak / 1e6:.1f} MB held at most for {3 * len(codes)} keys"  # in memory: 62 MB


async def _lots_published(settings, uai: str, *declared: tuple[str, int]) -> None:
    """equipement, run on `settings`, has handled these lots (lot_id, quantity) and published them."""
    from test_equipement import lot, referentiel_loaded

    async with running(SPEC, settings) as pipeline:
        await send(settings.kafka_bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)
        lots = [(uai, lot(uai, lot_id, quantity, n)) for n, (lot_id, quantity) in enumerate(declared, start=1)]
        await send(settings.kafka_bootstrap_servers, settings.topic(c.EQUIPEMENT), lots, partition=0)

        async def published() -> bool:
            held = {r["lot_id"]: r["quantity"] for r in await pipeline.pool.fetch("SELECT lot_id, quantity FROM lots")}
            return held == dict(declared) and not await pipeline.pool.fetchval("SELECT count(*) FROM outbox")

        await eventually(published, what="the lots handled and published")


async def _lots(settings) -> dict[str, int]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return {r["lot_id"]: r["quantity"] for r in await conn.fetch("SELECT lot_id, quantity FROM equipement.lots")}
    finally:
        await conn.close()


async def test_a_rebuild_over_a_log_whose_records_were_deleted_is_refused_and_publishes_nothing(kafka, settings):
    """Lot A's declaration deleted from the topic: the rebuild replayed what was left, and its
    alignment published A retired (quantity 0), a lot its declarant never retired."""
    from deploy import reconstruire
    from deploy.rattrapage import JournalIncomplet

    await _lots_published(settings, valid_uai("0350003"), ("A", 10), ("B", 7))
    await delete_before(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT), 1)

    with pytest.raises(JournalIncomplet) as refused:
        await reconstruire.rebuild(SPEC, settings)
    assert str(refused.value).startswith(
        f"equipement_reconstruit: Kafka no longer holds what it has to read, {settings.topic(c.EQUIPEMENT)}[0] "
        "from offset 0: 1 records deleted (its first offset is 1). Nothing replayed"
    ), refused.value
    assert await _lots(settings) == {"A": 10, "B": 7}, "the service keeps its schema"
    conn = await asyncpg.connect(settings.database_url)
    try:
        assert not await conn.fetchval("SELECT count(*) FROM equipement.outbox"), "nothing queued"
        assert not await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = 'equipement_reconstruit'")
    finally:
        await conn.close()


async def test_a_restore_whose_backup_has_yet_to_read_records_since_deleted_replaces_nothing(
    kafka, settings, tmp_path
) -> None:
    """Every declaration after the backup deleted from the topic: the restore caught up with
    nothing ("0 records replayed") and its alignment queued lot A back at its backup's quantity
    as a new version, and lot B retired."""
    from deploy import sauvegarde

    uai = valid_uai("0350002")
    await _lots_published(settings, uai, ("A", 10))
    backup = tmp_path / "old.dump"
    sauvegarde.backup(settings.database_url, backup)
    await _lots_published(settings, uai, ("A", 20), ("B", 5))
    await delete_before(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT), 3)  # all three declarations

    with pytest.raises(sauvegarde.SauvegardeError) as refused:
        await sauvegarde.restore(settings, backup)
    assert str(refused.value).startswith(
        f"nothing restored: equipement: Kafka no longer holds what it has to read, {settings.topic(c.EQUIPEMENT)}[0] "
        "from offset 1: 2 records deleted (its first offset is 3)"
    ), refused.value
    assert await _lots(settings) == {"A": 20, "B": 5}


async def test_a_rebuild_publishes_again_past_their_versions_the_derived_records_kafka_lost(kafka, settings):
    """Lot A's records on the compacted topic of profiles deleted (a retention set on it by hand,
    kafka-delete-records): the rebuild's alignment published A as version 1, whose id ressources
    had handled (a duplicate), and ressources kept the version it held, and every later one up
    to it (audit s63 topology #4). Now numbered past any version the live service counted."""
    from deploy import reconstruire

    bootstrap, uai, profils = kafka.bootstrap_servers, valid_uai("0350006"), settings.topic(PROFILS)
    await _lots_published(settings, uai, ("A", 10))
    await _lots_published(settings, uai, ("A", 20))
    records = [r for r in await read_topic(bootstrap, profils) if r.key == f"{uai}/A".encode()]
    assert [json.loads(r.value)["data"]["version"] for r in records] == [1, 2]
    await also_deleted_by_age(bootstrap, settings, profils)  # Kafka refuses to delete a compacted topic's records
    await delete_before(bootstrap, profils, records[-1].offset + 1, records[-1].partition)

    await reconstruire.rebuild(SPEC, settings)
    conn = await asyncpg.connect(settings.database_url)
    try:
        queued = await conn.fetch("SELECT key, record_value FROM equipement.outbox WHERE topic = $1", profils)
    finally:
        await conn.close()
    [again] = [json.loads(r["record_value"]) for r in queued if r["key"] == f"{uai}/A".encode()]
    assert again["data"]["version"] > 2 and again["data"]["quantity"] == 20, again["data"]
    assert again["id"] not in {json.loads(r.value)["id"] for r in records}, "not an id ressources handled"


async def test_a_rebuild_once_kafka_forgot_the_group_s_offsets_sends_no_dlq_copy_again(kafka, settings) -> None:
    """Whether a refusal's copy went out was read from the consumer group's committed offsets,
    which Kafka deletes once the group has been empty a week (offsets.retention.minutes): a
    rebuild then sent again every copy the DLQ's retention had removed, a partner's refused
    record. Now from the positions of the schema the service ran on."""
    from kafka.admin import KafkaAdminClient

    from deploy import reconstruire
    from deploy.rattrapage import committed_offsets, read_topic
    from test_equipement import lot, referentiel_loaded

    bootstrap, uai = kafka.bootstrap_servers, valid_uai("0350005")
    topic, group = settings.topic(c.EQUIPEMENT), settings.topic("equipement")
    async with running(SPEC, settings) as pipeline:
        await send(bootstrap, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)
        await send(bootstrap, topic, [(uai, b"{pas du json"), (uai, lot(uai, "A", 3, 1))], partition=0)
        await eventually(lambda: read_topic(bootstrap, c.dlq(topic)), what="the DLQ copy")

        async def committed() -> bool:
            return (topic, 0) in await committed_offsets(bootstrap, group)

        await eventually(committed, what="the offsets committed")
    await delete_before(bootstrap, c.dlq(topic), 1)  # the DLQ's retention, passed
    admin = KafkaAdminClient(**KafkaAccess.from_environ(bootstrap_servers=bootstrap).kafka_python())
    try:
        admin.delete_groups([group])  # what offsets.retention.minutes does to a group empty that long
    finally:
        admin.close()
    assert await committed_offsets(bootstrap, group) == {}

    await reconstruire.rebuild(SPEC, settings)
    conn = await asyncpg.connect(settings.database_url)
    try:
        assert not await conn.fetchval("SELECT count(*) FROM equipement.outbox WHERE topic = $1", c.dlq(topic))
    finally:
        await conn.close()


async def test_a_restore_run_again_after_its_catch_up_failed_judges_dlq_copies_as_the_first_run(
    kafka, settings, tmp_path, monkeypatch
) -> None:
    """The positions of the schema a restore replaces say which refusals' copies went out; the
    replaced schema gone, a run again after a failed catch-up had only the group's committed
    offsets, which Kafka forgets: it sent again a copy the DLQ's retention had removed."""
    from kafka.admin import KafkaAdminClient

    from deploy import rattrapage, sauvegarde
    from deploy.rattrapage import read_topic

    bootstrap, uai = kafka.bootstrap_servers, valid_uai("0350006")
    topic, group = settings.topic(c.EQUIPEMENT), settings.topic("equipement")
    await _lots_published(settings, uai, ("A", 3))
    backup = tmp_path / "before.dump"
    sauvegarde.backup(settings.database_url, backup)
    async with running(SPEC, settings):
        await send(bootstrap, topic, [(uai, b"{pas du json")], partition=0)
        await eventually(lambda: read_topic(bootstrap, c.dlq(topic)), what="its DLQ copy")
    await delete_before(bootstrap, c.dlq(topic), 1)  # the DLQ's retention, passed
    admin = KafkaAdminClient(**KafkaAccess.from_environ(bootstrap_servers=bootstrap).kafka_python())
    try:
        admin.delete_groups([group])  # offsets.retention.minutes, passed
    finally:
        admin.close()

    async def lost(*args, **kwargs):
        raise KafkaConnectionError("lost during the catch-up")

    with monkeypatch.context() as m:
        m.setattr(rattrapage, "rattraper", lost)
        with pytest.raises(sauvegarde.SauvegardeError, match=r"rerun \./dev restore"):
            await sauvegarde.restore(settings, backup)
    await sauvegarde.restore(settings, backup)

    conn = await asyncpg.connect(settings.database_url)
    try:
        assert not await conn.fetchval("SELECT count(*) FROM equipement.outbox WHERE topic = $1", c.dlq(topic))
        assert await conn.fetchval("SELECT count(*) FROM equipement.dead_letters") == 1, "refused again, not sent"
    finally:
        await conn.close()


async def _migrated(settings, *specs) -> None:
    for spec in specs:
        pool = await create_pool(settings.database_url, spec.name)
        try:
            await migrate(pool, spec.name, spec.package_dir)
        finally:
            await pool.close()


def test_a_backup_of_a_newer_version_is_refused_before_anything_is_replaced(settings, tmp_path, monkeypatch, capsys):
    """Restored by an earlier version (a rollback, then last night's backup), a newer version's
    schemas were caught up by the earlier code (audit s62 #6): across common/0015, every batch of
    the catch-up failed, every rerun the same, and the services refused to start on the marked
    schemas. Refused: exit 1, naming the service and the migrations, the database as it was."""
    from deploy import sauvegarde

    backup, future = tmp_path / "plus_recente.dump", "common/9999_a_venir.sql"

    async def backed_up_then_changed() -> None:
        await _migrated(settings, SPEC, RESSOURCES)
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute("INSERT INTO ressources.schema_migrations (name) VALUES ($1)", future)
            sauvegarde.backup(settings.database_url, backup)
            await conn.execute("DELETE FROM ressources.schema_migrations WHERE name = $1", future)
            await conn.execute(f"CREATE TABLE {SPEC.name}.depuis_la_sauvegarde ()")  # a restore would drop it
        finally:
            await conn.close()

    async def as_it_was() -> tuple[list[str], int]:
        conn = await asyncpg.connect(settings.database_url)
        try:
            tables = await conn.fetchval(
                "SELECT array_agg(tablename::text) FROM pg_tables WHERE schemaname = $1", SPEC.name
            )
            return tables, await conn.fetchval(
                "SELECT count(*) FROM ressources.schema_migrations WHERE name = $1", future
            )
        finally:
            await conn.close()

    asyncio.run(backed_up_then_changed())
    capsys.readouterr()  # what the migrations logged, as an earlier test left the logs configured
    for variable, value in (
        ("DATABASE_URL", settings.database_url),
        ("KAFKA_BOOTSTRAP_SERVERS", settings.kafka_bootstrap_servers),
        ("TOPIC_PREFIX", settings.topic_prefix),  # its topics: the restore could go on to the end
    ):
        monkeypatch.setenv(variable, value)
    assert sauvegarde.main(["restore", str(backup)]) == 1
    assert capsys.readouterr().err == (
        "error: nothing restored: the backup was made by a newer version of the code than this one "
        f"(ressources has {future}, which this version does not): restore it with that version, or a newer one\n"
    )
    tables, applied = asyncio.run(as_it_was())
    assert "depuis_la_sauvegarde" in tables and applied == 0, "nothing replaced"


@pytest.mark.parametrize("withdrawn", [False, True], ids=["earlier", "earlier-and-withdrawn"])
async def test_a_backup_of_an_earlier_version_is_restored_and_migrated(kafka, settings, tmp_path, withdrawn) -> None:
    """The refusal of a newer version's backup keeps an earlier one's restorable: the catch-up
    migrates it (a rollback's remedy is a backup made before the upgrade). The row of a
    migration committed then deleted (audit s62 #7), which no version has, is not taken for a
    newer version's."""
    from deploy import sauvegarde

    await _migrated(settings, SPEC)
    conn = await asyncpg.connect(settings.database_url)
    try:  # the backup's: before equipement's latest migration (an ALTER TABLE that runs again)
        latest = await conn.fetchval(
            "DELETE FROM equipement.schema_migrations WHERE name = "
            "(SELECT max(name) FROM equipement.schema_migrations WHERE name LIKE 'equipement/%') RETURNING name"
        )
        if withdrawn:
            await conn.execute(
                "INSERT INTO equipement.schema_migrations (name) VALUES ('common/0016_attente_referentiel_origin.sql')"
            )
        backup = tmp_path / "anterieure.dump"
        sauvegarde.backup(settings.database_url, backup)
        assert await sauvegarde.restore(settings, backup) == [SPEC.name]
        assert await conn.fetchval("SELECT count(*) FROM equipement.schema_migrations WHERE name = $1", latest) == 1
        assert not await conn.fetchval("SELECT to_regclass('equipement.rattrapage_en_attente')"), "caught up"
    finally:
        await conn.close()
