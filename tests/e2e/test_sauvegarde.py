"""`python -m deploy.sauvegarde`: a backup taken while the platform runs, more events, the older
backup restored: the services catch up from Kafka to the state they had, row for row, publish
nothing again, and go on with the right versions and alert ids."""

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiokafka.errors import KafkaConnectionError

import contracts as c
from contracts.internal import PROFILS
from deploy import sauvegarde as tool
from deploy.local import scenario
from deploy.rattrapage import read_topic
from helpers import event, send
from partner import declare
from platform_state import OUTPUTS, SERVICES, end_offsets, play_morning, settled, snapshot
from services.common.messaging import dlq
from services.common.runtime.lifecycle import CATCH_UP_PENDING
from services.ressources.lifecycle import alert_id, event_id

pytestmark = pytest.mark.e2e


def sauvegarde(action: str, path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deploy.sauvegarde", action, str(path)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


async def test_an_older_backup_restored_catches_up_from_kafka(
    kafka, database_url, topic_prefix, platform, partners, tmp_path
):
    bootstrap, dump = kafka.bootstrap_servers, tmp_path / "plateforme.dump"
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DATABASE_URL": database_url, "TOPIC_PREFIX": topic_prefix}
    etabs = await play_morning(kafka, partners, database_url, topic_prefix, count=40)
    done = sauvegarde("backup", dump, env)
    assert done.returncode == 0, done.stderr

    # After the backup: a renovation, and a school's link down, up, down again, each handled on
    # its own: one record published in several versions, an alert raised, resolved, raised again.
    await declare(partners, scenario.renovation(etabs))
    school = next(e for e in etabs if e.type == "ecole" and e.ouvert)

    async def link(mbps: int) -> None:
        data = {"uai": school.uai, "bandwidth_mbps": mbps, "ent": True}
        declared = event(c.CONNECTIVITE, scenario.equipeur(school), data)
        await declare(partners, [(c.EQUIPEMENT, school.uai, json.dumps(declared).encode())])
        await settled(bootstrap, database_url, topic_prefix)

    for mbps in (1000, 4, 1000, 4):
        await link(mbps)
    before = {s: await snapshot(database_url, s) for s in SERVICES}
    published = await end_offsets(bootstrap, [topic_prefix + t for t in OUTPUTS])
    slow = alert_id(school.uai, scenario.ATLAS, "connectivite-insuffisante")
    cycle = next(int(r[5]) for r in before["ressources"]["alertes"] if r[0] == slow)
    assert cycle >= 2 and any(r[0] == slow and r[4] == "true" for r in before["ressources"]["alertes"])

    refused = sauvegarde("restore", dump, env)
    assert refused.returncode == 1 and "stop the services first" in refused.stderr, refused.stderr
    platform.stop()
    # While the services are down, a record they will refuse: handled first by the restore's
    # catch-up, its DLQ copy must still go out, once (the catch-up's other copies are on Kafka).
    declarations = topic_prefix + c.EQUIPEMENT
    ends = await end_offsets(bootstrap, [declarations])
    await send(bootstrap, declarations, [(school.uai, b"{pas du json")])
    [(where, end)] = [
        (tp, end) for tp, end in (await end_offsets(bootstrap, [declarations])).items() if end != ends[tp]
    ]
    refusal = (declarations, where.partition, end - 1)
    # Run without the platform's thresholds in its environment (others here), the restore
    # evaluates with those the restored schema holds: nothing to change, nothing published.
    done = sauvegarde("restore", dump, env | {"MIN_COMPATIBLE_SHARE": "0", "MIN_TRAINING_COVERAGE": "0"})
    assert done.returncode == 0, done.stderr
    assert "applied" not in done.stdout + done.stderr, "the catch-up's pipelines log below WARNING here"
    last = done.stdout.splitlines()[-1]
    assert last.startswith("restored ") and last.endswith("the services can start"), done.stdout[-500:]
    platform.start()
    platform.wait_healthy()
    await settled(bootstrap, database_url, topic_prefix)

    for service in SERVICES:
        after = await snapshot(database_url, service)
        if service == "equipement":
            refused = [r for r in after["dead_letters"] if (r[0], int(r[1]), int(r[2])) == refusal]
            assert len(refused) == 1 and refused[0][3] == "json-invalide", after["dead_letters"]
            after["dead_letters"].remove(refused[0])
            moved = (declarations, str(where.partition), str(end))
            # (topic, partition, next offset; then the instant its record was appended)
            assert moved in [p[:3] for p in after["positions"]], "past the refused record"
            after["positions"] = sorted(p for p in after["positions"] if p[:3] != moved)
            before[service]["positions"] = sorted(p for p in before[service]["positions"] if p[:2] != moved[:2])
        assert after == before[service], f"{service} after the restore differs"
    copies = [dlq.origin(r.headers) for r in await read_topic(bootstrap, c.dlq(declarations))]
    assert copies.count(refusal) == 1, "the refusal's DLQ copy, once"
    assert len(copies) == len(set(copies)), "no DLQ copy twice"
    now = await end_offsets(bootstrap, [topic_prefix + t for t in OUTPUTS])
    dlq_partition = next(tp for tp in now if tp.topic == c.dlq(declarations) and now[tp] != published.get(tp))
    assert now == published | {dlq_partition: published[dlq_partition] + 1}, "nothing else published again"

    # And on: the link back up resolves the alert with the id of its cycle, in the link's next version.
    await link(1000)
    alerts = [json.loads(r.value) for r in await read_topic(bootstrap, topic_prefix + c.ALERTES)]
    last = [e for e in alerts if e["data"]["alert_id"] == slow][-1]
    assert last["id"] == event_id(slow, cycle, "resolue", datetime.fromisoformat(last["data"]["raised_at"]))
    links = [r for r in await read_topic(bootstrap, topic_prefix + PROFILS) if r.key == school.uai.encode()]
    versions = [json.loads(r.value)["data"]["version"] for r in links]
    assert versions == list(range(1, len(links) + 1)), "each version published once, none reused"


async def test_a_restore_replaces_the_backups_schemas_and_leaves_public_alone(settings, database_url, tmp_path):
    """Where `public` is not owned by pg_database_owner (a server of PostgreSQL 14 or older, a
    changed owner), pg_dump lists it among the dump's schemas: the restore dropped it, and what
    the database keeps there (the platform keeps nothing), or failed on it."""
    dump, conn = tmp_path / "base.dump", await asyncpg.connect(database_url)
    try:
        await conn.execute("DO $$ BEGIN CREATE ROLE feo_autre; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        await conn.execute(
            "ALTER SCHEMA public OWNER TO feo_autre; CREATE TABLE public.autre_application (n int); "
            "CREATE SCHEMA restauree; CREATE TABLE restauree.t (n int); "
            "INSERT INTO public.autre_application VALUES (1); INSERT INTO restauree.t VALUES (1)"
        )
        tool.backup(database_url, dump)
        assert (
            "public"
            in subprocess.run([tool.pg_tool("pg_restore"), "--list", str(dump)], capture_output=True, text=True).stdout
        )
        await conn.execute("INSERT INTO public.autre_application VALUES (2); INSERT INTO restauree.t VALUES (2)")
        assert await tool.restore(settings, dump) == ["restauree"]
        assert [r["n"] for r in await conn.fetch("SELECT n FROM restauree.t")] == [1], "as backed up"
        assert [r["n"] for r in await conn.fetch("SELECT n FROM public.autre_application ORDER BY n")] == [1, 2]
    finally:
        await conn.close()


async def test_a_restore_s_sql_read_for_hours_is_not_taken_for_a_killed_one_s(
    settings, database_url, tmp_path, monkeypatch
):
    """The nightly rotation removes a restore's SQL not written for ABANDONED_AFTER (its restore
    killed): one psql was still reading after that long was removed under it, and the restore
    failed on its cleanup before its catch-up. While psql reads it, it is dated anew."""
    dump, conn = tmp_path / "base.dump", await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE SCHEMA IF NOT EXISTS lue_longtemps; CREATE TABLE lue_longtemps.t (n int)")
        tool.backup(database_url, dump)
    finally:
        await conn.close()
    monkeypatch.setattr(tool, "IN_USE_EVERY", timedelta(seconds=0.05), raising=False)
    run = tool._run
    seen: list[datetime] = []

    def psql_for_hours(args: list[str], env: dict[str, str], what: str) -> bytes:
        if what == "the restore":
            [script] = [Path(a) for a in args if a.endswith(".restauration.sql")]
            long_ago = (datetime.now(UTC) - tool.ABANDONED_AFTER - timedelta(hours=1)).timestamp()
            os.utime(script, (long_ago, long_ago))  # psql reads; nothing writes it
            deadline = time.monotonic() + 10
            while tool._abandoned_since(script) < datetime.now(UTC) - tool.ABANDONED_AFTER:
                assert time.monotonic() < deadline, "dated anew while it is read"
                time.sleep(0.01)
            seen.append(tool._abandoned_since(script))
        return run(args, env, what)

    monkeypatch.setattr(tool, "_run", psql_for_hours)
    assert "lue_longtemps" in await tool.restore(settings, dump)
    assert seen, "the restore ran psql"
    assert not [p for p in tmp_path.iterdir() if "restauration" in p.name], "its SQL removed once read"


async def test_a_backup_holding_a_marked_schema_is_restored_with_one_mark(settings, database_url, tmp_path):
    """A restored schema neither caught up nor rebuilt keeps its mark (a rebuild's former schema,
    kept to compare or to switch back), so the backups after it hold the mark too: restoring one
    failed whole on it ('already exists'), and no later backup could be restored. Now the schema
    has one mark, from the earlier time, past the higher of the two journal floors."""
    former = "formation_avant_20261201000000"
    first, second, conn = tmp_path / "first.dump", tmp_path / "second.dump", await asyncpg.connect(database_url)
    try:
        await conn.execute(
            f"CREATE SCHEMA {former}; CREATE TABLE {former}.t (n int); INSERT INTO {former}.t VALUES (1)"
        )
        tool.backup(database_url, first)
        assert await tool.restore(settings, first) == [former]
        [marked] = await conn.fetch(f"SELECT depuis, journal_floor FROM {former}.{CATCH_UP_PENDING}")
        tool.backup(database_url, second)
        await conn.execute(f"UPDATE {former}.{CATCH_UP_PENDING} SET journal_floor = 7")  # higher than the dump's
        assert await tool.restore(settings, second) == [former]
        marks = await conn.fetch(f"SELECT depuis, journal_floor FROM {former}.{CATCH_UP_PENDING}")
        assert [tuple(m) for m in marks] == [(marked["depuis"], 7)]
        assert await tool.restore(settings, first) == [former], "the older backup still restores"
        assert await conn.fetchval(f"SELECT n FROM {former}.t") == 1
    finally:
        await conn.close()


async def refused_unsent(kafka, settings, monkeypatch) -> str:
    """equipement refuses a record and commits its offset, its relay stopped before it sent the
    DLQ copy (killed, or the DLQ's leader away until its stop); the copy is in its outbox. The DLQ's name."""
    from deploy.rattrapage import committed_offsets
    from helpers import college, eventually, running, uai
    from services.common.messaging.outbox import OutboxRelay
    from services.equipement.app import SPEC as EQUIPEMENT

    async def nothing(self) -> int:
        return 0

    bootstrap, where, refused = kafka.bootstrap_servers, uai("0350777"), settings.topic(c.EQUIPEMENT)
    with monkeypatch.context() as m:
        m.setattr(OutboxRelay, "drain_once", nothing)
        m.setattr(OutboxRelay, "flush", nothing)
        async with running(EQUIPEMENT, settings) as pipeline:
            await send(bootstrap, settings.topic(c.REFERENTIEL), [(where, college(where))])
            await send(bootstrap, refused, [(where, b"{pas du json")])
            await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM dead_letters"), what="refused")

            async def committed() -> bool:
                return any(
                    topic == refused for topic, _ in await committed_offsets(bootstrap, settings.topic("equipement"))
                )

            await eventually(committed, what="its offset committed")
    dead_letter_queue = c.dlq(refused)
    assert await read_topic(bootstrap, dead_letter_queue) == [], "the copy was not sent"
    return dead_letter_queue


async def _failed(cible) -> int:
    raise KafkaConnectionError("the broker went away")


async def copies_queued(settings, dead_letter_queue: str) -> int:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM equipement.outbox WHERE topic = $1", dead_letter_queue)
    finally:
        await conn.close()


async def test_a_dead_letter_copy_the_replaced_schema_had_not_sent_goes_out_after_the_restore(
    kafka, settings, tmp_path, monkeypatch
):
    """An older backup restored after such a refusal: the catch-up refuses the record again, but
    its committed offset said the copy went out, and the copy was dropped: logged as a dead
    letter, on no DLQ, never to be replayed. The copies still in the replaced schema's outbox are
    sent again, once, even by a restore run again after its catch-up failed (they are kept with
    the schema's mark)."""
    from helpers import eventually, running
    from services.equipement.app import SPEC as EQUIPEMENT

    dump = tmp_path / "avant.dump"
    async with running(EQUIPEMENT, settings):
        pass  # its schema, as the night's backup finds it
    tool.backup(settings.database_url, dump)
    dead_letter_queue = await refused_unsent(kafka, settings, monkeypatch)
    with monkeypatch.context() as m:  # a first run whose catch-up fails: the copies kept with the mark
        m.setattr(tool.rattrapage, "rattraper", _failed)
        with pytest.raises(tool.SauvegardeError, match=r"rerun \./dev restore"):
            await tool.restore(settings, dump)
    assert await tool.restore(settings, dump) == ["equipement"]
    async with running(EQUIPEMENT, settings):

        async def sent() -> list:
            return await read_topic(kafka.bootstrap_servers, dead_letter_queue)

        [copy] = await eventually(sent, what="the copy on its DLQ")
    assert copy.value == b"{pas du json" and dlq.origin(copy.headers)[0] == settings.topic(c.EQUIPEMENT)
    assert len(await read_topic(kafka.bootstrap_servers, dead_letter_queue)) == 1, "once"


async def test_a_dead_letter_copy_kafka_refused_for_good_is_queued_again_by_the_restore(
    kafka, settings, tmp_path, monkeypatch
):
    """The copy set aside (Kafka refused it for good: outbox_failed) when an older backup is
    restored: the backup's outbox_failed replaces the schema's, and the replay's copy was dropped
    as sent, so that the copy was on no DLQ and in no outbox. It is queued again."""
    from helpers import running
    from services.equipement.app import SPEC as EQUIPEMENT

    dump = tmp_path / "avant.dump"
    async with running(EQUIPEMENT, settings):
        pass
    tool.backup(settings.database_url, dump)
    dead_letter_queue = await refused_unsent(kafka, settings, monkeypatch)
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(
            "WITH moved AS (DELETE FROM equipement.outbox WHERE topic = $1 RETURNING *) "
            "INSERT INTO equipement.outbox_failed (seq, topic, key, record_value, headers, error, created_at) "
            "SELECT seq, topic, key, record_value, headers, 'MessageSizeTooLargeError', created_at FROM moved",
            dead_letter_queue,
        )
    finally:
        await conn.close()
    assert await tool.restore(settings, dump) == ["equipement"]
    assert await copies_queued(settings, dead_letter_queue) == 1


async def test_a_restore_run_again_sends_no_copy_its_backup_held_that_went_out_since(
    kafka, settings, tmp_path, monkeypatch
):
    """A backup taken while a copy waited in the outbox; the copy sent since (and gone from its
    DLQ, past its retention); a restore of that backup whose catch-up failed, run again: the
    restored outbox is the backup's, not a service's, and its copy is not queued again."""
    from helpers import running
    from services.equipement.app import SPEC as EQUIPEMENT

    async with running(EQUIPEMENT, settings):
        pass
    dead_letter_queue = await refused_unsent(kafka, settings, monkeypatch)
    dump = tmp_path / "pendant.dump"
    tool.backup(settings.database_url, dump)
    conn = await asyncpg.connect(settings.database_url)
    try:  # sent, then expired from its DLQ: in no outbox and on no DLQ
        await conn.execute("DELETE FROM equipement.outbox WHERE topic = $1", dead_letter_queue)
    finally:
        await conn.close()
    with monkeypatch.context() as m:
        m.setattr(tool.rattrapage, "rattraper", _failed)
        with pytest.raises(tool.SauvegardeError, match=r"rerun \./dev restore"):
            await tool.restore(settings, dump)
    assert await tool.restore(settings, dump) == ["equipement"]
    assert await copies_queued(settings, dead_letter_queue) == 0


async def test_one_restore_at_a_time_and_none_while_a_service_came_meanwhile(
    settings, database_url, tmp_path, monkeypatch
):
    """A second restore is refused while one runs, or a rebuild; a service that connected after the first
    check (its pod restarting, say) makes the restore's transaction fail: nothing replaced."""
    dump, conn = tmp_path / "base.dump", await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "CREATE SCHEMA restauree; CREATE TABLE restauree.t (n int); INSERT INTO restauree.t VALUES (1)"
        )
        tool.backup(database_url, dump)
        await conn.execute("INSERT INTO restauree.t VALUES (2)")
        for held in ("pg_advisory_lock", "pg_advisory_lock_shared"):  # a restore's, a rebuild's
            await conn.execute(f"SELECT {held}($1)", tool.rattrapage.RESTORE_LOCK)
            with pytest.raises(tool.SauvegardeError, match="another restore, or a rebuild, of this database is under"):
                await tool.restore(settings, dump)
            await conn.execute("SELECT pg_advisory_unlock_all()")
        came = await asyncpg.connect(database_url, server_settings={"application_name": "feo-equipement"})
        try:

            async def none_yet(_url: str) -> list[str]:  # the check done before it connected
                return []

            monkeypatch.setattr(tool, "connected_services", none_yet)
            with pytest.raises(tool.SauvegardeError, match="a service connected to the database during the restore"):
                await tool.restore(settings, dump)
        finally:
            await came.close()
        assert [r["n"] for r in await conn.fetch("SELECT n FROM restauree.t ORDER BY n")] == [1, 2], "not replaced"
        monkeypatch.undo()
        assert await tool.restore(settings, dump) == ["restauree"]
        assert [r["n"] for r in await conn.fetch("SELECT n FROM restauree.t")] == [1]
    finally:
        await conn.close()


