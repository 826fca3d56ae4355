"""The dead-letter log: who sent each refused record, kept by the service that refused it, and
found by `./dev dead-letters`, against the real broker and database."""

import asyncio
import json
import socket
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

import contracts as c
from contracts.internal import PROFILS
from deploy import sauvegarde
from helpers import (
    TEST_PARTITIONS,
    NotUtf8,
    Said,
    TopicReader,
    at,
    college,
    delete_before,
    event,
    eventually,
    lock_waiters,
    migrated_pool,
    python_record_builder,
    record_count,
    running,
    send,
    uai,
)
from services.common.messaging import dead_letters, dlq, outbox_failed
from services.common.messaging.connection import KafkaAccess
from services.common.messaging.outbox import enqueue
from services.common.pipeline import writer_lock
from services.common.storage import db
from services.common.storage.db import create_pool, migrate
from services.equipement.app import SPEC as EQUIPEMENT
from services.formation.app import SPEC as FORMATION
from services.ressources.app import SPEC as RESSOURCES

DEPARTEMENT = "/collectivites/departements/035"
OTHER_DEPARTEMENT = "/collectivites/departements/022"
REGION = "/collectivites/regions/53"
SECRET = "SecretOS"  # in every refused value: the log and the command must never show it


def lot(where: str, lot_id: str, minute: int, *, source: str = DEPARTEMENT, id_: str | None = None) -> dict:
    data = {"uai": where, "lot_id": lot_id, "kind": "tablette", "quantity": 3, "os": {"name": SECRET, "version": "1"}}
    return event(c.LOT, source, data, subject=where, time_=at(minute), id_=id_)


def moved(where: str) -> dict:
    """The collège's référentiel entry corrected: in the other département (a later version)."""
    return college(where, dep="022", minute=5)


async def moved_in(pipeline, uais: list[str]) -> bool:
    return await pipeline.pool.fetchval(
        "SELECT count(*) = $2 FROM etablissements WHERE uai = ANY($1::text[]) AND code_departement = '022'",
        uais,
        len(uais),
    )


async def dead_letter_rows(pipeline, count: int) -> list:
    async def check():
        rows = await pipeline.pool.fetch('SELECT * FROM dead_letters ORDER BY "offset"')
        return len(rows) >= count and rows

    return await eventually(check, what=f"{count} dead letters")


async def at_least(n: int, count) -> bool:
    return await count >= n


async def command(capsys, database_url: str, *argv: str) -> list[str]:
    await dead_letters.run(dead_letters.parse_args(argv), database_url)
    return capsys.readouterr().out.splitlines()


async def test_refused_records_keep_their_sender_and_key_and_the_command_finds_them(kafka, settings, capsys):
    where, other = uai("0350201"), uai("0350202")
    out_of_competence = lot(where, "L1", 1, source=REGION)
    nan = json.dumps(lot(where, "L2", 2))[:-1] + ', "x": NaN}'
    long_id = lot(other, "L3", 3, id_="i" * 300)  # beyond the contract's 128 characters; its subject: other
    topic = settings.topic(c.EQUIPEMENT)
    async with running(EQUIPEMENT, settings) as pipeline:
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(u, college(u)) for u in (where, other)])
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 2 FROM etablissements"), what="référentiel")
        await send(
            kafka.bootstrap_servers,
            topic,
            [
                (where, out_of_competence),
                (where, b"\xff " + SECRET.encode()),
                (where, nan.encode()),
                (where, long_id),  # one key, one partition: offsets in order
            ],
        )
        rows = await dead_letter_rows(pipeline, 4)

    assert [(r["reason"], r["source"], r["id"], r["type"], r["subject"], r["key"]) for r in rows] == [
        ("hors-competence", REGION, out_of_competence["id"], c.LOT, where, where),
        ("json-invalide", None, None, None, None, where),  # not JSON: nothing to read but the key
        ("json-invalide", DEPARTEMENT, json.loads(nan)["id"], c.LOT, where, where),
        ("cloudevent-invalide", DEPARTEMENT, "i" * 255 + "…", c.LOT, other, where),
    ]
    assert all(r["topic"] == topic and r["partition"] >= 0 and r["received_at"] for r in rows)
    assert not any(SECRET in str(dict(r)) for r in rows), "the refused value is not kept"

    url = settings.database_url
    listed = await command(capsys, url, "list")
    assert [line.split()[1:4] for line in listed] == [
        ["equipement", f"{topic}:{r['partition']}@{r['offset']}", r["reason"]] for r in reversed(rows)
    ], "newest first"
    assert listed[0].endswith(f"source={DEPARTEMENT} id={'i' * 255}… key={where}")
    assert listed[2].endswith(f"source=- id=- key={where}")
    assert SECRET not in "\n".join(listed)

    def offsets(lines: list[str]) -> list[int]:
        return [int(line.split()[2].rsplit("@", 1)[1]) for line in lines]

    assert offsets(await command(capsys, url, "list", "--source", REGION)) == [rows[0]["offset"]]
    assert offsets(await command(capsys, url, "list", "--reason", "json-invalide")) == [
        rows[2]["offset"],
        rows[1]["offset"],
    ]
    assert offsets(await command(capsys, url, "list", "--uai", other)) == [rows[3]["offset"]]  # by its subject
    assert len(await command(capsys, url, "list", "--uai", where, "--topic", topic, "--service", "equipement")) == 4
    assert await command(capsys, url, "list", "--topic", c.EQUIPEMENT) == [], "the topic as read, prefix included"
    assert await command(capsys, url, "list", "--since", "2100-01-01") == []
    assert len(await command(capsys, url, "list", "--since", rows[0]["received_at"].isoformat())) == 4
    await dead_letters.run(dead_letters.parse_args(["list", "--limit", "2"]), url)
    limited = capsys.readouterr()
    assert len(limited.out.splitlines()) == 2 and "more than 2: narrow the search" in limited.err

    first = rows[0]
    shown = await command(
        capsys, url, "show", "--topic", topic, "--partition", str(first["partition"]), "--offset", str(first["offset"])
    )
    assert shown[0] == f"equipement {topic}:{first['partition']}@{first['offset']}, its bytes in {topic}.dlq"
    fields = dict(line.split(maxsplit=1) for line in shown[1:])
    assert fields["reason"] == "hors-competence" and fields["message"] == first["message"]
    assert (fields["source"], fields["id"], fields["type"], fields["key"]) == (
        REGION,
        out_of_competence["id"],
        c.LOT,
        where,
    )
    assert SECRET not in "\n".join(shown)
    where_not = ["--topic", topic, "--partition", str(first["partition"]), "--offset", "999999"]
    assert await dead_letters.run(dead_letters.parse_args(["show", "--service", "equipement", *where_not]), url) == 0
    assert capsys.readouterr().err == (
        f"no dead letter at {topic}:{first['partition']}@999999 in equipement "
        "(never refused there, or purged after INBOX_RETENTION_DAYS)\n"
    )


