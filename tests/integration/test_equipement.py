"""equipement alone, against the real Kafka and PostgreSQL."""

import json

import contracts as c
from contracts.internal import PROFIL_LOT, PROFILS
from helpers import TopicReader, at, college, event, eventually, record_count, running, send, send_in_transactions
from helpers import uai as valid_uai
from services.equipement.app import SPEC

DEPARTEMENT = "/collectivites/departements/035"


def lot(uai: str, lot_id: str, quantity: int, minute: int, **kw) -> dict:
    data = {
        "uai": uai,
        "lot_id": lot_id,
        "kind": "tablette",
        "quantity": quantity,
        "os": {"name": "iPadOS", "version": "17.1"},
        "browsers": [{"name": "Safari", "version": "17"}],
    }
    return event(c.LOT, kw.pop("source", DEPARTEMENT), data, subject=uai, time_=at(minute), **kw)


async def referentiel_loaded(pipeline, count: int) -> None:
    async def check():
        return await pipeline.pool.fetchval("SELECT count(*) FROM etablissements") >= count

    await eventually(check, what="the référentiel to be stored")


async def test_lot_is_stored_and_its_profile_published(kafka, settings):
    uai = valid_uai("0350001")
    async with (
        running(SPEC, settings) as pipeline,
        TopicReader(kafka.bootstrap_servers, settings.topic(PROFILS)) as profils,
    ):
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)
        await send(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT), [(uai, lot(uai, "L1", 30, 1))])

        records = await profils.wait_for(lambda rs: len(rs) >= 1, what="the lot's record")
        published = json.loads(records[0].value)
        assert records[0].key == f"{uai}/L1".encode(), "one record per lot, compacted by lot"
        assert published["type"] == PROFIL_LOT and published["source"] == "/plateforme/equipement"
        assert (published["data"]["version"], published["data"]["lot_id"], published["data"]["quantity"]) == (
            1,
            "L1",
            30,
        )
        row = await pipeline.pool.fetchrow("SELECT quantity, os FROM lots WHERE uai = $1 AND lot_id = 'L1'", uai)
        assert row["quantity"] == 30 and json.loads(row["os"])["name"] == "iPadOS"


async def test_duplicate_has_no_effect_and_older_event_is_stale(kafka, settings):
    uai = valid_uai("0350002")
    first = lot(uai, "L1", 30, 10)
    async with (
        running(SPEC, settings) as pipeline,
        TopicReader(kafka.bootstrap_servers, settings.topic(PROFILS)) as profils,
    ):
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)
        older = lot(uai, "L1", 5, 5)  # same lot, earlier time: stale
        marker = lot(uai, "L2", 3, 11)  # a later, different lot: once it shows, the others were handled
        await send(
            kafka.bootstrap_servers,
            settings.topic(c.EQUIPEMENT),
            [(uai, first), (uai, first), (uai, older), (uai, marker)],
        )

        await profils.wait_for(
            lambda rs: {r.key for r in rs} == {f"{uai}/L1".encode(), f"{uai}/L2".encode()}, what="both lots' records"
        )
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 0 FROM outbox"), what="the outbox drained")
        # One publication per real change: the duplicate and the stale lot changed nothing.
        published = {
            r["entity"]: (r["version"], json.loads(r["content"])["quantity"])
            for r in await pipeline.pool.fetch("SELECT entity, version, content FROM publies")
        }
        assert published == {"L1": (1, 30), "L2": (1, 3)}
        # The topic read to its end (a record published twice would be there, not yet read).
        on_topic = await profils.wait_for(lambda rs: len(rs) >= 2, what="the profiles published")
        assert await record_count(kafka.bootstrap_servers, settings.topic(PROFILS)) == len(on_topic)
        assert sorted(
            (json.loads(r.value)["data"]["lot_id"], json.loads(r.value)["data"]["version"]) for r in on_topic
        ) == [("L1", 1), ("L2", 1)]
        assert await pipeline.pool.fetchval("SELECT quantity FROM lots WHERE uai = $1 AND lot_id = 'L1'", uai) == 30
        outcomes = dict(await pipeline.pool.fetch("SELECT id, outcome FROM inbox WHERE type = $1", c.LOT))
        assert outcomes == {first["id"]: "applied", older["id"]: "stale", marker["id"]: "applied"}


async def test_bad_records_go_to_the_dlq_and_the_next_good_one_is_processed(kafka, settings):
    uai = valid_uai("0350003")
    bad_letter = lot(uai, "L1", 3, 1)
    bad_letter["data"]["uai"] = uai[:-1] + ("A" if uai[-1] != "A" else "B")
    wrong_declarant = lot(uai, "L2", 3, 2, source="/collectivites/regions/53")
    good = lot(uai, "L3", 7, 3)
    async with (
        running(SPEC, settings) as pipeline,
        TopicReader(kafka.bootstrap_servers, settings.topic(c.dlq(c.EQUIPEMENT))) as dlq,
        TopicReader(kafka.bootstrap_servers, settings.topic(PROFILS)) as profils,
    ):
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)
        raw_garbage = b"\xff not json"
        await send(
            kafka.bootstrap_servers,
            settings.topic(c.EQUIPEMENT),
            [(uai, raw_garbage), (uai, bad_letter), (uai, wrong_declarant), (uai, good)],
        )

        records = await dlq.wait_for(lambda rs: len(rs) >= 3, what="three dead letters")
        reasons = [dict((k, v.decode()) for k, v in r.headers)["dlq-reason"] for r in records]
        assert reasons == ["json-invalide", "uai-invalide", "hors-competence"]
        assert records[0].value == raw_garbage  # bytes unchanged
        headers = dict((k, v.decode()) for k, v in records[0].headers)
        assert headers["dlq-topic"] == settings.topic(c.EQUIPEMENT)
        assert headers["dlq-message"] and headers["dlq-offset"].isdigit() and headers["dlq-partition"].isdigit()

        await profils.wait_for(
            lambda rs: any(json.loads(r.value)["data"]["lot_id"] == "L3" for r in rs), what="the good lot's record"
        )