async def test_a_dump_s_sql_fitted_for_postgresql_16_drops_only_the_settings_it_does_not_know(database_url, tmp_path):
    """pg_restore 18 writes `SET transaction_timeout = 0;` at the head of any dump's SQL, which a
    PostgreSQL 16 refuses (and psql stops the restore there); fitted for 16, that statement goes,
    and a row holding the same text, in COPY data, stays. For 17 on, the SQL is left as it is.
    (This machine has no PostgreSQL 16 to restore on: the SQL is what changes.)"""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE SCHEMA ajuste; CREATE TABLE ajuste.t (line text)")
        await conn.execute("INSERT INTO ajuste.t VALUES ('SET transaction_timeout = 0;'), ('autre')")
    finally:
        await conn.close()
    dump, script = tmp_path / "ajuste.dump", tmp_path / "ajuste.sql"
    tool.backup(database_url, dump)
    subprocess.run([tool.pg_tool("pg_restore"), "--schema", "ajuste", "--file", str(script), str(dump)], check=True)
    script.chmod(0o600)
    original = script.read_bytes().splitlines(keepends=True)
    setting = b"SET transaction_timeout = 0;\n"
    assert original.count(setting) == 2, "the head's statement and the row"
    assert tool.fit_for_server(script, 17) == 0 and script.read_bytes().splitlines(keepends=True) == original
    assert tool.fit_for_server(script, 16) == 1
    fitted = script.read_bytes().splitlines(keepends=True)
    statement = original.index(setting)
    assert fitted == original[:statement] + original[statement + 1 :], "that line alone"
    assert script.stat().st_mode & 0o777 == 0o600 and sorted(p.name for p in tmp_path.iterdir()) == [
        "ajuste.dump",
        "ajuste.sql",
    ]