async def test_a_key_or_subject_that_may_be_a_teacher_id_is_not_kept(kafka, settings, capsys):
    teacher, unknown = "ens-0000000A", uai("0350299")  # no établissement in this référentiel
    bad_code = event(
        c.FORMATION_SUIVIE,
        "/rectorats/14",
        {
            "teacher_id": teacher,
            "module_id": "m-1",
            "title": "Scratch",
            "dispositif": "magistere",
            "completed_on": "2026-10-01",
            "competences": [{"code": "9.9", "level": 1}],
            "tools": [],
        },
        subject=teacher,
        time_=at(1),
    )
    affectation = event(
        c.AFFECTATION,
        "/rectorats/14",
        {"teacher_id": teacher, "uai": unknown, "start": "2026-09-01", "end": None},
        subject=unknown,
        time_=at(2),
    )
    async with running(FORMATION, settings) as pipeline:
        await send(kafka.bootstrap_servers, settings.topic(c.FORMATION), [(teacher, bad_code), (unknown, affectation)])
        rows = sorted(await dead_letter_rows(pipeline, 2), key=lambda r: r["reason"])  # two keys, two partitions

    assert [(r["reason"], r["source"], r["id"], r["subject"], r["key"]) for r in rows] == [
        ("crcn-invalide", "/rectorats/14", bad_code["id"], None, None),
        ("uai-inconnu", "/rectorats/14", affectation["id"], unknown, unknown),
    ]
    assert not any(teacher in str(dict(r)) for r in rows)
    assert teacher not in "\n".join(await command(capsys, settings.database_url, "list"))


async def test_dead_letters_from_before_the_migration_stay_with_empty_senders(database_url):
    schema = "before0005"
    pool = await create_pool(database_url, schema)
    try:
        shared = sorted((Path(dead_letters.__file__).parents[1] / "migrations").glob("*.sql"))
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE schema_migrations (name text PRIMARY KEY, applied_at timestamptz)")
            for migration in [m for m in shared if m.name < "0005"]:
                await conn.execute(migration.read_text())
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", f"common/{migration.name}")
            await conn.execute(
                'INSERT INTO dead_letters (topic, partition, "offset", reason, message) '
                "VALUES ('equipement.declarations.v1', 0, 7, 'json-invalide', 'pas du JSON')"
            )
        await migrate(pool, schema, EQUIPEMENT.package_dir)
        row = await pool.fetchrow("SELECT * FROM dead_letters")
        assert (row["offset"], row["reason"]) == (7, "json-invalide")
        assert (row["source"], row["id"], row["type"], row["subject"], row["key"]) == (None,) * 5
    finally:
        await pool.close()


def test_an_unreachable_database_is_one_line_without_its_password(monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", "postgresql://operateur:motdepasse@127.0.0.1:1/feo")
    assert dead_letters.main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("./dev dead-letters: cannot read postgresql://operateur:***@127.0.0.1:1/feo (DATABASE_URL): ")
    assert "motdepasse" not in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("tool", "said"), [(dead_letters.main, "./dev dead-letters: "), (outbox_failed.main, "./dev outbox: ")]
)
def test_a_database_that_never_answers_is_named_not_taken_for_kafka(tool, said, monkeypatch, capsys):
    """A server that takes the connection and never answers (a host or firewall dropping it, as it
    appears here): the tool says PostgreSQL did not answer, in one line (it printed an empty
    reason, or blamed Kafka)."""
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel completes the handshake; nobody reads
    try:
        port = silent.getsockname()[1]
        monkeypatch.setenv("DATABASE_URL", f"postgresql://operateur:motdepasse@127.0.0.1:{port}/feo")
        monkeypatch.setattr(db, "TOOL_CONNECT_SECONDS", 1)
        assert tool(["list"]) == 1
    finally:
        silent.close()
    err = capsys.readouterr().err
    assert err.startswith(said) and "PostgreSQL (DATABASE_URL) did not answer within 1 s" in err, err
    assert "Kafka" not in err and "motdepasse" not in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("tool", "core", "argv", "said"),
    [
        (dead_letters.main, (dead_letters, "run"), ["list"], "./dev dead-letters: "),
        (outbox_failed.main, (outbox_failed, "run"), ["list"], "./dev outbox: "),
        (sauvegarde.main, (sauvegarde, "restore"), ["restore", "sauvegarde.dump"], "error: "),
    ],
    ids=["dead-letters", "outbox", "restore"],
)
def test_a_session_postgresql_ended_is_one_line_saying_so(tool, core, argv, said, settings, monkeypatch, capsys):
    """A session ended by PostgreSQL (a restart) that the client finds out by its next statement
    (InternalClientError, as asyncpg may say it): a traceback; one line, run it again, exit 1."""

    async def ended(*args, **kwargs):
        raise asyncpg.InternalClientError("cannot process message 'E': protocol is in an unexpected state")

    monkeypatch.setattr(*core, ended)
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", settings.kafka_bootstrap_servers)
    assert tool(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{said}its session with PostgreSQL ended (cannot process message") and "run it again" in err
    assert err.count("\n") == 1, err


async def test_a_refused_record_whose_header_name_holds_a_nul_is_dead_lettered_and_its_partition_goes_on(
    kafka, settings
):
    """A header *name* with a NUL character, on a record to refuse (or one that waits for its
    établissement): its DLQ copy's headers, written to the outbox as text, made PostgreSQL
    refuse the transaction, and the record alone as well, so its batch was given back for ever
    and the service stopped consuming. It is dead-lettered, headers byte-exact, and the
    records after it take effect."""
    known, awaited = uai("0350311"), uai("0350312")
    topic = settings.topic(c.EQUIPEMENT)
    odd = [("trace\x00id", b"\x00\xff"), ("a\x00", None)]
    async with running(EQUIPEMENT, settings) as pipeline, TopicReader(kafka.bootstrap_servers, c.dlq(topic)) as dlq:
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(known, college(known))])
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM etablissements"), what="référentiel")
        await send(kafka.bootstrap_servers, topic, [(known, b"{pas du json")], headers=odd, partition=0)
        await send(kafka.bootstrap_servers, topic, [(awaited, lot(awaited, "L0", 1))], headers=odd, partition=0)
        await send(kafka.bootstrap_servers, topic, [(known, lot(known, "L1", 2))], partition=0)
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM lots"), what="the lot after them")
        copies = await dlq.wait_for(lambda records: len(records) >= 2, what="the DLQ copies")
        for copy in copies:
            assert [h for h in copy.headers if not h[0].startswith("dlq-")][1:] == odd, "headers byte-exact"
        assert sorted(dict(copy.headers)["dlq-reason"] for copy in copies) == [b"json-invalide", b"uai-inconnu"]
        assert await pipeline.pool.fetchval("SELECT count(*) FROM attente_referentiel") == 1, "the other waits"
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(awaited, college(awaited))])
        await eventually(
            lambda: pipeline.pool.fetchval("SELECT count(*) = 2 FROM lots"), what="the awaited one revived"
        )


