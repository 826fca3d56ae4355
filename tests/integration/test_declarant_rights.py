"""Who may declare what, against the real broker and database: each declarant type accepted
inside its competence and refused outside it, with the DLQ reason."""

import json

import contracts as c
from helpers import TopicReader, at, event, eventually, record_count, running, send, uai
from services.equipement.app import SPEC as EQUIPEMENT
from services.formation.app import SPEC as FORMATION
from services.ressources.app import SPEC as RESSOURCES

ECOLE, COLLEGE, LYCEE, EREA, AUTRE = uai("0350301"), uai("0350302"), uai("0350303"), uai("0350304"), uai("0350305")
UNKNOWN = uai("0350399")
KINDS = {ECOLE: "ecole", COLLEGE: "college", LYCEE: "lycee", EREA: "erea", AUTRE: "autre"}


def referentiel() -> list:
    return [
        (
            u,
            event(
                c.ETABLISSEMENT,
                "/ministere",
                {
                    "uai": u,
                    "nom": u,
                    "type": t,
                    "statut": "public",
                    "code_commune": "35238",
                    "code_departement": "035",
                    "code_academie": "14",
                    "code_region": "53",
                    "ouvert": True,
                },
                time_=at(0),
            ),
        )
        for u, t in KINDS.items()
    ]


async def _outcomes(kafka, settings, spec, topic, cases) -> tuple[dict, set]:
    """Sends (label, record) cases; returns label -> DLQ reason for the refused ones and
    the labels accepted (in the inbox)."""
    async with (
        running(spec, settings) as pipeline,
        TopicReader(kafka.bootstrap_servers, settings.topic(c.dlq(topic))) as dlq,
    ):
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), referentiel())
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 5 FROM etablissements"), what="référentiel")
        await send(kafka.bootstrap_servers, settings.topic(topic), [(label, rec) for label, rec in cases])
        expected_refused = sum(1 for label, _ in cases if label.startswith("refuse"))
        records = await dlq.wait_for(lambda rs: len(rs) >= expected_refused, what="the refusals")
        accepted_ids = {rec["id"] for _, rec in cases if not _.startswith("refuse")}
        await eventually(
            lambda: pipeline.pool.fetchval(
                "SELECT count(*) = $1 FROM inbox WHERE id = ANY($2::text[])", len(accepted_ids), list(accepted_ids)
            ),
            what="the accepted ones",
        )
    refused = {r.key.decode(): dict(r.headers)["dlq-reason"].decode() for r in records}
    return refused, {label for label, rec in cases if rec["id"] in accepted_ids}


def lot(source: str, where: str) -> dict:
    return event(
        c.LOT,
        source,
        {"uai": where, "lot_id": "L", "kind": "TNI", "quantity": 1, "os": None, "browsers": []},
        time_=at(1),
    )


async def test_collectivites_equip_their_own_etablissements_only(kafka, settings):
    cases = [
        ("ok-commune", lot("/collectivites/communes/35238", ECOLE)),
        ("ok-departement", lot("/collectivites/departements/035", COLLEGE)),
        ("ok-region-lycee", lot("/collectivites/regions/53", LYCEE)),
        ("ok-region-erea", lot("/collectivites/regions/53", EREA)),
        ("refuse-commune-college", lot("/collectivites/communes/35238", COLLEGE)),
        ("refuse-autre-commune", lot("/collectivites/communes/35001", ECOLE)),
        ("refuse-autre-departement", lot("/collectivites/departements/022", COLLEGE)),
        ("refuse-region-college", lot("/collectivites/regions/53", COLLEGE)),
        ("refuse-autre-region", lot("/collectivites/regions/52", LYCEE)),
        ("refuse-type-autre", lot("/collectivites/regions/53", AUTRE)),
        ("refuse-rectorat", lot("/rectorats/14", COLLEGE)),
        ("refuse-inconnu", lot("/collectivites/departements/035", UNKNOWN)),
    ]
    refused, accepted = await _outcomes(kafka, settings, EQUIPEMENT, c.EQUIPEMENT, cases)
    assert accepted == {"ok-commune", "ok-departement", "ok-region-lycee", "ok-region-erea"}
    assert refused == {
        label: ("uai-inconnu" if label == "refuse-inconnu" else "hors-competence")
        for label, _ in cases
        if label.startswith("refuse")
    }