async def test_a_record_postgresql_refuses_is_dead_lettered_alone_and_the_rest_goes_on(kafka, settings):
    """Refused by the database (a NUL character) or by a contract bound: neither blocks its partition."""
    uai = valid_uai("0350004")
    huge = lot(uai, "L1", 3_000_000_000, 1)  # beyond the contract's 1,000,000 (and an int column)
    nul = lot(uai, "L2", 1, 2)
    nul["data"]["lot_id"] = "L2\u0000"
    before, after = lot(uai, "L0", 5, 0), lot(uai, "L3", 7, 3)
    async with (
        running(SPEC, settings) as pipeline,
        TopicReader(kafka.bootstrap_servers, settings.topic(c.dlq(c.EQUIPEMENT))) as dlq,
    ):
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)
        await send(
            kafka.bootstrap_servers,
            settings.topic(c.EQUIPEMENT),
            [(uai, before), (uai, huge), (uai, nul), (uai, after)],
        )
        records = await dlq.wait_for(lambda rs: len(rs) >= 2, what="two dead letters")
        assert [dict(r.headers)["dlq-reason"] for r in records] == [b"donnees-invalides"] * 2
        assert [json.loads(r.value)["id"] for r in records] == [huge["id"], nul["id"]]
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 2 FROM lots"), what="the good lots")
        assert {r["lot_id"] for r in await pipeline.pool.fetch("SELECT lot_id FROM lots")} == {"L0", "L3"}


async def test_the_authenticated_principal_is_kept_with_the_inbox_row(kafka, settings):
    """The ingestion service names who was authenticated in the `auth-principal` header; the
    service keeps it with the event, so who sent what is auditable. Only on the declaration
    topics, which the ingestion service alone writes: elsewhere (the référentiel, written by the
    ministère's own principal) nobody vouches for it. Without the header nothing is recorded; a
    header that is not text, or holds control characters, neither refuses the record nor is kept
    as such."""
    uai = valid_uai("0350003")
    lots = {name: lot(uai, f"L{n}", n, n) for n, name in enumerate(("signed", "without", "binary", "nul"), 1)}
    async with running(SPEC, settings) as pipeline:
        vouched = [(c.PRINCIPAL_HEADER, b"client-035")]
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))], vouched)
        await referentiel_loaded(pipeline, 1)
        topic = settings.topic(c.EQUIPEMENT)
        await send(kafka.bootstrap_servers, topic, [(uai, lots["signed"])], vouched)
        await send(kafka.bootstrap_servers, topic, [(uai, lots["without"])])
        await send(kafka.bootstrap_servers, topic, [(uai, lots["binary"])], [(c.PRINCIPAL_HEADER, b"\xff\xfe")])
        await send(kafka.bootstrap_servers, topic, [(uai, lots["nul"])], [(c.PRINCIPAL_HEADER, b"client\x00-035\n")])

        async def recorded():
            rows = await pipeline.pool.fetch("SELECT id, principal FROM inbox WHERE type = $1", c.LOT)
            return {r["id"]: r["principal"] for r in rows} if len(rows) == len(lots) else None

        principals = await eventually(recorded, what="the lots in the inbox")
        assert principals == {
            lots["signed"]["id"]: "client-035",
            lots["without"]["id"]: None,
            lots["binary"]["id"]: None,
            lots["nul"]["id"]: "client-035",
        }
        referentiel_row = await pipeline.pool.fetchval("SELECT principal FROM inbox WHERE type = $1", c.ETABLISSEMENT)
        assert referentiel_row is None, "the référentiel is not written by the ingestion service"


async def test_what_a_transactional_producer_aborted_is_never_applied(kafka, settings):
    """A partner's transactional producer (Kafka Streams, Connect's exactly-once delivery): what it
    aborts was never written, in Kafka's own terms. The service reads committed records only: the
    aborted lot is neither applied nor dead-lettered, the committed one after it is applied."""
    uai = valid_uai("0350004")
    aborted, committed = lot(uai, "L1", 30, 1), lot(uai, "L2", 12, 2)
    async with (
        running(SPEC, settings) as pipeline,
        TopicReader(kafka.bootstrap_servers, settings.topic(PROFILS)) as profils,
    ):
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)
        await send_in_transactions(
            kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT), [(uai, aborted, False), (uai, committed, True)]
        )

        await profils.wait_for(
            lambda rs: any(json.loads(r.value)["data"]["lot_id"] == "L2" for r in rs), what="the committed lot's record"
        )
        lots = await pipeline.pool.fetch("SELECT lot_id FROM lots WHERE uai = $1", uai)
        assert [r["lot_id"] for r in lots] == ["L2"]
        assert not await pipeline.pool.fetchval("SELECT count(*) FROM inbox WHERE id = $1", aborted["id"])
        assert await record_count(kafka.bootstrap_servers, settings.topic(c.dlq(c.EQUIPEMENT))) == 0