async def _lots_in_every_partition(kafka, settings, code: str, n: int) -> tuple[str, str]:
    """A collège (its UAI from `code`) in the référentiel and `n` of its lots in each partition of
    the equipement topic: (its UAI, that topic)."""
    known, topic = uai(code), settings.topic(c.EQUIPEMENT)
    await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(known, college(known))])
    for partition in range(TEST_PARTITIONS):
        lots = [(known, lot(known, f"P{partition}-{k}", 1)) for k in range(n)]
        await send(kafka.bootstrap_servers, topic, lots, partition=partition)
    return known, topic


async def test_a_record_whose_header_name_is_not_utf8_is_judged_by_its_value_and_nothing_else_is_lost(
    kafka, settings, monkeypatch
):
    """aiokafka could not read such a record (the broker takes the name): the poll that met it
    lost the records it had taken of other partitions, and its partition stood still for good,
    /health 200. Now the name reads with its bytes written `\\xNN`: a valid lot so named is
    applied, a record to refuse is dead-lettered (its DLQ copy so named, value byte-exact),
    and every partition's records before and after them are applied."""
    from services.common.messaging import records

    said = Said()
    monkeypatch.setattr(records, "log", said)
    known, topic = await _lots_in_every_partition(kafka, settings, "0350321", 4)
    with python_record_builder(monkeypatch):
        named = [(known, lot(known, "NAMED", 1)), (known, b"{pas du json")]
        await send(kafka.bootstrap_servers, topic, named, [(NotUtf8("h"), b"\xff")], partition=1)
    await send(kafka.bootstrap_servers, topic, [(known, lot(known, "AFTER", 1))], partition=1)
    async with running(EQUIPEMENT, settings) as pipeline, TopicReader(kafka.bootstrap_servers, c.dlq(topic)) as dlq:
        await eventually(
            lambda: pipeline.pool.fetchval("SELECT count(*) = $1 FROM lots", TEST_PARTITIONS * 4 + 2),
            timeout=60,
            what="every lot",
        )
        assert {"NAMED", "AFTER"} <= {r["lot_id"] for r in await pipeline.pool.fetch("SELECT lot_id FROM lots")}
        [row] = await dead_letter_rows(pipeline, 1)
        assert (row["topic"], row["partition"], row["offset"], row["reason"]) == (topic, 1, 5, "json-invalide")
        [copy] = await dlq.wait_for(lambda records: len(records) >= 1, what="the DLQ copy")
        assert copy.value == b"{pas du json"
        assert [h for h in copy.headers if not h[0].startswith("dlq-")][1:] == [("\\xff\\xfeh", b"\xff")]
        said_where = {(line["topic"], line["partition"]) for line in said.named("kafka.header_name_not_utf8")}
        assert said_where == {(topic, 1)}, said.lines


async def _the_others_go_on(kafka, topic: str, known: str, pipeline, applied: int) -> None:
    """`applied` lots stored, then one sent on partition 0 later applied too: partition 1 alone waits."""
    await eventually(
        lambda: pipeline.pool.fetchval("SELECT count(*) = $1 FROM lots", applied), timeout=60, what="the lots read"
    )
    await send(kafka.bootstrap_servers, topic, [(known, lot(known, "PLUS-TARD", 2))], partition=0)
    await eventually(
        lambda: pipeline.pool.fetchval("SELECT count(*) FROM lots WHERE lot_id = 'PLUS-TARD'"),
        what="partition 0 going on",
    )


async def test_a_batch_the_broker_serves_damaged_holds_its_partition_and_loses_nothing_of_the_others(
    kafka, settings, monkeypatch
):
    """A batch whose bytes the broker's storage damaged (its CRC wrong): aiokafka raised at every
    poll, and the records the poll had taken of other partitions before it were lost (their
    positions past them). Now its partition waits at it (said once at ERROR, on /health and in
    /metrics), every other partition's records are applied, then and later, nothing after it is
    skipped; and it is read again by itself: once the storage is repaired, it goes on."""
    from services.common.messaging import consumer

    said = Said()
    monkeypatch.setattr(consumer, "log", said)
    monkeypatch.setattr(consumer, "UNREADABLE_RETRY_SECONDS", 0.5)
    known, topic = await _lots_in_every_partition(kafka, settings, "0350322", 4)
    await send(kafka.bootstrap_servers, topic, [(known, lot(known, "ABIME", 1))], partition=1)  # offset 4
    await send(kafka.bootstrap_servers, topic, [(known, lot(known, "APRES", 1))], partition=1)
    segment = kafka.data_dir / "kafka-logs" / f"{topic}-1" / f"{0:020}.log"
    content = segment.read_bytes()
    assert content.count(b"ABIME") == 1
    with segment.open("r+b") as damaged:  # what the broker serves next, from the page cache
        damaged.seek(content.index(b"ABIME"))
        damaged.write(b"ABIMF")
    service = running(EQUIPEMENT, settings)
    async with service as pipeline:
        # Every lot but partition 1's damaged one and the one after it (those before it too).
        await _the_others_go_on(kafka, topic, known, pipeline, TEST_PARTITIONS * 4)

        async def read_again() -> bool:
            return bool(said.named("kafka.still_unreadable"))

        await eventually(read_again, what="the batch read again, still damaged")
        lots = {r["lot_id"] for r in await pipeline.pool.fetch("SELECT lot_id FROM lots")}
        assert not {"ABIME", "ABIMF", "APRES"} & lots
        stored = await pipeline.pool.fetchval(
            "SELECT next_offset FROM positions WHERE topic = $1 AND partition = 1", topic
        )
        assert stored == 4, "partition 1 waits at its damaged batch"
        status, health = await service.app.health()
        [held] = health["unreadable_batches"]
        assert (status, held["topic"], held["partition"], held["offset"]) == (200, topic, 1, 4)
        metric = f'feo_unreadable_batch_offset{{partition="1",service="equipement",topic="{topic}"}} 4.0'
        assert metric in pipeline.metrics.render().decode()

        with segment.open("r+b") as repaired:
            repaired.seek(content.index(b"ABIME"))
            repaired.write(b"ABIME")
        await eventually(
            lambda: pipeline.pool.fetchval("SELECT count(*) = 2 FROM lots WHERE lot_id IN ('ABIME', 'APRES')"),
            timeout=30,
            what="partition 1 read again once repaired",
        )
        status, health = await service.app.health()
        assert (status, health["unreadable_batches"]) == (200, [])
        assert "feo_unreadable_batch_offset{" not in pipeline.metrics.render().decode()
    [line] = said.named("kafka.unreadable_batch")
    assert (line["level"], line["topic"], line["partition"], line["offset"]) == ("error", topic, 1, 4)
    assert {r["level"] for r in said.named("kafka.still_unreadable")} == {"warning"}
    [again] = said.named("kafka.readable_again")
    assert (again["topic"], again["partition"], again["offset"]) == (topic, 1, 4)


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_records_a_partner_compressed_with_any_of_kafkas_codecs_are_applied(kafka, settings, codec):
    """snappy, lz4 and zstd batches raised UnsupportedCodecError at every poll (cramjam was not
    installed): a partner whose producer compressed with one of them stopped the service's reading."""
    known = uai("0350323")
    await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(known, college(known))], compression=codec)
    lots = [(known, lot(known, f"{codec}-{n}", 1)) for n in range(20)]
    await send(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT), lots, compression=codec)
    async with running(EQUIPEMENT, settings) as pipeline:
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 20 FROM lots"), what="every lot")