async def test_rectorats_declare_affectations_in_their_academie(kafka, settings):
    def affectation(source: str, where: str) -> dict:
        return event(
            c.AFFECTATION,
            source,
            {"teacher_id": "ens-droits-01", "uai": where, "start": "2026-09-01", "end": None},
            time_=at(1),
        )

    training = event(
        c.FORMATION_SUIVIE,
        "/rectorats/17",
        {
            "teacher_id": "ens-droits-01",
            "module_id": "m",
            "title": "t",
            "dispositif": "eafc",
            "completed_on": "2026-10-01",
            "competences": [],
            "tools": [],
        },
        time_=at(2),
    )
    cases = [
        ("ok-rectorat", affectation("/rectorats/14", COLLEGE)),
        ("ok-formation-autre-rectorat", training),
        ("refuse-autre-academie", affectation("/rectorats/17", COLLEGE)),
        ("refuse-collectivite", affectation("/collectivites/departements/035", COLLEGE)),
        ("refuse-ministere", affectation("/ministere", COLLEGE)),
        ("refuse-inconnu", affectation("/rectorats/14", UNKNOWN)),
    ]
    refused, accepted = await _outcomes(kafka, settings, FORMATION, c.FORMATION, cases)
    assert accepted == {"ok-rectorat", "ok-formation-autre-rectorat"}
    assert refused == {
        "refuse-autre-academie": "hors-competence",
        "refuse-collectivite": "hors-competence",
        "refuse-ministere": "hors-competence",
        "refuse-inconnu": "uai-inconnu",
    }


async def test_only_the_ministere_and_the_gar_write_the_catalogue(kafka, settings):
    def retrait(source: str) -> dict:
        return event(c.RESSOURCE_RETIREE, source, {"resource_id": "ark:/1/droits"}, time_=at(1))

    def abonnement(where: str) -> dict:
        return event(
            c.ABONNEMENT,
            "/gar",
            {"resource_id": "ark:/1/droits", "uai": where, "start": "2026-09-01", "end": None},
            time_=at(1),
        )

    cases = [
        ("ok-ministere", retrait("/ministere")),
        ("ok-gar", abonnement(COLLEGE)),
        ("refuse-rectorat", retrait("/rectorats/14")),
        ("refuse-region", retrait("/collectivites/regions/53")),
        ("refuse-plateforme", retrait("/plateforme/equipement")),
        ("refuse-inconnu", abonnement(UNKNOWN)),
    ]
    refused, accepted = await _outcomes(kafka, settings, RESSOURCES, c.CATALOGUE, cases)
    assert accepted == {"ok-ministere", "ok-gar"}
    assert refused == {
        "refuse-rectorat": "hors-competence",
        "refuse-region": "hors-competence",
        "refuse-plateforme": "hors-competence",
        "refuse-inconnu": "uai-inconnu",
    }


async def test_only_the_ministere_writes_the_referentiel(kafka, settings):
    forged = event(
        c.ETABLISSEMENT,
        "/gar",
        {
            "uai": ECOLE,
            "nom": "x",
            "type": "ecole",
            "statut": "public",
            "code_commune": "35238",
            "code_departement": "035",
            "code_academie": "14",
            "code_region": "53",
            "ouvert": False,
        },
        time_=at(9),
    )
    async with (
        running(RESSOURCES, settings) as pipeline,
        TopicReader(kafka.bootstrap_servers, settings.topic(c.dlq(c.REFERENTIEL))) as dlq,
    ):
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [*referentiel(), (ECOLE, forged)])
        [record] = await dlq.wait_for(lambda rs: len(rs) >= 1, what="the forged record refused")
        assert dict(record.headers)["dlq-reason"] == b"hors-competence"
        assert json.loads(record.value)["id"] == forged["id"]
        assert await pipeline.pool.fetchval("SELECT ouvert FROM etablissements WHERE uai = $1", ECOLE) is True