def test_a_backup_is_its_owner_s_alone_and_one_that_fails_leaves_the_former(database_url, tmp_path) -> None:
    """It holds teachers' pseudonyms: mode 0600. Written beside it then renamed: a dump that
    fails (here, a database that does not exist) leaves the former backup of that name whole."""
    path = tmp_path / "nuit.dump"
    tool.backup(database_url, path)
    assert path.stat().st_mode & 0o777 == 0o600
    former = path.read_bytes()
    with pytest.raises(tool.SauvegardeError, match="pg_dump failed"):
        tool.backup(urlunsplit(urlsplit(database_url)._replace(path="/absente")), path)
    assert path.read_bytes() == former
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nuit.dump"], "nothing left beside it"
    latest = tmp_path / "latest.dump"  # a link to the night's: stays one, what it names replaced
    latest.symlink_to(path.name)
    night = path.stat().st_ino
    tool.backup(database_url, latest)
    assert latest.is_symlink() and path.stat().st_ino != night, "the night's file replaced, through the link"


def test_nightly_backups_keep_the_newest_and_a_failed_one_removes_nothing(database_url, tmp_path) -> None:
    """`backup --keep 2 DIR` (the Kubernetes CronJob's): each a whole backup named by its time,
    the oldest of those so named removed beyond 2, other files there left alone; one that fails
    removes none."""
    (mine := tmp_path / "a-la-main.dump").write_bytes(b"an operator's own")
    # A run killed a day ago left its partial file; one of an hour ago may still be under way.
    killed = tmp_path / f"feo-{datetime.now(UTC) - timedelta(days=1):%Y%m%dT%H%M%S.%fZ}.dump.x1y2z3.partiel"
    running = tmp_path / f"feo-{datetime.now(UTC) - timedelta(hours=1):%Y%m%dT%H%M%S.%fZ}.dump.a1b2c3.partiel"
    killed.write_bytes(b"half a dump")
    running.write_bytes(b"a dump under way")
    # A restore killed a day ago left its SQL (named after the backup it read, of any date), and
    # its copy fitted for an older server; one written an hour ago may be running.
    restores = {
        name: tmp_path / name
        for name in ("ancien.dump.k1ll3d_0.restauration.sql", "ancien.dump.k1ll3d_1.restauration.sql.ajuste")
    }
    restore_running = tmp_path / "a-la-main.dump.runn1ng_.restauration.sql"
    for path, age in [*((p, timedelta(days=1)) for p in restores.values()), (restore_running, timedelta(hours=1))]:
        path.write_bytes(b"a dump's SQL")
        os.utime(path, (when := (datetime.now(UTC) - age).timestamp(), when))
    made = []
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-m", "deploy.sauvegarde", "backup", "--keep", "2", str(tmp_path)],
            env={**os.environ, "DATABASE_URL": database_url},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        made.append(Path(done.stdout.split(" to ", 1)[1].split(" (", 1)[0]))
        assert made[-1].parent == tmp_path and tool.ROTATED.match(made[-1].name), done.stdout
    kept = [mine, running, restore_running]
    assert sorted(tmp_path.iterdir()) == sorted([*kept, *made[1:]]), "the first removed, the last two kept"
    assert not killed.exists() and not any(p.exists() for p in restores.values())
    for path in made[1:]:
        listed = subprocess.run([tool.pg_tool("pg_restore"), "--list", str(path)], capture_output=True, check=True)
        assert b"; Archive created at" in listed.stdout, "each one whole, as pg_restore reads it"
        assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(tool.SauvegardeError, match="pg_dump failed"):
        tool.rotated_backup(urlunsplit(urlsplit(database_url)._replace(path="/absente")), tmp_path, 1)
    assert sorted(tmp_path.iterdir()) == sorted([*kept, *made[1:]]), "a failed backup removes nothing"
    assert mine.read_bytes() == b"an operator's own"
    # Made while the clock was ten days ahead: the newest by name, yet not the newest.
    ahead = tmp_path / f"feo-{datetime.now(UTC) + timedelta(days=10):%Y%m%dT%H%M%S.%fZ}.dump"
    ahead.write_bytes(made[-1].read_bytes())
    rotation = tool.rotated_backup(database_url, tmp_path, 1)
    assert (rotation.removed, rotation.ahead) == ([], [ahead]), "none removed: the newest would go"
    assert sorted(tmp_path.iterdir()) == sorted([*kept, *made[1:], ahead, rotation.path])