async def test_a_batch_decompressing_past_the_bound_holds_its_partition_and_the_others_go_on(
    kafka, settings, monkeypatch
):
    """The broker bounds a batch compressed: a megabyte of gzip it takes holds a gigabyte, which
    aiokafka decompressed whole, past the service's memory, again at every restart. Now a batch
    past DECOMPRESSED_BATCH_MAX_BYTES (here 1 MiB) is not decompressed further: its partition waits
    at it as at a damaged batch (said why, on /health), the records before it and every other
    partition's are applied."""
    from services.common.messaging import consumer, records

    said = Said()
    monkeypatch.setattr(consumer, "log", said)
    monkeypatch.setattr(records, "DECOMPRESSED_BATCH_MAX_BYTES", 1 << 20)
    known, topic = await _lots_in_every_partition(kafka, settings, "0350324", 3)
    bomb = json.dumps(lot(known, "BOMBE", 1)).encode() + b" " * (3 << 19)  # 1.5 MiB, a few kB of gzip
    await send(kafka.bootstrap_servers, topic, [(known, bomb)], partition=1, compression="gzip")  # offset 3
    service = running(EQUIPEMENT, settings)
    async with service as pipeline:
        await _the_others_go_on(kafka, topic, known, pipeline, TEST_PARTITIONS * 3)  # every lot before it
        status, health = await service.app.health()
        [held] = health["unreadable_batches"]
        assert (status, held["topic"], held["partition"], held["offset"]) == (200, topic, 1, 3)
        stored = await pipeline.pool.fetchval(
            "SELECT next_offset FROM positions WHERE topic = $1 AND partition = 1", topic
        )
        assert stored == 3, "partition 1 waits at the batch"
    [line] = said.named("kafka.unreadable_batch")
    assert (line["topic"], line["partition"], line["offset"], line["skip_to"]) == (topic, 1, 3, 4)
    assert "decompresses past 1048576 bytes (DECOMPRESSED_BATCH_MAX_BYTES)" in line["error"]

    # The operator leaves it, as the line says: the partition goes on after it.
    async with migrated_pool(settings.database_url, EQUIPEMENT) as pool:
        await pool.execute("UPDATE positions SET next_offset = $1 WHERE topic = $2 AND partition = 1", 4, topic)
    await send(kafka.bootstrap_servers, topic, [(known, lot(known, "APRES", 2))], partition=1)
    async with running(EQUIPEMENT, settings) as pipeline:
        await eventually(
            lambda: pipeline.pool.fetchval("SELECT count(*) FROM lots WHERE lot_id = 'APRES'"),
            what="partition 1 going on past the batch",
        )


async def test_replay_sends_a_refused_record_back_once_the_cause_is_fixed_and_only_once(kafka, settings, capsys):
    """A lot from a département the référentiel does not place the collège in is refused; once
    the référentiel corrects the collège's département, the replay sends the very record back,
    marked, and the lot is stored; a second replay finds nothing left to send. (A record
    refused for want of its établissement needs no replay: test_uai_awaited.py.)"""
    later, known = uai("0350301"), uai("0350302")
    refused = lot(later, "L1", 1, source=OTHER_DEPARTEMENT)
    topic = settings.topic(c.EQUIPEMENT)
    partner_headers = [("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]
    async with running(EQUIPEMENT, settings) as pipeline, TopicReader(kafka.bootstrap_servers, topic) as partner:
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(u, college(u)) for u in (known, later)])
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 2 FROM etablissements"), what="référentiel")
        await send(kafka.bootstrap_servers, topic, [(later, refused)], headers=partner_headers)
        [row] = await dead_letter_rows(pipeline, 1)
        assert row["reason"] == "hors-competence" and row["replayed_at"] is None
        origin = f"{row['topic']}:{row['partition']}@{row['offset']}"
        await eventually(lambda: record_count(kafka.bootstrap_servers, c.dlq(topic)), what="the DLQ copy published")

        # The operator looks at it, headers included (read from its DLQ copy).
        shown = await command(
            capsys, settings.database_url, "show", "--service", "equipement", "--topic", row["topic"],
            "--partition", str(row["partition"]), "--offset", str(row["offset"]), "--headers",
        )  # fmt: skip
        assert f"    traceparent {partner_headers[0][1].decode()}" in shown, shown
        assert "    dlq-reason hors-competence" in shown and "    content-type application/cloudevents+json" in shown

        # Nothing is sent by a dry run; then the cause is fixed: the collège is in that département.
        dry = await command(capsys, settings.database_url, "replay", "--service", "equipement", "--dry-run")
        assert dry[-1] == f"{origin} would be replayed to {topic}"
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(later, moved(later))])
        await eventually(lambda: moved_in(pipeline, [later]), what="the fix")
        assert await record_count(kafka.bootstrap_servers, topic) == 1, "the dry run sent nothing"

        # While another operator's replay runs, this one sends nothing (each would send them all).
        other = await asyncpg.connect(settings.database_url)
        try:
            await other.execute("SELECT pg_advisory_lock($1)", dead_letters.REPLAY_LOCK)
            argv = ["replay", "--service", "equipement"]
            with pytest.raises(dead_letters.ReplayUnderWay, match="another replay of dead letters is under way"):
                await dead_letters.run(dead_letters.parse_args(argv), settings.database_url)
        finally:
            await other.close()
        assert await pipeline.pool.fetchval("SELECT replayed_at FROM dead_letters") is None

        out = await command(
            capsys, settings.database_url, "replay", "--service", "equipement", "--reason", "hors-competence"
        )
        assert out[-1].startswith(f"{origin} replayed as {topic}:"), out
        stored = await eventually(
            lambda: pipeline.pool.fetchval("SELECT quantity FROM lots WHERE uai = $1 AND lot_id = 'L1'", later),
            what="the replayed lot stored",
        )
        assert stored == 3
        # The service applying it says nothing of this reader having fetched it (audit helper-189 #7).
        replayed = await partner.wait_for(
            lambda rs: any(("dlq-replay", origin.encode()) in r.headers for r in rs), what="the replayed copy read"
        )
        [copy] = [r for r in replayed if ("dlq-replay", origin.encode()) in r.headers]
        assert copy.value == json.dumps(refused).encode() and copy.key == later.encode(), "the bytes as they were"
        assert [h for h in copy.headers if h[0] == "traceparent"] == partner_headers, "the partner's headers kept"
        assert not any(name in {"dlq-reason", "dlq-topic", "dlq-offset"} for name, _ in copy.headers), copy.headers
        marked = await pipeline.pool.fetchval("SELECT replayed_at FROM dead_letters")
        assert marked is not None

        again = await command(capsys, settings.database_url, "replay", "--service", "equipement")
        assert again == [], "nothing left to replay"
        assert await record_count(kafka.bootstrap_servers, topic) == 2, "replayed once"
        listed = await command(capsys, settings.database_url, "list", "--service", "equipement")
        assert listed[0].endswith(f"replayed={marked.isoformat(timespec='seconds')}"), listed