async def test_an_event_applied_then_received_again_once_its_etablissement_moved_has_no_second_effect(kafka, settings):
    """An event received again (a partner sending it again, a batch taken again after its
    commit's answer was lost) is a duplicate, even when the rights would refuse it now: the
    école moved to another commune since it was applied. Judged again, it was dead-lettered
    (hors-competence), though applied: listed among the refusals, and a DLQ copy sent."""
    bootstrap = kafka.bootstrap_servers
    ecole = [(u, e) for u, e in referentiel() if u == ECOLE]
    moved = json.loads(json.dumps(ecole[0][1]))
    moved |= {"id": moved["id"] + "-fusion", "time": at(5).isoformat()}
    moved["data"]["code_commune"] = "35001"
    declared = lot("/collectivites/communes/35238", ECOLE)
    after = lot("/collectivites/communes/35001", ECOLE) | {"time": at(6).isoformat()}
    after["data"] = after["data"] | {"quantity": 7}
    async with running(EQUIPEMENT, settings) as pipeline:
        await send(bootstrap, settings.topic(c.REFERENTIEL), ecole)
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM etablissements"), what="the école")
        await send(bootstrap, settings.topic(c.EQUIPEMENT), [(ECOLE, declared)])
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM lots"), what="the lot applied")
        await send(bootstrap, settings.topic(c.REFERENTIEL), [(ECOLE, moved)])
        await eventually(
            lambda: pipeline.pool.fetchval("SELECT code_commune = '35001' FROM etablissements"), what="the move"
        )
        # Then the new commune's lot, on the same partition: handled once the event sent again is.
        await send(bootstrap, settings.topic(c.EQUIPEMENT), [(ECOLE, declared), (ECOLE, after)])
        await eventually(
            lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM inbox WHERE id = $1", after["id"]),
            what="the new commune's lot",
        )
        assert await pipeline.pool.fetchval("SELECT count(*) FROM dead_letters") == 0
        assert await pipeline.pool.fetchval("SELECT count(*) FROM inbox WHERE id = $1", declared["id"]) == 1
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 0 FROM outbox"), what="the outbox published")
        assert await record_count(bootstrap, settings.topic(c.dlq(c.EQUIPEMENT))) == 0


async def test_an_event_refused_then_sent_again_in_the_same_batch_is_judged_again(kafka, settings):
    """A refused event leaves no inbox row, so the same (source, id) sent again is judged again:
    also when both come in one batch. Corrected (the lot of the commune's école, not of the
    département's collège), it is applied; the same refusal twice is dead-lettered twice. The
    second was taken for a duplicate of the first, and lost (neither applied nor dead-lettered)."""
    bootstrap = kafka.bootstrap_servers
    commune = "/collectivites/communes/35238"
    refused = lot(commune, COLLEGE)
    corrected = refused | {"data": refused["data"] | {"uai": ECOLE}}
    twice = lot(commune, LYCEE)
    # Sent before the service starts, on one partition each: each pair in one fetch, so one batch.
    await send(bootstrap, settings.topic(c.REFERENTIEL), referentiel())
    await send(bootstrap, settings.topic(c.EQUIPEMENT), [("a", refused), ("a", corrected), ("b", twice), ("b", twice)])
    async with (
        running(EQUIPEMENT, settings) as pipeline,
        TopicReader(bootstrap, settings.topic(c.dlq(c.EQUIPEMENT))) as dlq,
    ):
        await eventually(
            lambda: pipeline.pool.fetchval("SELECT uai FROM lots WHERE uai = $1", ECOLE), what="the corrected lot"
        )
        records = await dlq.wait_for(lambda rs: len(rs) >= 3, what="the three refusals")
        assert sorted((r.key, dict(r.headers)["dlq-reason"]) for r in records) == [
            (b"a", b"hors-competence"),
            (b"b", b"hors-competence"),
            (b"b", b"hors-competence"),
        ]
        assert (
            await pipeline.pool.fetchval(
                "SELECT count(*) FROM inbox WHERE id = ANY($1::text[])", [refused["id"], twice["id"]]
            )
            == 1
        )
        assert await pipeline.pool.fetchval("SELECT count(*) FROM dead_letters") == 3


async def test_an_event_sent_again_corrected_in_a_batch_keeps_its_arrival_order(kafka, settings):
    """Of one lot's events at the same `time`, the later arrival wins (CONTRACTS.md), also when
    the earlier is the correction of a refused event in the same batch, judged after the others:
    it was applied after them, and the lot kept its quantity, not the last one's."""
    bootstrap = kafka.bootstrap_servers
    commune = "/collectivites/communes/35238"
    refused = lot(commune, COLLEGE)
    corrected = refused | {"data": refused["data"] | {"uai": ECOLE, "quantity": 2}}
    last = lot(commune, ECOLE) | {"data": corrected["data"] | {"quantity": 3}}
    await send(bootstrap, settings.topic(c.REFERENTIEL), referentiel())
    await send(bootstrap, settings.topic(c.EQUIPEMENT), [("a", refused), ("a", corrected), ("a", last)])
    async with running(EQUIPEMENT, settings) as pipeline:
        await eventually(
            lambda: pipeline.pool.fetchval(
                "SELECT count(*) = 2 FROM inbox WHERE id = ANY($1::text[])", [corrected["id"], last["id"]]
            ),
            what="both lots of the école applied",
        )
        assert await pipeline.pool.fetchval("SELECT quantity FROM lots WHERE uai = $1", ECOLE) == 3