async def test_a_database_url_with_server_options_the_services_take_is_taken_too(settings, database_url, tmp_path):
    """`?options=-c%20statement_timeout%3D5000`, as asyncpg (the services) reads it: the URL given
    to pg_dump and psql was encoded again with `+` for the space, which libpq does not read."""
    url = database_url + ("&" if "?" in database_url else "?") + "options=-c%20statement_timeout%3D5000"
    probe = await asyncpg.connect(url)
    try:
        assert await probe.fetchval("SHOW statement_timeout") == "5s"
        await probe.execute("CREATE SCHEMA optionnee; CREATE TABLE optionnee.t (n int)")
    finally:
        await probe.close()
    tool.backup(url, tmp_path / "options.dump")
    assert await tool.restore(settings.model_copy(update={"database_url": url}), tmp_path / "options.dump") == [
        "optionnee"
    ]


@pytest.mark.parametrize("command", [["deploy.sauvegarde", "backup", "x.dump"], ["deploy.reconstruire", "equipement"]])
def test_a_bad_database_url_is_named_not_shown(command: list[str]) -> None:
    env = {**os.environ, "DATABASE_URL": "postgresql+asyncpg://u:s3cr3t@h/db"}
    done = subprocess.run([sys.executable, "-m", *command], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("DATABASE_URL: must be a PostgreSQL URL"), done.stderr
    assert "s3cr3t" not in done.stdout + done.stderr


def test_no_password_reaches_a_command_line_or_the_output(database_url, tmp_path, monkeypatch, capsys) -> None:
    """The password and an sslpassword of DATABASE_URL reach pg_dump through its environment and
    a private service file, never its arguments; the backup works with them."""
    parts = urlsplit(database_url)
    secret_url = urlunsplit(
        parts._replace(netloc=f"{parts.username}:s3cr3t@{parts.hostname}:{parts.port}", query="sslpassword=s5l")
    )
    monkeypatch.setenv("DATABASE_URL", secret_url)
    seen: list[tuple[list[str], dict[str, str], str]] = []
    popen = subprocess.Popen

    def spy(args: list[str], **kw: Any) -> subprocess.Popen:
        env = kw["env"]
        service = Path(env["PGSERVICEFILE"]) if "PGSERVICEFILE" in env else None
        if service is not None:
            assert service.stat().st_mode & 0o077 == 0, "the service file is the user's alone"
        seen.append((args, env, service.read_text() if service else ""))
        return popen(args, **kw)

    monkeypatch.setattr(tool.subprocess, "Popen", spy)
    assert tool.main(["backup", str(tmp_path / "b.dump")]) == 0
    [(args, env, service)] = [s for s in seen if "pg_dump" in s[0][0]]
    assert "s3cr3t" not in " ".join(args) and "s5l" not in " ".join(args), args
    assert env["PGPASSWORD"] == "s3cr3t" and "sslpassword=s5l" in service
    assert not Path(env["PGSERVICEFILE"]).exists(), "the service file is removed once pg_dump is done"
    out = capsys.readouterr()
    assert "s3cr3t" not in out.out + out.err and "s5l" not in out.out + out.err


@pytest.mark.parametrize(
    ("action", "replaced", "kept"),
    [
        ("backup", False, "the former backup"),
        ("restore", False, "nothing replaced"),
        ("restore", True, "the schemas replaced, not all caught up: rerun ./dev restore"),
    ],
    ids=["backup", "restore-before", "restore-after"],
)
def test_ctrl_c_says_what_it_left_without_a_traceback(action, replaced, kept, tmp_path, monkeypatch, capsys) -> None:
    """A first Ctrl-C under asyncio.run cancels the restore's task (its catch-up then says to run
    it again); a second raises KeyboardInterrupt wherever it lands, before or after the schemas
    were replaced."""

    async def restore(*args: Any) -> list[str]:
        if replaced:
            tool.REPLACED.set()
        raise KeyboardInterrupt

    def backup(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(tool, "restore", restore)
    monkeypatch.setattr(tool, "backup", backup)
    assert tool.main([action, str(tmp_path / "x.dump")]) == 130
    said = capsys.readouterr().err
    assert said.startswith("error: interrupted (Ctrl-C): ") and kept in said and "Traceback" not in said, said


@pytest.mark.parametrize("lands", ["in-the-restore", "in-another-task"])
def test_a_signal_while_asyncio_runs_the_restore_cancels_its_task(lands, tmp_path, monkeypatch, capsys, caplog) -> None:
    """A SIGTERM while the restore awaits (its catch-up, hours nationally) cancels its task, as a
    first Ctrl-C does: its cleanup awaited whole, then exit 130. Raised where it landed, in a
    task of aiokafka's, say, asyncio logged that task's traceback (review helper-172 #5)."""
    import gc
    import signal

    cleaned: list[str] = []

    async def restore(*args: Any) -> list[str]:
        async def elsewhere() -> None:
            signal.raise_signal(signal.SIGTERM)

        try:
            if lands == "in-the-restore":
                signal.raise_signal(signal.SIGTERM)
            else:
                asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(elsewhere()))
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cleaned.append("cancelled")
            raise
        finally:
            await asyncio.sleep(0)  # the producer's stop, the pool's close
            cleaned.append("cleaned")
        return []

    monkeypatch.setattr(tool, "restore", restore)
    assert tool.main(["restore", str(tmp_path / "x.dump")]) == 130
    gc.collect()  # a task whose exception nobody read says so when it is collected
    assert cleaned == ["cancelled", "cleaned"]
    assert capsys.readouterr().err == "error: interrupted (SIGTERM): nothing replaced\n"
    assert not [r.getMessage() for r in caplog.records if r.name == "asyncio"]


def test_a_signal_just_before_a_tool_starts_stops_the_tool_at_once(tmp_path, monkeypatch, capsys) -> None:
    """Taken while the restore's task ran its own code, the signal only asked for the task's
    cancellation, which the event loop delivers at its next turn; psql started meanwhile ran
    the whole restore (hours), the signals after it ignored (review helper-178 #1)."""
    import signal

    async def restore(*args: Any) -> list[str]:
        signal.raise_signal(signal.SIGTERM)
        tool._run(["sleep", "20"], dict(os.environ), "a tool")
        return []

    monkeypatch.setattr(tool, "restore", restore)
    started = time.monotonic()
    assert tool.main(["restore", str(tmp_path / "x.dump")]) == 130
    assert time.monotonic() - started < 10, "the tool stopped, not waited for"
    assert capsys.readouterr().err == "error: interrupted (SIGTERM): nothing replaced\n"


def test_a_first_ctrl_c_during_the_catch_up_exits_130_too(tmp_path, monkeypatch, capsys) -> None:
    """The restore's task cancelled in its catch-up says to run it again (below), and exits as
    any Ctrl-C, not as a failure."""

    async def restore(*args: Any) -> list[str]:
        raise tool.Interrompue("interrupted once the schemas were replaced: rerun ./dev restore x.dump")

    monkeypatch.setattr(tool, "restore", restore)
    assert tool.main(["restore", str(tmp_path / "x.dump")]) == 130
    assert capsys.readouterr().err == "error: interrupted once the schemas were replaced: rerun ./dev restore x.dump\n"


async def test_a_restore_not_caught_up_keeps_the_services_from_starting(
    kafka, database_url, topic_prefix, tmp_path, monkeypatch
):
    """Kafka unreachable from the start: nothing is restored. The catch-up failing after the
    restored schemas were committed (Kafka lost meanwhile): they stay marked, the service refuses
    to start on them; the restore run again clears the mark."""
    from services.common.pipeline import Pipeline
    from services.common.runtime.lifecycle import CATCH_UP_PENDING, Lifecycle
    from services.common.runtime.startup import StartupFailed
    from services.common.storage.db import create_pool, migrate
    from services.equipement.app import SPEC as EQUIPEMENT

    pool = await create_pool(database_url, EQUIPEMENT.name)
    await migrate(pool, EQUIPEMENT.name, EQUIPEMENT.package_dir)
    await pool.close()
    dump = tmp_path / "equipement.dump"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "DATABASE_URL": database_url,
        "TOPIC_PREFIX": topic_prefix,
    }
    assert sauvegarde("backup", dump, env).returncode == 0

    def lifecycle() -> Lifecycle:
        settings = EQUIPEMENT.settings(**{k.lower(): v for k, v in env.items()})
        pipeline = Pipeline(
            EQUIPEMENT.name,
            settings,
            EQUIPEMENT.apply(settings),
            EQUIPEMENT.store,
            EQUIPEMENT.parse,
            EQUIPEMENT.dead_letters_for,
        )
        return Lifecycle(EQUIPEMENT, settings, pipeline, None)

    unreachable = sauvegarde("restore", dump, {**env, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert unreachable.returncode == 1, unreachable.stderr
    [said] = [line for line in unreachable.stderr.splitlines() if line.startswith("error: ")]
    assert said.startswith("error: nothing restored: "), said
    assert "reading" not in unreachable.stdout, "found out before the backup's SQL is written (hours, nationally)"
    untouched = lifecycle()
    await untouched.open_database()  # no mark: the schema was not replaced
    await untouched.close()

    async def kafka_lost(*args: Any, **kwargs: Any) -> None:
        raise KafkaConnectionError("lost during the catch-up")

    monkeypatch.setattr(tool.rattrapage, "rattraper", kafka_lost)
    settings = EQUIPEMENT.settings(**{k.lower(): v for k, v in env.items()})
    with pytest.raises(tool.SauvegardeError) as failed:
        await tool.restore(settings, dump)
    said = str(failed.value)
    assert said.startswith("equipement was restored but not caught up with the log (KafkaConnectionError: lost"), said
    assert said.endswith(f"rerun ./dev restore {dump}; do not start the services"), said

    async def interrupted(*args: Any, **kwargs: Any) -> None:
        raise asyncio.CancelledError  # what Ctrl-C makes of the task under asyncio.run

    monkeypatch.setattr(tool.rattrapage, "rattraper", interrupted)
    with pytest.raises(tool.Interrompue) as failed:  # exit 130, as any Ctrl-C
        await tool.restore(settings, dump)
    assert str(failed.value) == (
        "interrupted once the schemas were replaced, before they were all caught up with the log: "
        f"rerun ./dev restore {dump}; do not start the services"
    )
    monkeypatch.undo()
    with pytest.raises(
        StartupFailed, match=r"schema 'equipement' was restored but not caught up .* ./dev restore FILE"
    ):
        await lifecycle().open_database()

    done = sauvegarde("restore", dump, env)
    assert done.returncode == 0, done.stderr
    started = lifecycle()
    await started.open_database()
    try:
        mark = f"{EQUIPEMENT.name}.{CATCH_UP_PENDING}"
        assert await started._pipeline.pool.fetchval("SELECT to_regclass($1)", mark) is None
    finally:
        await started.close()


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGHUP"])
async def test_a_restore_stopped_by_a_signal_stops_psql_removes_its_sql_and_says_what_it_left(
    kafka, database_url, topic_prefix, tmp_path, signal_name
):
    """`timeout`, systemd or an operator's kill sends SIGTERM to the tool alone: it died without a
    word, the dump's SQL in clear stayed beside the backup, and psql ran on after the restore's
    lock was gone (audit helper-170 #5). Now taken as a Ctrl-C is."""
    import signal

    import psutil

    dump, conn = tmp_path / "base.dump", await asyncpg.connect(database_url)
    restore: subprocess.Popen | None = None
    try:
        await conn.execute("CREATE SCHEMA arretee; CREATE TABLE arretee.t (n int); INSERT INTO arretee.t VALUES (1)")
        tool.backup(database_url, dump)
        await conn.execute("INSERT INTO arretee.t VALUES (2)")
        held = conn.transaction()
        await held.start()
        await conn.execute("LOCK TABLE arretee.t IN ACCESS SHARE MODE")  # psql's DROP SCHEMA waits on it
        env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "DATABASE_URL": database_url}
        restore = subprocess.Popen(
            [sys.executable, "-m", "deploy.sauvegarde", "restore", str(dump)],
            env={**os.environ, **env, "TOPIC_PREFIX": topic_prefix},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        tool_process = psutil.Process(restore.pid)

        def psqls() -> list[psutil.Process]:
            return [p for p in tool_process.children(recursive=True) if p.name() == "psql"]

        deadline = time.monotonic() + 60
        while not (running_psql := psqls()) and restore.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert running_psql, f"psql never ran: {restore.poll()} {restore.stderr and restore.stderr.read()}"
        restore.send_signal(getattr(signal, signal_name))
        _, said = await asyncio.to_thread(restore.communicate, timeout=60)
        assert restore.returncode == 130, said
        assert said.strip().endswith(f"error: interrupted ({signal_name}): nothing replaced"), said
        assert "Traceback" not in said
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in running_psql), "psql stopped"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["base.dump"], "the dump's SQL removed"
        await held.rollback()
        assert [r["n"] for r in await conn.fetch("SELECT n FROM arretee.t ORDER BY n")] == [1, 2], "not replaced"
    finally:
        try:
            if restore is not None and restore.poll() is None:  # failed before its end: not left restoring
                with contextlib.suppress(psutil.NoSuchProcess, subprocess.TimeoutExpired):
                    restoring = psutil.Process(restore.pid)
                    for process in [*restoring.children(recursive=True), restoring]:
                        with contextlib.suppress(psutil.NoSuchProcess):
                            process.kill()
                    restore.wait(10)
        finally:
            await conn.close()


def test_a_signal_ignored_already_stays_ignored_and_one_after_the_first_is_too() -> None:
    """`nohup ./dev restore` ignores SIGHUP: the tool's handler took its place, and a closed
    terminal killed an hours-long restore (review helper-172 #2). A second signal, a closed
    terminal sending SIGHUP twice, cut the cleanup short (#6)."""
    import signal

    ignored, former_term = signal.signal(signal.SIGHUP, signal.SIG_IGN), signal.getsignal(signal.SIGTERM)
    try:
        with tool._stopped_as_interrupted():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            with pytest.raises(tool._Stopped, match="SIGTERM"):
                signal.raise_signal(signal.SIGTERM)
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        assert (signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGTERM)) == (signal.SIG_IGN, former_term)
    finally:
        signal.signal(signal.SIGHUP, ignored)