async def test_replay_puts_a_refused_record_back_on_the_partition_it_was_read_from(kafka, settings, capsys):
    """A writer may put a record elsewhere than its key's hash (the relay puts a UAI's coverage
    records on the UAI's partition): the replay puts it back where it was, among its key's others."""
    from services.common.messaging.partitioner import partition_for

    where, topic = uai("0350450"), settings.topic(c.EQUIPEMENT)
    chosen = (partition_for(where.encode(), range(TEST_PARTITIONS)) + 1) % TEST_PARTITIONS
    async with running(EQUIPEMENT, settings) as pipeline, TopicReader(kafka.bootstrap_servers, topic) as partner:
        await send(kafka.bootstrap_servers, topic, [(where, lot(where, "L1", 1))], partition=chosen)  # uai-inconnu
        [row] = await dead_letter_rows(pipeline, 1)
        assert row["partition"] == chosen
        await eventually(lambda: record_count(kafka.bootstrap_servers, c.dlq(topic)), what="the DLQ copy published")
        out = await command(capsys, settings.database_url, "replay", "--service", "equipement")
        assert out[-1].startswith(f"{topic}:{chosen}@{row['offset']} replayed as {topic}:{chosen}@"), out
        records = await partner.wait_for(lambda rs: len(rs) >= 2, what="the record and its replay")
        assert [r.partition for r in records] == [chosen, chosen]


async def send_empty_record(bootstrap: str, topic: str) -> None:
    """A record with neither key nor value, as Kafka takes it from a client that sends one (a
    Java producer does): aiokafka's `send` refuses to, so it goes by its accumulator."""
    from services.common.messaging.connection import kafka_options

    producer = AIOKafkaProducer(**kafka_options(bootstrap))
    await producer.start()
    try:
        await producer.partitions_for(topic)
        await (await producer._message_accumulator.add_message(TopicPartition(topic, 0), None, None, timeout=10))
    finally:
        await producer.stop()


async def test_replay_leaves_a_record_without_key_nor_value_and_sends_the_others(kafka, settings, capsys):
    """aiokafka sends no record with neither key nor value: its send failed, the replay stopped
    there with a traceback, and every later one with it, the records after it never sent. Left,
    it is marked too: among the oldest, such records took every place of a --limit, run after run,
    and nothing behind them was ever sent (audit helper-170 #2)."""
    where, topic = uai("0350460"), settings.topic(c.EQUIPEMENT)
    async with running(EQUIPEMENT, settings) as pipeline:
        await send_empty_record(kafka.bootstrap_servers, topic)
        await send(kafka.bootstrap_servers, topic, [(where, lot(where, "L1", 1))], partition=0)  # uai-inconnu
        empty, later = await dead_letter_rows(pipeline, 2)
        assert (empty["reason"], later["reason"]) == ("json-invalide", "uai-inconnu")
        await eventually(lambda: at_least(2, record_count(kafka.bootstrap_servers, c.dlq(topic))), what="copies")
        replay = dead_letters.parse_args(["replay", "--service", "equipement", "--limit", "1"])
        await dead_letters.run(replay, settings.database_url)
        said = capsys.readouterr().err
        left = "no key and no value, nothing to send again: not replayed, and left out of later replays"
        assert f"{topic}:0@{empty['offset']}: {left}" in said, said
        await dead_letters.run(replay, settings.database_url)  # the next one, not the same again
        out = capsys.readouterr().out.splitlines()
        assert out[-1].startswith(f"{topic}:0@{later['offset']} replayed as {topic}:0@"), out
        marked = await pipeline.pool.fetch('SELECT "offset" FROM dead_letters WHERE replayed_at IS NOT NULL')
        assert [r["offset"] for r in marked] == [later["offset"]]


async def test_replay_sends_the_oldest_refusal_first_whatever_its_partition(kafka, settings, capsys):
    """Two lots refused one after the other, on two partitions, the older on the higher: the
    replay sends them in the order they were refused (README: oldest first), not by partition."""
    from services.common.messaging.partitioner import partition_for

    candidates = [uai(f"0350{n:03d}") for n in range(400, 440)]
    by_partition = {partition_for(u.encode(), range(TEST_PARTITIONS)): u for u in candidates}
    first, second = by_partition[max(by_partition)], by_partition[min(by_partition)]
    topic = settings.topic(c.EQUIPEMENT)
    async with running(EQUIPEMENT, settings) as pipeline:
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(u, college(u)) for u in (first, second)])
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 2 FROM etablissements"), what="référentiel")
        for n, where in enumerate((first, second), start=1):  # another département's collèges: hors-competence
            await send(kafka.bootstrap_servers, topic, [(where, lot(where, f"L{n}", n, source=OTHER_DEPARTEMENT))])
            await dead_letter_rows(pipeline, n)
        rows = await dead_letter_rows(pipeline, 2)
        refused = sorted(rows, key=lambda r: r["received_at"])
        assert [r["key"] for r in refused] == [first, second] and refused[0]["partition"] > refused[1]["partition"]

        async def both_copies() -> bool:
            return await record_count(kafka.bootstrap_servers, c.dlq(topic)) >= 2

        await eventually(both_copies, what="the two DLQ copies published")
        dry = await command(capsys, settings.database_url, "replay", "--service", "equipement", "--dry-run")
        origins = [f"{r['topic']}:{r['partition']}@{r['offset']}" for r in refused]
        assert [line.split()[0] for line in dry if "would be replayed" in line] == origins

        # The cause fixed, fewer than match: the oldest, and the command says more are left, which
        # a next run sends.
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(u, moved(u)) for u in (first, second)])
        await eventually(lambda: moved_in(pipeline, [first, second]), what="the fix")
        for sent, left in ((origins[0], True), (origins[1], False)):
            await dead_letters.run(dead_letters.parse_args(["replay", "--limit", "1"]), settings.database_url)
            out, err = capsys.readouterr()
            assert [line.split()[0] for line in out.splitlines() if "replayed as" in line] == [sent]
            assert ("more than 1 dead letters match" in err) is left, err


async def test_the_dlq_copies_are_read_until_found_and_a_silent_broker_fails_the_scan(kafka, settings, monkeypatch):
    """The scan of the DLQ topics ends once each wanted copy is found (a large DLQ need not be
    read to its end), and fails after SCAN_SECONDS without a record while some are left (it had
    120 s in all: a large DLQ failed as 'Kafka did not answer')."""
    from aiokafka import AIOKafkaConsumer

    source = settings.topic(c.EQUIPEMENT)
    copies = [
        (b"v%d" % n, [("dlq-reason", b"r"), ("dlq-message", b"m"), ("dlq-topic", source.encode()),
                      ("dlq-partition", b"0"), ("dlq-offset", b"%d" % n)])
        for n in range(3)
    ]  # fmt: skip
    producer = AIOKafkaProducer(**KafkaAccess.of(settings).aiokafka(), acks="all")
    await producer.start()
    try:
        for value, headers in copies:
            await producer.send_and_wait(c.dlq(source), value, key=b"k", headers=headers, partition=0)
        access = KafkaAccess.of(settings)
        found = await dead_letters._copies(access, producer, {(source, 0, 1)})
        assert [r.value for r in found.values()] == [b"v1"]

        async def silent(self, *partitions, timeout_ms=0, max_records=None):
            await asyncio.sleep(0.05)
            return {}

        monkeypatch.setattr(dead_letters, "SCAN_SECONDS", 0.5)
        monkeypatch.setattr(AIOKafkaConsumer, "getmany", silent)
        with pytest.raises(TimeoutError, match=r"no record from the DLQ topics for 0\.5 s"):
            await asyncio.wait_for(dead_letters._copies(access, producer, {(source, 0, 9)}), 30)
    finally:
        await producer.stop()


async def test_replay_leaves_a_record_of_a_compacted_topic_and_says_why(settings, capsys):
    """A compacted topic keeps each key's latest record: a refused internal profile sent back
    after newer ones would stand for its key. The replay names it, sends nothing, marks nothing;
    and such records, however many and old, never take the place of others under --limit."""
    pool = await create_pool(settings.database_url, "ressources")
    try:
        await migrate(pool, "ressources", RESSOURCES.package_dir)
        refused = 'INSERT INTO dead_letters (topic, partition, "offset", reason, message) VALUES ($1, 0, $2, $3, $4)'
        for offset in (7, 8, 9):
            await pool.execute(refused, settings.topic(PROFILS), offset, "donnees-invalides", "version")
        await pool.execute(refused, settings.topic(c.CATALOGUE), 3, "hors-competence", "catalogue")
        capsys.readouterr()  # the migrations' lines
        argv = ["replay", "--service", "ressources", "--limit", "2", "--dry-run"]
        await dead_letters.run(dead_letters.parse_args(argv), settings.database_url)
        out, said = capsys.readouterr()
        assert out.startswith(f"reading {c.dlq(settings.topic(c.CATALOGUE))} for 1 refused records"), out
        for offset in (7, 8):  # the --limit oldest named
            assert f"{settings.topic(PROFILS)}:0@{offset}: not replayed" in said, said
        assert "./dev rebuild ressources" in said
        assert f"{settings.topic(c.CATALOGUE)}:0@3: no copy in" in said, "looked for, in their place"
        assert await pool.fetchval("SELECT count(*) FROM dead_letters WHERE replayed_at IS NOT NULL") == 0
    finally:
        await pool.close()


async def test_a_dead_letter_without_a_copy_is_left_out_of_later_replays_which_reach_the_others(settings, capsys):
    """Refusals whose DLQ copies are gone (past the topic's retention, or dated anew by a rebuild)
    are the oldest: a replay finds no copy for them, says so and marks them, so that the next
    replay takes the next ones instead of the same oldest rows again, for ever."""
    pool = await create_pool(settings.database_url, "ressources")
    try:
        await migrate(pool, "ressources", RESSOURCES.package_dir)
        catalogue = settings.topic(c.CATALOGUE)
        for offset in (3, 4, 5):
            await pool.execute(
                'INSERT INTO dead_letters (topic, partition, "offset", reason, message, received_at) '
                "VALUES ($1, 0, $2, 'hors-competence', 'catalogue', now() - make_interval(mins => $3))",
                catalogue,
                offset,
                10 - offset,  # the oldest first
            )
        capsys.readouterr()  # the migrations' lines

        async def replay() -> str:
            argv = ["replay", "--service", "ressources", "--limit", "2"]
            await dead_letters.run(dead_letters.parse_args(argv), settings.database_url)
            return capsys.readouterr().err

        # The marks are written under the schema's writer lock, as a service writes (a rebuild's
        # switch holds it alone: a mark written meanwhile would stay in the former schema).
        async with pool.acquire() as switch, switch.transaction():
            await switch.execute("SELECT pg_advisory_xact_lock($1)", writer_lock("ressources"))
            marking = asyncio.create_task(replay())
            await eventually(lambda: lock_waiters(pool), what="the marks waiting for the writer lock")
            assert not marking.done()
        first = await marking
        for offset in (3, 4):
            assert f"{catalogue}:0@{offset}: no copy in {c.dlq(catalogue)}" in first, first
        assert "left out of later replays" in first
        # The next refusal's copy is not on its DLQ yet, only in the outbox (the relay behind, the
        # service stopped): missing for now, not for good, so not marked.
        async with pool.acquire() as conn:
            refused = ConsumerRecord(catalogue, 0, 5, 0, 0, None, b"{}", None, 2, 0, [])
            await enqueue(conn, [dlq.dead_letter(dlq.Rejection(refused, "hors-competence", "catalogue"))])
        second = await replay()
        assert f"{catalogue}:0@5: its copy is not in {c.dlq(catalogue)} yet" in second and "@3" not in second, second
        await pool.execute(  # set aside by the relay (Kafka refused it): not on its DLQ either
            "WITH gone AS (DELETE FROM outbox RETURNING *) INSERT INTO outbox_failed "
            "(seq, topic, key, record_value, headers, error, created_at) "
            "SELECT seq, topic, key, record_value, headers, 'trop volumineux', created_at FROM gone"
        )
        aside = await replay()
        assert f"{catalogue}:0@5: its copy is not in {c.dlq(catalogue)} yet" in aside, aside
        await pool.execute("DELETE FROM outbox_failed")  # published, then gone from the DLQ (its retention)
        third = await replay()
        assert f"{catalogue}:0@5: no copy in" in third and "@3" not in third, third
        assert "nothing to replay" in await replay()
        marked = await pool.fetch('SELECT "offset" FROM dead_letters WHERE copy_missing_at IS NOT NULL ORDER BY 1')
        assert [r["offset"] for r in marked] == [3, 4, 5]
        assert await pool.fetchval("SELECT count(*) FROM dead_letters WHERE replayed_at IS NOT NULL") == 0
        listed = await command(capsys, settings.database_url, "list", "--service", "ressources")
        assert all(" copy_missing=" in line for line in listed), listed
    finally:
        await pool.close()


async def test_copies_deleted_by_retention_under_a_replay_s_scan_leave_the_others_replayed(
    settings, capsys, monkeypatch
):
    """The scan's consumer, sought to the DLQ's start, met its records deleted by retention (a
    large DLQ scanned for minutes): aiokafka's default reset jumped to the log's end, and every
    copy not read yet was marked missing, left out of every later replay (audit helper-170 #1)."""

    pool = await create_pool(settings.database_url, "ressources")
    catalogue = settings.topic(c.CATALOGUE)
    access = KafkaAccess.of(settings)
    try:
        await migrate(pool, "ressources", RESSOURCES.package_dir)
        producer = AIOKafkaProducer(**access.aiokafka(), acks="all")
        await producer.start()
        try:
            for offset in (0, 1, 2):
                await pool.execute(
                    'INSERT INTO dead_letters (topic, partition, "offset", reason, message, received_at) '
                    "VALUES ($1, 0, $2, 'hors-competence', 'catalogue', now() - make_interval(mins => $3))",
                    catalogue,
                    offset,
                    10 - offset,
                )
                origin = [("dlq-topic", catalogue.encode()), ("dlq-partition", b"0"), ("dlq-offset", b"%d" % offset)]
                headers = [("dlq-reason", b"hors-competence"), ("dlq-message", b"catalogue"), *origin]
                await producer.send_and_wait(c.dlq(catalogue), b"{}", key=b"k", headers=headers, partition=0)
        finally:
            await producer.stop()
        capsys.readouterr()
        ends = AIOKafkaConsumer.end_offsets

        async def ends_then_retention(consumer, partitions):  # the first copy deleted as the scan starts
            found = await ends(consumer, partitions)
            await delete_before(access.aiokafka(), c.dlq(catalogue), 1)
            return found

        monkeypatch.setattr(AIOKafkaConsumer, "end_offsets", ends_then_retention)
        await dead_letters.run(dead_letters.parse_args(["replay", "--service", "ressources"]), settings.database_url)
        marked = await pool.fetch('SELECT "offset" FROM dead_letters WHERE copy_missing_at IS NOT NULL ORDER BY 1')
        replayed = await pool.fetch('SELECT "offset" FROM dead_letters WHERE replayed_at IS NOT NULL ORDER BY 1')
        assert ([r["offset"] for r in marked], [r["offset"] for r in replayed]) == ([0], [1, 2])
    finally:
        await pool.close()


async def test_a_refusal_committed_while_a_replay_reads_is_not_marked_missing(settings, capsys, monkeypatch):
    """A service commits a refusal (its dead letter, its DLQ copy in the outbox) after the replay
    has read the outbox and before it reads the dead letters: that one looked sent, the DLQ scan
    could not find its copy (still in the outbox), and it was marked missing, left out of every
    later replay. Both read in one snapshot, it is not seen, and the next replay finds it waiting."""
    pool = await create_pool(settings.database_url, "ressources")
    try:
        await migrate(pool, "ressources", RESSOURCES.package_dir)
        catalogue = settings.topic(c.CATALOGUE)
        capsys.readouterr()  # the migrations' lines
        read_outbox = dead_letters._unsent_copies

        async def then_a_refusal(conn, schemas):
            unsent = await read_outbox(conn, schemas)
            async with pool.acquire() as service, service.transaction():
                await service.execute(
                    'INSERT INTO dead_letters (topic, partition, "offset", reason, message, received_at) '
                    "VALUES ($1, 0, 7, 'hors-competence', 'catalogue', now())",
                    catalogue,
                )
                refused = ConsumerRecord(catalogue, 0, 7, 0, 0, None, b"{}", None, 2, 0, [])
                await enqueue(service, [dlq.dead_letter(dlq.Rejection(refused, "hors-competence", "catalogue"))])
            return unsent

        monkeypatch.setattr(dead_letters, "_unsent_copies", then_a_refusal)
        argv = ["replay", "--service", "ressources"]
        await dead_letters.run(dead_letters.parse_args(argv), settings.database_url)
        assert "nothing to replay" in capsys.readouterr().err
        assert await pool.fetchval('SELECT copy_missing_at FROM dead_letters WHERE "offset" = 7') is None
        monkeypatch.setattr(dead_letters, "_unsent_copies", read_outbox)
        await dead_letters.run(dead_letters.parse_args(argv), settings.database_url)
        assert f"{catalogue}:0@7: its copy is not in {c.dlq(catalogue)} yet" in capsys.readouterr().err
    finally:
        await pool.close()


async def test_the_tools_read_db_schema_for_the_one_service_named_and_refuse_a_named_schema_absent(
    database_url, capsys, monkeypatch
):
    """A service run with DB_SCHEMA keeps its dead letters and set-aside records there: the
    tools read that schema for the one `--service` given (they looked for the service's default
    schema, said it was missing and exited 0). A schema the operator named and the database
    lacks is an error (exit 1); by default, each service's absent schema is said and left out."""
    pool = await create_pool(database_url, "equipement_bis")
    try:
        await migrate(pool, "equipement_bis", EQUIPEMENT.package_dir)
        await pool.execute(
            'INSERT INTO dead_letters (topic, partition, "offset", reason, message) '
            "VALUES ('equipement.declarations.v1', 0, 42, 'json-invalide', 'pas du JSON')"
        )
    finally:
        await pool.close()
    capsys.readouterr()  # the migrations' lines
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("DB_SCHEMA", "equipement_bis")
    # As `DB_SCHEMA=equipement_bis ./dev dead-letters list --service equipement` runs (its own loop).
    assert await asyncio.to_thread(dead_letters.main, ["list", "--service", "equipement"]) == 0
    out = capsys.readouterr().out
    assert "equipement_bis equipement.declarations.v1:0@42 json-invalide" in out, out
    assert await asyncio.to_thread(outbox_failed.main, ["list", "--service", "equipement"]) == 0
    monkeypatch.delenv("DB_SCHEMA")
    with pytest.raises(db.SchemaAbsent, match="no such service schema in this database: equipement"):
        await dead_letters.run(dead_letters.parse_args(["list", "--service", "equipement"]), database_url)
    with pytest.raises(db.SchemaAbsent, match="formation"):
        await outbox_failed.run("list", ["formation"], database_url, None, named=True)
    assert await dead_letters.run(dead_letters.parse_args(["list"]), database_url) == 0
    said = capsys.readouterr().err
    assert all(f"{s}: no such service schema in this database" in said for s in dead_letters.SERVICES), said


@pytest.mark.parametrize("tool", [dead_letters.main, outbox_failed.main])
def test_db_schema_without_one_service_is_refused_as_ambiguous(tool, monkeypatch, capsys):
    monkeypatch.setenv("DB_SCHEMA", "equipement_bis")
    with pytest.raises(SystemExit) as ended:
        tool(["list"])
    assert ended.value.code == 2
    assert "DB_SCHEMA names one service's schema: give that service with one --service" in capsys.readouterr().err


async def dlq_copies(bootstrap: str, topic: str, n: int) -> None:
    async def published() -> bool:
        return await record_count(bootstrap, c.dlq(topic)) >= n

    await eventually(published, what=f"{n} DLQ copies published")


async def test_a_replay_whose_session_postgresql_ended_during_the_scan_sends_nothing(
    kafka, settings, capsys, monkeypatch
):
    """The DLQ scan may take minutes, the replay's session idle meanwhile: PostgreSQL ending it
    (a restart) took the replay's lock with it, another replay could send the same records, and
    this one sent them then failed to mark them (a traceback; the next run sent them again). It
    finds out before sending: one line, exit 1, nothing sent; the next run replays them once."""
    where, topic = uai("0350460"), settings.topic(c.EQUIPEMENT)
    async with running(EQUIPEMENT, settings) as pipeline:
        await send(kafka.bootstrap_servers, topic, [(where, lot(where, "L1", 1))])  # uai-inconnu
        await dead_letter_rows(pipeline, 1)
        await dlq_copies(kafka.bootstrap_servers, topic, 1)
        sessions: list[asyncpg.Connection] = []
        connect, copies = dead_letters.connect_for_tool, dead_letters._copies

        async def recorded(*args, **kwargs):
            sessions.append(conn := await connect(*args, **kwargs))
            return conn

        async def then_ended(*args):
            found = await copies(*args)
            ending = await asyncpg.connect(settings.database_url)
            try:  # its backend gone when this returns; the tool's client not told yet
                await ending.execute("SELECT pg_terminate_backend($1, 10000)", sessions[0].get_server_pid())
            finally:
                await ending.close()
            return found

        monkeypatch.setattr(dead_letters, "connect_for_tool", recorded)
        monkeypatch.setattr(dead_letters, "_copies", then_ended)
        monkeypatch.setenv("DATABASE_URL", settings.database_url)
        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", settings.kafka_bootstrap_servers)
        monkeypatch.setenv("TOPIC_PREFIX", settings.topic_prefix)
        assert await asyncio.to_thread(dead_letters.main, ["replay", "--service", "equipement"]) == 1
        err = capsys.readouterr().err
        assert "./dev dead-letters: its session with PostgreSQL ended (" in err and "Traceback" not in err, err
        assert await record_count(kafka.bootstrap_servers, topic) == 1, "nothing sent"
        assert await pipeline.pool.fetchval("SELECT replayed_at FROM dead_letters") is None

        monkeypatch.setattr(dead_letters, "_copies", copies)
        out = await command(capsys, settings.database_url, "replay", "--service", "equipement")
        assert len(out) == 2 and out[-1].startswith(f"{topic}:"), out  # the scan's line, then the one replayed
        assert await record_count(kafka.bootstrap_servers, topic) == 2


async def test_a_replay_whose_send_fails_midway_marks_every_record_the_broker_took(kafka, settings, monkeypatch):
    """Three records replayed, the second's send failing: the third, sent before that answer
    came, was delivered but not marked, and the next replay sent it again. Every answer is
    awaited: the first and third marked, the next replay sends the second alone."""
    from aiokafka.errors import KafkaTimeoutError

    where, topic = uai("0350461"), settings.topic(c.EQUIPEMENT)

    class SecondFails(AIOKafkaProducer):
        sent = 0

        async def send(self, *args, **kwargs):
            self.sent += 1
            if self.sent == 2:
                failed = asyncio.get_running_loop().create_future()
                failed.set_exception(KafkaTimeoutError())
                return failed
            return await super().send(*args, **kwargs)

    replay = dead_letters.parse_args(["replay", "--service", "equipement"])
    async with running(EQUIPEMENT, settings) as pipeline, TopicReader(kafka.bootstrap_servers, topic) as partner:
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(where, college(where))])
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM etablissements"), what="référentiel")
        lots = [(where, lot(where, f"L{n}", n, source=OTHER_DEPARTEMENT)) for n in (1, 2, 3)]
        await send(kafka.bootstrap_servers, topic, lots)  # hors-compétence
        rows = await dead_letter_rows(pipeline, 3)
        await dlq_copies(kafka.bootstrap_servers, topic, 3)
        # The cause fixed (the collège in that département): the replayed lots are accepted, not
        # refused again (new dead letters, which a later replay would send too).
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(where, moved(where))])
        await eventually(lambda: moved_in(pipeline, [where]), what="the fix")
        monkeypatch.setattr(dead_letters, "AIOKafkaProducer", SecondFails)
        with pytest.raises(KafkaTimeoutError):
            await dead_letters.run(replay, settings.database_url)
        marked = await pipeline.pool.fetch('SELECT "offset" FROM dead_letters WHERE replayed_at IS NOT NULL')
        assert sorted(r["offset"] for r in marked) == [rows[0]["offset"], rows[2]["offset"]]

        monkeypatch.setattr(dead_letters, "AIOKafkaProducer", AIOKafkaProducer)
        await dead_letters.run(replay, settings.database_url)

        def origins(records: list[ConsumerRecord]) -> list[bytes]:
            return sorted(v for r in records for k, v in r.headers if k == "dlq-replay")

        replayed = await partner.wait_for(lambda rs: len(origins(rs)) >= 3, what="three replayed copies")
        assert len(set(origins(replayed))) == 3 == len(origins(replayed)), "each replayed once"


async def test_show_writes_a_partner_s_escape_sequences_as_escapes(settings, capsys):
    """A refusal's message may name a partner's own member names (a NUL under a key of its
    choosing), its id or source any text: `show` and `list` print them escaped, a terminal
    sequence or a bidi override not acted on (security audit s69 F3)."""
    pool = await create_pool(settings.database_url, "ressources")
    try:
        await migrate(pool, "ressources", RESSOURCES.package_dir)
        catalogue = settings.topic(c.CATALOGUE)
        envelope = {"specversion": "1.0", "id": "e1", "source": "/gar", "time": "2024-01-01T00:00:00Z"}
        data = {"resource_id": "r1", "\x1b]0;pwned\x07\x1b[2K\u202e": "\x00"}
        raw = json.dumps({**envelope, "type": c.RESSOURCE_RETIREE, "data": data}).encode()
        try:
            c.parse_event(raw, c.CATALOGUE)
        except c.ContractError as e:
            refused = dlq.Rejection(
                ConsumerRecord(catalogue, 0, 7, 0, 0, None, raw, None, 0, len(raw), []), e.code, e.message
            )
        async with pool.acquire() as conn, conn.transaction():
            await dlq.reject(conn, [refused])
        await pool.execute("UPDATE dead_letters SET id = $1", "\x1b[31mid\u202e")
        shown = "\n".join(
            await command(
                capsys,
                settings.database_url,
                "show",
                "--service",
                "ressources",
                "--topic",
                catalogue,
                "--partition",
                "0",
                "--offset",
                "7",
            )
        )
        listed = "\n".join(await command(capsys, settings.database_url, "list", "--service", "ressources"))
        for out in (shown, listed):
            assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out, out
        assert "\\u001b]0;pwned\\u0007" in shown and "\\u202e" in listed
    finally:
        await pool.close()
