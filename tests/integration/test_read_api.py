"""The dashboards' read API, served for real (uvicorn on a free port) by ressources, fed
through Kafka: every endpoint, filters, pagination, the SSE stream, bad parameters and errors
answered in French, the root page, the documentation served without a CDN."""

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from urllib.parse import urlsplit

import asyncpg
import jsonschema
import pytest

import contracts as c
from contracts.internal import COUVERTURES, PROFILS, CouvertureFormation
from helpers import (
    Said,
    TopicReader,
    at,
    couverture,
    event,
    eventually,
    profil_connectivite,
    profil_lot,
    ressource,
    send,
    serving,
    uai,
)
from services.common.pipeline import writer_lock
from services.ressources import queries
from services.ressources.api import MIN_TEACHERS_DETAILED, Reads, _pool, formation_shown
from services.ressources.app import SPEC
from services.ressources.handlers import request_every_pair
from services.ressources.rules import Seuils
from services.ressources.settings import RessourcesSettings
from services.ressources.store import RessourcesStore

RID = "ark:/67375/api-atlas"


RENNES = [uai(f"03503{n:02d}") for n in range(4)]  # académie 14, département 035
NANTES = uai("0440001")  # académie 17, département 044


def etab(code: str, dep: str, aca: str, reg: str, type_: str = "college", nom: str = "", minute: int = 0) -> dict:
    return event(
        c.ETABLISSEMENT,
        "/ministere",
        {
            "uai": code,
            "nom": nom or f"Collège {code}",
            "type": type_,
            "statut": "public",
            "code_commune": dep[1:] + "238",
            "code_departement": dep,
            "code_academie": aca,
            "code_region": reg,
            "ouvert": True,
        },
        time_=at(minute),
    )


def profil(code: str, ipados: str) -> list[tuple[str, dict]]:
    return [
        profil_lot(code, 1, quantity=10, os={"name": "iPadOS", "version": ipados}),
        profil_connectivite(code, 1, 8.0, True),
    ]


def lot(code: str, ipados: str, lot_id: str = "L1", quantity: int = 10) -> dict:
    """A `lot` payload as the simulations take it: `quantity` iPadOS tablets."""
    return {
        "uai": code,
        "lot_id": lot_id,
        "kind": "tablette",
        "quantity": quantity,
        "os": {"name": "iPadOS", "version": ipados},
    }


def formation(code: str) -> list[tuple[str, dict]]:
    return couverture(code, 1, 10, {"3.4": [5, 2, 1, 0, 0, 0, 0, 0]})


@asynccontextmanager
async def serve_api(settings):
    """ressources as `python -m services.ressources` serves it, in this process: (client, app)."""
    async with serving(SPEC, settings) as served:
        yield served


@pytest.fixture
async def api(kafka, settings):
    async with serve_api(settings) as served:
        yield served


async def feed(kafka, settings, pool):
    b = kafka.bootstrap_servers
    await send(
        b,
        settings.topic(c.REFERENTIEL),
        [(u, etab(u, "035", "14", "53")) for u in RENNES] + [(NANTES, etab(NANTES, "044", "17", "52"))],
    )
    # RENNES[0..1] old tablets (incompatible), RENNES[2..3] fine; NANTES old.
    await send(
        b,
        settings.topic(PROFILS),
        [r for i, u in enumerate(RENNES) for r in profil(u, "12.5" if i < 2 else "17")] + profil(NANTES, "12.5"),
    )
    await send(b, settings.topic(COUVERTURES), [r for u in RENNES for r in formation(u)])
    await eventually(lambda: pool.fetchval("SELECT count(*) = 14 FROM recus"), what="5 lots, 5 links, 4 coverages")
    await send(
        b,
        settings.topic(c.CATALOGUE),
        [
            (
                RID,
                event(
                    c.RESSOURCE_PUBLIEE,
                    "/ministere",
                    ressource(RID),
                    time_=at(2),
                ),
            )
        ]
        + [
            (
                u,
                event(
                    c.ABONNEMENT,
                    "/gar",
                    {"resource_id": RID, "uai": u, "start": "2026-09-01", "end": None},
                    time_=at(2),
                ),
            )
            for u in [*RENNES, NANTES]
        ],
    )


async def test_a_stored_resource_a_stricter_rule_refuses_is_taken_for_unpublished(kafka, settings, api, monkeypatch):
    """A resource an older version accepted, which a rule made stricter since refuses (a training
    tool kind "", refused since 3 December; audit helper-193 #1, #2): validated as it was read, it
    made every batch and re-evaluation meeting one of its subscribers fail for good, and their
    fiches answer 500. Taken for not published, where a rebuild would leave it: the fiche lists it
    unevaluated with its title, the next evaluation resolves its pairs' alerts, and the log says
    it once."""
    from services.ressources import store

    logged = Said()
    monkeypatch.setattr(store, "log", logged)
    client, app = api
    pool = app.state.pipeline.pool
    await feed(kafka, settings, pool)
    quiet = "(SELECT count(*) = 12 FROM alertes) AND NOT EXISTS (SELECT FROM reevaluations)"
    await eventually(lambda: pool.fetchval(f"SELECT {quiet}"), what="12 alerts, the fan-out done")
    others = "SELECT count(*) FROM alertes WHERE uai <> $1 AND ouverte"
    elsewhere = await pool.fetchval(others, RENNES[0])
    await pool.execute(
        """UPDATE ressources SET ressource = jsonb_set(ressource, '{training}', '{"competences": [], "tools": [""]}')"""
    )

    answer = await client.get(f"/etablissements/{RENNES[0]}")
    assert answer.status_code == 200, answer.text
    [sub] = answer.json()["ressources"]
    assert (sub["title"], sub["publiee"], sub["evaluee"], sub["verdicts"]) == ("Atlas", True, False, None)

    await send(
        kafka.bootstrap_servers,
        settings.topic(PROFILS),
        [profil_lot(RENNES[0], 2, quantity=10, os={"name": "iPadOS", "version": "12.5"})],
    )
    settled = "SELECT NOT EXISTS (SELECT FROM alertes WHERE uai = $1 AND ouverte) AND NOT EXISTS (SELECT FROM outbox)"
    await eventually(lambda: pool.fetchval(settled, RENNES[0]), what="the établissement's alerts resolved")
    assert await pool.fetchval(others, RENNES[0]) == elsewhere, "the others not evaluated meanwhile"
    warned = [line for line in logged.lines if line["event"] == "ressource.illisible"]
    assert [(w["level"], w["resource_id"], w["erreurs"]) for w in warned] == [
        ("warning", RID, ["training.tools.0: string_too_short"])
    ], "said once, naming the rule broken and not the value"


async def test_the_fiche_answers_after_a_migration_adds_a_column_to_the_referentiel(kafka, settings):
    """A rolling upgrade's migration may add a column to `etablissements` while a former replica
    serves: its read connection has the fiche's statement prepared, and PostgreSQL refuses a
    prepared `SELECT *` whose columns changed (asyncpg retries it only outside a transaction, and
    the fiche reads in one). One connection, so that both readings use the same."""
    async with serve_api(settings.model_copy(update={"api_connections": 1})) as (client, app):
        pool = app.state.pipeline.pool
        await feed(kafka, settings, pool)
        settled = "SELECT (SELECT count(*) = 12 FROM alertes) AND NOT EXISTS (SELECT FROM reevaluations)"
        # The 12 alerts may all be there before the re-evaluation's last part ends: the fiche then
        # says it pending, and not a moment later (CI, 7 December 2026).
        await eventually(lambda: pool.fetchval(settled), what="12 alerts, the fan-out done")
        before = await client.get(f"/etablissements/{RENNES[0]}")
        assert before.status_code == 200, before.text

        await pool.execute("ALTER TABLE etablissements ADD COLUMN secteur text")
        after = await client.get(f"/etablissements/{RENNES[0]}")
        assert after.status_code == 200, after.text
        assert after.json() == before.json()


async def test_alerts_filters_pagination_etablissement_and_resource(kafka, settings, api):
    client, app = api
    pool = app.state.pipeline.pool
    await feed(kafka, settings, pool)
    # Per pair: connectivity 8 < 10 everywhere (5); RENNES[0..1] and NANTES incompatible (3); RENNES
    # (coverage 0.2 < 0.5) under-trained (4); NANTES has no coverage: no formation alert.
    await eventually(lambda: pool.fetchval("SELECT count(*) = 12 FROM alertes"), what="12 alerts")

    everything = (await client.get("/alertes", params={"limit": 500})).json()
    assert everything["total"] == 12
    # Names beside the codes: the établissement's and the resource's.
    named = {(a["uai"], a["nom"], a["resource_id"], a["title"]) for a in everything["items"]}
    assert named == {(u, f"Collège {u}", RID, "Atlas") for u in [*RENNES, NANTES]}
    rennes_incompatible = (
        await client.get("/alertes", params={"code_academie": "14", "kind": "equipement-incompatible", "state": "open"})
    ).json()
    assert {a["uai"] for a in rennes_incompatible["items"]} == set(RENNES[:2])
    assert all(a["responsable"] == {"type": "departement", "code": "035"} for a in rennes_incompatible["items"])
    by_dep = (await client.get("/alertes", params={"code_departement": "044"})).json()
    assert {a["kind"] for a in by_dep["items"]} == {"equipement-incompatible", "connectivite-insuffisante"}
    region = (
        await client.get("/alertes", params={"responsable_type": "departement", "responsable_code": "044"})
    ).json()
    assert region["total"] == 2
    assert (await client.get("/alertes", params={"state": "resolved"})).json()["total"] == 0

    pages = [(await client.get("/alertes", params={"limit": 5, "offset": o})).json() for o in (0, 5, 10)]
    ids = [a["alert_id"] for p in pages for a in p["items"]]
    assert [len(p["items"]) for p in pages] == [5, 5, 2]
    assert len(set(ids)) == 12 and all(p["total"] == 12 for p in pages)

    detail = (await client.get(f"/etablissements/{RENNES[0]}")).json()
    assert detail["etablissement"]["code_academie"] == "14"
    assert detail["equipement"]["lots"][0]["os"] == {"name": "iPadOS", "version": "12.5"}
    assert detail["formation"]["enseignants"] == 10
    assert (
        detail["formation"]["competences"] == {"3.4": [5, 2, 1, 0, 0, 0, 0, 0]}
        and not detail["formation"]["detail_masque"]
    )
    [sub] = detail["ressources"]
    assert sub["resource_id"] == RID and sub["evaluee"] and (sub["compatible"], sub["devices"]) == (0, 10)
    assert sub["au_catalogue"] and sub["publiee"]
    verdicts = sub["verdicts"]
    assert verdicts["equipement-incompatible"]["reasons"] == [{"code": "os-version", "detail": "iPadOS 12.5 < 15"}]
    assert verdicts["equipement-incompatible"]["alert_id"] is not None
    assert verdicts["formation-insuffisante"]["reasons"] == [
        {"code": "formation", "detail": "3.4 niveau 2: 2/10 enseignants"}
    ]
    assert verdicts["ent-indisponible"] == {"alerte": False, "reasons": [], "alert_id": None}

    early = {"resource_id": "ark:/67375/pas-encore", "uai": RENNES[0], "start": "2026-09-01", "end": None}
    await send(kafka.bootstrap_servers, settings.topic(c.CATALOGUE), [(RENNES[0], event(c.ABONNEMENT, "/gar", early))])

    async def two_subscriptions():
        subscriptions = (await client.get(f"/etablissements/{RENNES[0]}")).json()["ressources"]
        return subscriptions if len(subscriptions) == 2 else None

    [before_its_resource, _] = sorted(await eventually(two_subscriptions), key=lambda r: r["resource_id"] == RID)
    assert before_its_resource["resource_id"] == early["resource_id"]
    assert (before_its_resource["au_catalogue"], before_its_resource["publiee"]) == (False, False)

    summary = (await client.get(f"/ressources/{RID}")).json()
    assert summary["total"] == {"evalues": 5, "compatibles": 2, "partiels": 0, "incompatibles": 3, "sous_formes": 4}
    assert summary["par_academie"]["17"] == {
        "evalues": 1,
        "compatibles": 0,
        "partiels": 0,
        "incompatibles": 1,
        "sous_formes": 0,
    }

    # What partners build against: each answer is what the served OpenAPI document says it is.
    document = (await client.get("/openapi.json")).json()
    nantes = (await client.get(f"/etablissements/{NANTES}")).json()
    assert nantes["formation"] is None and nantes["equipement"] is not None
    masked = formation_shown(CouvertureFormation(uai=NANTES, enseignants=MIN_TEACHERS_DETAILED - 1))
    answers = {
        "/etablissements/{uai}": [detail, nantes, {**detail, "formation": masked}],
        "/ressources/{resource_id}": [summary],
        "/repartition/{resource_id}": [(await client.get(f"/repartition/{RID}")).json()],
        "/territoires": [(await client.get("/territoires")).json()],
        "/alertes": [everything],
    }
    answers["/etablissements/{uai}"].append((await client.get(f"/etablissements/{RENNES[0]}")).json())  # two resources
    for path, each in answers.items():
        schema = {
            **document,
            **document["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"],
        }
        for answer in each:
            jsonschema.validate(answer, schema, cls=jsonschema.Draft202012Validator)
    schema = {**document, "$ref": "#/components/schemas/FicheEtablissement"}
    verdicts = {**sub["verdicts"], "equipement-incompatible": {"alerte": True, "reasons": "os"}}
    for wrong in (  # the schemas do say something
        {**detail, "formation": {**masked, "competences": {}}},  # a masked coverage's detail
        {**detail, "ressources": [{**sub, "verdicts": verdicts}]},
        {**detail, "etablissement": {**detail["etablissement"], "type": "universite"}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema, cls=jsonschema.Draft202012Validator)


async def test_the_list_names_the_etablissement_and_the_resource_as_they_are_now(kafka, settings, api):
    """An établissement renamed by the référentiel, a resource withdrawn from the catalogue: the
    alerts, raised before, are listed with the new name, and without a title."""
    client, app = api
    pool = app.state.pipeline.pool
    await feed(kafka, settings, pool)
    await eventually(lambda: pool.fetchval("SELECT count(*) = 12 FROM alertes"), what="12 alerts")
    renamed = etab(RENNES[0], "035", "14", "53", nom="Collège Anne de Bretagne", minute=5)
    await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(RENNES[0], renamed)])
    withdrawn = event(c.RESSOURCE_RETIREE, "/ministere", {"resource_id": RID}, time_=at(6))
    await send(kafka.bootstrap_servers, settings.topic(c.CATALOGUE), [(RID, withdrawn)])
    await eventually(
        lambda: pool.fetchval("SELECT count(*) = 12 FROM alertes WHERE NOT ouverte"), what="every alert resolved"
    )
    renaming = "SELECT nom = 'Collège Anne de Bretagne' FROM etablissements WHERE uai = $1"
    # Another topic than the withdrawal's: not ordered with it (audit helper-189 #14).
    await eventually(lambda: pool.fetchval(renaming, RENNES[0]), what="the renaming read")

    listed = (await client.get("/alertes", params={"limit": 500})).json()["items"]
    assert len(listed) == 12 and {a["title"] for a in listed} == {None}
    assert {(a["uai"], a["nom"]) for a in listed} == {
        (RENNES[0], "Collège Anne de Bretagne"),
        *((u, f"Collège {u}") for u in [*RENNES[1:], NANTES]),
    }


async def test_an_answer_s_verdicts_use_the_thresholds_the_alerts_were_evaluated_with(kafka, settings, api):
    """A newer replica started with other thresholds stores them and has every pair re-evaluated
    (Reevaluations.reconcile_seuils); this one, still with the former ones in its settings, then
    evaluates with the new ones, and its fiche and simulations say what its alerts say."""
    client, app = api
    pool = app.state.pipeline.pool
    await feed(kafka, settings, pool)
    await eventually(lambda: pool.fetchval("SELECT count(*) = 12 FROM alertes"), what="12 alerts")
    assert RessourcesSettings.of(settings).seuils.min_training_coverage == 0.5  # RENNES's 0.2 is below

    lower = Seuils(min_training_coverage=0.1)
    pipeline = app.state.pipeline
    async with pool.acquire() as held:  # the writers held (as a rebuild holds them): the fan-out waits
        await held.execute("SELECT pg_advisory_lock($1)", writer_lock(pipeline.settings.db_schema or "ressources"))
        try:
            async with pool.acquire() as conn, conn.transaction():
                await request_every_pair(RessourcesStore(conn), lower)  # as the newer replica's start does
            [sub] = (await client.get(f"/etablissements/{RENNES[0]}")).json()["ressources"]
            # Judged with the new thresholds, its alert not yet resolved: the answer says why they differ.
            training = sub["verdicts"]["formation-insuffisante"]
            assert (training["alerte"], training["alert_id"] is not None, sub["reevaluation_en_attente"]) == (
                False,
                True,
                True,
            )
        finally:
            await held.execute("SELECT pg_advisory_unlock_all()")
    resolved = "SELECT count(*) FROM alertes WHERE kind = 'formation-insuffisante' AND NOT ouverte"
    await eventually(lambda: pool.fetchval(resolved + " HAVING count(*) = 4"), what="RENNES's training alerts resolved")
    await eventually(lambda: pool.fetchval("SELECT NOT EXISTS (SELECT FROM reevaluations)"), what="the fan-out done")

    [sub] = (await client.get(f"/etablissements/{RENNES[0]}")).json()["ressources"]
    assert sub["verdicts"]["formation-insuffisante"] == {"alerte": False, "reasons": [], "alert_id": None}
    assert sub["reevaluation_en_attente"] is False
    assert sub["verdicts"]["equipement-incompatible"]["alerte"]  # the other verdicts as before
    as_declared = [lot(RENNES[0], "12.5")]
    predicted = (await client.post("/simulations/equipement", json={"lots": as_declared})).json()
    assert (predicted["paires"], predicted["levees"], predicted["resolues"]) == (1, [], [])
    as_published = (await client.post("/simulations/ressource", json=ressource(RID))).json()
    assert (as_published["total"]["sous_formes"], as_published["total"].pop("formation_non_comptee")) == (0, 0)
    assert as_published["total"] == (await client.get(f"/ressources/{RID}")).json()["total"]  # the alerts' counts


async def test_an_alert_whose_etablissement_moved_resolves_where_it_was_raised(kafka, settings, api):
    """NANTES moves from département 044 to 049 while its alert is open: the read API lists it in
    049 (the établissement as it is), and once it resolves, the resolution says 044, as its raise
    did: a stream, or a consumer of the topics, filtering on 044 saw it raised and sees it
    resolved (it said 049, which they never saw, and it stayed open for them). A dashboard of 049,
    which the list showed it open, gets that resolution too, live and replayed (its stream
    filtered it out: the alert stayed open for it)."""
    client, app = api
    pool = app.state.pipeline.pool

    async def resolved_on_the_stream(events) -> dict:
        async for _, streamed in events:
            if streamed["type"] == c.ALERTE_RESOLUE and streamed["data"]["uai"] == NANTES:
                return streamed
        raise AssertionError("the stream ended")

    async with TopicReader(kafka.bootstrap_servers, settings.topic(c.ALERTES)) as alerts:
        await feed(kafka, settings, pool)
        await eventually(lambda: pool.fetchval("SELECT count(*) = 12 FROM alertes"), what="12 alerts")
        moved = etab(NANTES, "049", "17", "52") | {"id": "nantes-049", "time": at(5).isoformat()}
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(NANTES, moved)])
        listed = {"code_departement": "049", "kind": "equipement-incompatible"}
        await eventually(
            lambda: _total_of(client, listed, 1), what="the open alert listed where the établissement now is"
        )
        page = (await client.get("/alertes", params={**listed, "state": "open"})).json()
        follow = {"code_departement": "049", "depuis": page["last_event_id"]}
        async with client.stream("GET", "/alertes/flux", params=follow) as response:  # as the README says
            fixed = profil_lot(NANTES, 2, quantity=10, os={"name": "iPadOS", "version": "17"})
            await send(kafka.bootstrap_servers, settings.topic(PROFILS), [fixed])
            live = await asyncio.wait_for(resolved_on_the_stream(data_events(response.aiter_lines())), timeout=30)

        def resolution(records: list) -> list[dict]:
            events = (json.loads(r.value) for r in records)
            return [
                e["data"]
                for e in events
                if e["type"] == c.ALERTE_RESOLUE
                and (e["data"]["uai"], e["data"]["kind"]) == (NANTES, "equipement-incompatible")
            ]

        [data] = resolution(await alerts.wait_for(resolution, what="the resolution"))
    assert (data["code_departement"], data["responsable"]) == ("044", {"type": "departement", "code": "044"})
    raised = "SELECT alerte->>'code_departement' FROM alertes WHERE alert_id = $1"
    assert await pool.fetchval(raised, data["alert_id"]) == "049", "the read API's: where it is"
    assert live["data"] == data, "the event as it is, to the dashboards of either place"

    for where in ("044", "049"):  # replayed from the journal
        async with client.stream("GET", "/alertes/flux", params={"code_departement": where, "depuis": 0}) as response:
            streamed = await asyncio.wait_for(resolved_on_the_stream(data_events(response.aiter_lines())), timeout=30)
        assert streamed["data"] == data, where
    async with pool.acquire() as conn:  # nor to another place's
        replayed = await queries.journal_replay(conn, 0, 10**9, queries.AlertFilter(code_departement="035"), 100)
    assert replayed.rows and NANTES not in "".join(event for _, event in replayed.rows)


async def test_an_open_alert_that_moves_is_on_the_stream_of_either_place_never_on_kafka(kafka, settings, api):
    """A dashboard of 049 that read its open alerts (none), then follows the stream from there
    (the README's recipe), while NANTES moves from 044 to 049, its alert open: the stream said
    nothing until the alert resolved, and the dashboard missed it (read-API audit s67 F3). Now
    `alerte-deplacee`, the alert as it is, to the streams of 049 and 044, live and replayed; not
    to another place's, and not on Kafka (not a type of the contract)."""
    client, app = api
    pool = app.state.pipeline.pool

    async def moved_on_the_stream(lines) -> dict:
        async for line in lines:
            if line.startswith("data: ") and (event := json.loads(line.removeprefix("data: ")))["type"].endswith(
                ".alerte-deplacee.v1"
            ):
                return event
        raise AssertionError("the stream ended")

    async with TopicReader(kafka.bootstrap_servers, settings.topic(c.ALERTES)) as alerts:
        await feed(kafka, settings, pool)
        await eventually(lambda: pool.fetchval("SELECT count(*) = 12 FROM alertes"), what="12 alerts")
        page = (await client.get("/alertes", params={"code_departement": "049", "state": "open"})).json()
        assert page["total"] == 0
        follow = {"code_departement": "049", "depuis": page["last_event_id"]}
        async with client.stream("GET", "/alertes/flux", params=follow) as response:
            moved = etab(NANTES, "049", "17", "52") | {"id": "nantes-049", "time": at(5).isoformat()}
            await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(NANTES, moved)])
            live = await asyncio.wait_for(moved_on_the_stream(response.aiter_lines()), timeout=30)
        assert (live["data"]["uai"], live["data"]["code_departement"]) == (NANTES, "049")
        assert live["data"]["responsable"] == {"type": "departement", "code": "049"}
        listed = (await client.get("/alertes", params={"code_departement": "049", "state": "open"})).json()
        assert live["data"]["alert_id"] in {a["alert_id"] for a in listed["items"]}

        for where in ("044", "049"):  # replayed from the journal
            async with client.stream("GET", "/alertes/flux", params={"code_departement": where, "depuis": 0}) as r:
                replayed = await asyncio.wait_for(moved_on_the_stream(r.aiter_lines()), timeout=30)
            assert replayed == live, where
        async with pool.acquire() as conn:  # nor to another place's
            elsewhere = await queries.journal_replay(conn, 0, 10**9, queries.AlertFilter(code_departement="035"), 100)
        assert elsewhere.rows and NANTES not in "".join(event for _, event in elsewhere.rows)
        # On Kafka, the raises only: the move has no event there.
        await alerts.wait_for(lambda records: len(records) >= 12, what="the raises")
    assert not [r for r in alerts.records if b"alerte-deplacee" in r.value]


async def _total_of(client, params: dict, expected: int) -> bool:
    return (await client.get("/alertes", params={**params, "state": "open"})).json()["total"] == expected


async def test_sse_delivers_a_committed_alert_change(kafka, settings, api):
    client, app = api
    pool = app.state.pipeline.pool
    async with client.stream("GET", "/alertes/flux", params={"kind": "equipement-incompatible"}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()
        assert (await anext(lines)).startswith(":")  # the stream is open before anything happens
        await feed(kafka, settings, pool)

        async def next_event() -> dict:
            while True:
                line = await anext(lines)
                if line.startswith("data: "):
                    return json.loads(line.removeprefix("data: "))

        received = await asyncio.wait_for(next_event(), timeout=30)
    assert received["type"] == c.ALERTE_LEVEE and received["data"]["kind"] == "equipement-incompatible"


def resolving(alert: dict) -> list[tuple[str, dict]]:
    """Inputs that resolve this alert of `feed`'s (and no other of its UAI)."""
    code = alert["uai"]
    return {
        "connectivite-insuffisante": lambda: [profil_connectivite(code, 2, 20.0, True)],
        "equipement-incompatible": lambda: [profil_lot(code, 2, quantity=10, os={"name": "iPadOS", "version": "17"})],
        "formation-insuffisante": lambda: couverture(code, 2, 10, {"3.4": [10, 10, 0, 0, 0, 0, 0, 0]}),
    }[alert["kind"]]()


async def data_events(lines) -> AsyncIterator[tuple[int, dict]]:
    """The stream's alert events, with their `id:`."""
    seq = None
    async for line in lines:
        if line.startswith("id: "):
            seq = int(line.removeprefix("id: "))
        elif line.startswith("data: "):
            event = json.loads(line.removeprefix("data: "))
            if event.get("type") in (c.ALERTE_LEVEE, c.ALERTE_RESOLUE):
                yield seq, event


async def test_pages_read_by_cursor_miss_no_alert_and_the_stream_resumes_from_the_first_page(kafka, settings, api):
    """What the README's bootstrap without Kafka does: the open alerts page after page, an alert
    resolved meanwhile, then the stream from the position the first page gave."""
    client, app = api
    pool = app.state.pipeline.pool
    await feed(kafka, settings, pool)
    await eventually(lambda: pool.fetchval("SELECT count(*) = 12 FROM alertes"), what="12 alerts")
    first = (await client.get("/alertes", params={"state": "open", "limit": 5})).json()
    assert (first["total"], len(first["items"])) == (12, 5) and first["suivant"]
    assert first["last_event_id"] == await pool.fetchval("SELECT max(seq) FROM alert_journal")
    gone = first["items"][0]
    await send(
        kafka.bootstrap_servers,
        settings.topic(PROFILS if gone["kind"] != "formation-insuffisante" else COUVERTURES),
        resolving(gone),
    )
    await eventually(
        lambda: pool.fetchval("SELECT NOT ouverte FROM alertes WHERE alert_id = $1", gone["alert_id"]), what="resolved"
    )

    by_offset = (await client.get("/alertes", params={"state": "open", "limit": 5, "offset": 5})).json()
    pages, after = [first], first["suivant"]
    while after:
        pages.append((await client.get("/alertes", params={"state": "open", "limit": 5, "apres": after})).json())
        after = pages[-1]["suivant"]
    ids = [a["alert_id"] for p in pages for a in p["items"]]
    everything = await pool.fetch("SELECT alert_id FROM alertes")
    assert sorted(ids) == sorted(r["alert_id"] for r in everything)  # each once, none skipped
    assert by_offset["items"][0]["alert_id"] == pages[1]["items"][1]["alert_id"]  # an offset skipped one
    # A full page that is the last (12 alerts in all) has no `suivant`: following one gave an empty page.
    half = (await client.get("/alertes", params={"limit": 6})).json()
    assert len(half["items"]) == 6 and half["suivant"]
    for params in ({"limit": 12}, {"limit": 6, "offset": 6}, {"limit": 6, "apres": half["suivant"]}):
        last = (await client.get("/alertes", params=params)).json()
        assert (len(last["items"]), last["suivant"]) == (params["limit"], None), params

    for resume in ("depuis", "lastEventId"):  # lastEventId: what EventSource polyfills send
        params = {resume: first["last_event_id"]}
        async with client.stream("GET", "/alertes/flux", params=params) as response:
            seq, event = await asyncio.wait_for(anext(data_events(response.aiter_lines())), timeout=30)
        assert seq > first["last_event_id"]
        assert (event["type"], event["data"]["alert_id"]) == (c.ALERTE_RESOLUE, gone["alert_id"])
    assert (event["type"], event["data"]["alert_id"]) == (c.ALERTE_RESOLUE, gone["alert_id"])
    both = (await client.get("/alertes", params={"limit": 500})).json()
    [resolved] = [a for a in both["items"] if a["state"] == "resolved"]
    assert resolved["resolved_at"] == event["data"]["resolved_at"]  # one instant, written alike
    # What partners build against: the answers are what the OpenAPI document says they are.
    document = (await client.get("/openapi.json")).json()
    page = {**document, "$ref": "#/components/schemas/PageAlertes"}
    for answer in (both, first, pages[-1]):
        jsonschema.validate(answer, page, cls=jsonschema.Draft202012Validator)
    with pytest.raises(jsonschema.ValidationError):  # the schema does say something
        jsonschema.validate(
            {**both, "items": [{**resolved, "state": "fermee"}]}, page, cls=jsonschema.Draft202012Validator
        )


async def test_the_document_admits_what_was_stored_before_the_contract_s_bounds(kafka, settings, api):
    """An alert raised before 30 November 2026 may hold a reason's detail longer than 256
    characters (an `-absent` reason listed a lot's browsers) or a resource_id as long, and the
    référentiel a name as long; a resolved alert keeps them for good. The document bounded them
    as the contract does today: a client validating the answers against it (jsonschema, or the
    models a generator makes of it) refused the whole page for that one alert, and the fiche."""
    client, app = api
    pool = app.state.pipeline.pool
    await feed(kafka, settings, pool)
    settled = "SELECT (SELECT count(*) = 12 FROM alertes) AND NOT EXISTS (SELECT FROM reevaluations)"
    await eventually(lambda: pool.fetchval(settled), what="12 alerts, no re-evaluation pending")
    long_ = "é" * 300
    resource_id = f"ark:/67375/{long_}"
    alert_id = await pool.fetchval(
        "SELECT alert_id FROM alertes WHERE uai = $1 AND kind = 'equipement-incompatible'", RENNES[0]
    )
    await pool.execute(
        "UPDATE alertes SET ouverte = false, resolved_at = now(), resource_id = $2, alerte = jsonb_set("
        "jsonb_set(alerte, '{reasons,0,detail}', to_jsonb($3::text)), '{resource_id}', to_jsonb($2::text)) "
        "WHERE alert_id = $1",
        alert_id,
        resource_id,
        long_,
    )
    await pool.execute("UPDATE etablissements SET nom = $2 WHERE uai = $1", RENNES[0], long_)

    page = (await client.get("/alertes", params={"state": "resolved"})).json()
    [stored] = page["items"]
    assert (stored["alert_id"], stored["resource_id"], stored["nom"]) == (alert_id, resource_id, long_)
    assert stored["reasons"][0]["detail"] == long_
    fiche = (await client.get(f"/etablissements/{RENNES[0]}")).json()
    assert fiche["etablissement"]["nom"] == long_
    document = (await client.get("/openapi.json")).json()
    for answer, schema in ((page, "PageAlertes"), (fiche, "FicheEtablissement")):
        jsonschema.validate(
            answer, {**document, "$ref": f"#/components/schemas/{schema}"}, cls=jsonschema.Draft202012Validator
        )


LIMIT = "limit : doit être un entier entre 1 et 500 (la taille de la page)"
OFFSET = "offset : doit être un entier entre 0 et 1 000 000 (les alertes sautées)"
KIND = "kind : doit être equipement-incompatible, equipement-partiel, connectivite-insuffisante, ent-indisponible"
CONTROL = "caractère de contrôle interdit (NUL, retour à la ligne…)"
RESOURCE_ID = (
    "resource_id : doit être un identifiant, par ex. ark:/67375/xyz : de 1 à 256 caractères depuis le 30 novembre "
    "2026, jusqu'à 2700 pour une ressource reçue avant"
)
ACADEMIE = "code_academie : doit être un code académie de 2 chiffres, par ex. 14"
RESPONSABLE = "responsable_code : doit être un code de l'annuaire : de commune (35016, 2A004), de département"
DEPARTEMENT = "responsable_code : doit être un code département de 3 caractères"
COMMUNE = "responsable_code : doit être un code commune INSEE de 5 caractères, par ex. 35016 ou 2A004"


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("/alertes", {"kind": "panne"}, KIND),
        ("/alertes", {"state": "ouvert"}, "state : doit être open ou resolved"),
        ("/alertes", {"responsable_type": "communes"}, "responsable_type : doit être commune, departement ou region"),
        ("/alertes", {"limit": 0}, LIMIT),
        ("/alertes", {"limit": 501}, LIMIT),
        ("/alertes", {"limit": "beaucoup"}, LIMIT),
        ("/alertes", {"limit": ""}, LIMIT),
        ("/alertes", {"offset": -1}, OFFSET),
        ("/alertes", {"offset": 1_000_001}, OFFSET),
        ("/alertes", {"offset": 2**63}, OFFSET),  # beyond int64: PostgreSQL would refuse it
        ("/alertes", {"offset": "9" * 5000}, OFFSET),  # beyond what pydantic parses at all
        ("/alertes", {"responsable_code": "03\x005"}, RESPONSABLE),
        ("/alertes", {"responsable_code": "0\n35"}, RESPONSABLE),
        ("/alertes", {"responsable_code": "123456"}, RESPONSABLE),
        ("/alertes", {"responsable_type": "departement", "responsable_code": "35"}, f"{DEPARTEMENT}, par ex. 035"),
        ("/alertes/flux", {"responsable_type": "commune", "responsable_code": "035"}, COMMUNE),
        ("/alertes", {"academie": "14"}, "academie : paramètre inconnu (attendus : apres, code_academie,"),
        ("/alertes/flux", {"state": "open"}, "state : paramètre inconnu (attendus : code_academie,"),
        ("/etablissements/0350042F", {"x": "1"}, "x : paramètre inconnu (attendus : aucun)"),
        ("/territoires", {"academie": "14"}, "academie : paramètre inconnu (attendus : aucun)"),
        ("/repartition/ark:/1/x", {"par": "academie"}, "par : paramètre inconnu (attendus : aucun)"),
        # Given twice: the last one was taken, the first ignored.
        ("/alertes", [("code_departement", "035"), ("code_departement", "022")], "code_departement : paramètre répété"),
        (
            "/alertes/flux",
            [("kind", "equipement-partiel"), ("code_academie", "14"), ("kind", "equipement-incompatible")],
            "kind : paramètre répété : une valeur au plus",
        ),
        ("/alertes", {"apres": "@@@"}, "apres : curseur illisible"),
        (
            "/alertes",
            {"apres": "WyIyMDI2LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwgIlx1MDAwMCJd"},
            "apres : curseur illisible",
        ),  # a NUL
        (
            "/alertes",
            {"apres": "WyIyMDI2LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwgIlx1ZDgwMCJd"},
            "apres : curseur illisible",
        ),  # a lone surrogate
        (
            "/alertes",
            {"apres": "WyIwMDAxLTAxLTAxVDAwOjAwOjAwKzAxOjAwIiwgIngiXQ"},
            "apres : curseur illisible",
        ),  # before year 1 in UTC
        ("/alertes/flux", {"lastEventId": "x"}, "lastEventId : doit être un entier entre 0 et"),
        ("/alertes", {"apres": "WyIyMDI2LTEyLTAzVDA0OjAwOjAwKzAwOjAwIiwgImEiXQ", "offset": 5}, "apres : ne va pas"),
        ("/alertes/flux", {"depuis": "-1"}, "depuis : doit être un entier entre 0 et"),
        ("/alertes", {"code_academie": "Rennes"}, ACADEMIE),
        ("/alertes", {"code_departement": "35"}, "code_departement : doit être un code département de 3 caractères"),
        ("/etablissements/0350042A", {}, "uai : pas un UAI valide : lettre de contrôle attendue F"),
        ("/etablissements/035%0042F", {}, f"uai : {CONTROL}"),
        ("/etablissements/0350042F%00", {}, f"uai : {CONTROL}"),
        ("/ressources/ark:/1/in%00connue", {}, f"resource_id : {CONTROL}"),
        ("/ressources/ark:/1/%01", {}, f"resource_id : {CONTROL}"),
        ("/ressources/" + "x" * 2701, {}, RESOURCE_ID),
        ("/ressources/", {}, RESOURCE_ID),
        ("/alertes/flux", {"code_academie": "1\x004"}, ACADEMIE),
        ("/alertes/flux", {"kind": "panne"}, KIND),
    ],
)
async def test_a_refused_parameter_gets_a_422_in_french_naming_it_and_its_rule(api, path, params, message):
    client, _ = api
    response = await client.get(path, params=params)
    assert response.status_code == 422
    [refused] = response.json()["detail"]
    assert refused["msg"].startswith(message), refused
    assert refused["loc"][-1] == message.split(" : ")[0]
    assert set(refused) == {"loc", "msg", "type"}  # pydantic's `input`, the refused value, is not echoed


async def test_json_answers_are_not_kept_by_caches_and_the_page_says_its_own(api):
    """A proxy that keeps 200s by default served an earlier list, and an earlier `last_event_id`
    to resume the stream from (audit helper-167 #5): no answer said otherwise."""
    client, _ = api
    for path, params in [("/alertes", {}), ("/alertes", {"kind": "panne"}), ("/health", {}), ("/", {})]:
        response = await client.get(path, params=params, headers={"Accept": "application/json"})
        assert response.headers["cache-control"] == "no-store", (path, params, response.status_code)
    assert (await client.get("/tableau")).headers["cache-control"] == "no-cache"


async def test_a_query_of_many_unknown_parameters_names_the_first_ones_and_counts_the_others(api):
    client, _ = api
    names = [f"p{n:04}" for n in range(3000)]
    response = await client.get("/alertes", params=dict.fromkeys(names, "1"))
    assert response.status_code == 422
    refused = response.json()["detail"]
    assert [r["loc"][-1] for r in refused] == names[:10]
    assert refused[-1]["msg"] == f"{names[9]} : paramètre inconnu, et {3000 - 10} autre(s) après lui"
    assert len(response.content) < 10_000


@pytest.mark.parametrize("value", ["abc", "-1", str(2**63), "1.5", ""])
async def test_bad_last_event_id_gets_a_422_in_french_naming_the_header(api, value):
    client, _ = api
    response = await client.get("/alertes/flux", headers={"Last-Event-ID": value})
    assert response.status_code == 422
    [refused] = response.json()["detail"]
    assert refused["loc"] == ["header", "Last-Event-ID"]
    assert refused["msg"].startswith("Last-Event-ID : doit être un entier entre 0 et 9 223 372 036 854 775 807 (")


async def test_other_errors_answer_in_french_too(api):
    client, app = api
    unknown = {
        "/etablissements/0350042F": "uai : 0350042F n'est pas dans le référentiel",
        "/ressources/ark:/1/inconnue": "resource_id : ark:/1/inconnue n'est pas dans le catalogue",
        "/nulle-part": "aucun point d'accès à cette adresse : la liste est sur /",
        "/alertes/": "aucun point d'accès à cette adresse : la liste est sur /",  # no redirect (to http:// behind TLS)
        "/static-offline-docs/absent.js": "aucun point d'accès à cette adresse : la liste est sur /",
    }
    for path, detail in unknown.items():
        response = await client.get(path)
        assert (response.status_code, response.json()) == (404, {"detail": detail}), path
    response = await client.post("/alertes")
    assert (response.status_code, response.headers["Allow"]) == (405, "GET")
    assert response.json() == {"detail": "méthode non permise : GET seulement à cette adresse"}

    class Away:  # PostgreSQL restarting: refused connections, or one lost during the read
        def __init__(self, error: Exception):
            self.error = error

        async def acquire(self, timeout):
            raise self.error

        def get_max_size(self):
            return 1

    for error in (
        ConnectionRefusedError(111, "refused"),
        asyncpg.ConnectionDoesNotExistError("lost"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    ):
        app.dependency_overrides[_pool] = lambda error=error: Reads(Away(error), 100)
        response = await client.get("/alertes")
        assert (response.status_code, response.headers["Retry-After"]) == (503, "2"), response.text
        assert response.json() == {"detail": "PostgreSQL injoignable pour le moment : réessayer dans 2 s"}

    class Lost(Away):  # the connection was acquired: lost in the middle of the read
        async def acquire(self, timeout):
            return self

        async def release(self, conn):
            pass

        def transaction(self, **options):
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")

    app.dependency_overrides[_pool] = lambda: Reads(Lost(None), 100)
    response = await client.get("/alertes")
    assert (response.status_code, response.headers["Retry-After"]) == (503, "2"), response.text

    def broken_pool():
        raise RuntimeError("a bug, say")

    app.dependency_overrides[_pool] = broken_pool
    response = await client.get("/alertes")
    assert (response.status_code, response.json()) == (
        500,
        {"detail": "erreur interne du service (le détail est dans son journal)"},
    )
    # Sent from past the middlewares: with their headers all the same (review helper-183 #4).
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-security-policy"] == "frame-ancestors 'none'"


def _attributes(page: str, *names: str) -> list[str]:
    """Every value of these attributes in an HTML page, in order."""
    found: list[str] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend(value for name, value in attrs if name in names and value)

    Parser().feed(page)
    return found


async def test_the_root_is_a_french_page_whose_links_all_answer(api):
    client, _ = api
    response = await client.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert response.headers["content-type"].startswith("text/html") and '<html lang="fr">' in response.text
    links = _attributes(response.text, "href")
    assert {"/docs", "/redoc", "/openapi.json", "/health", "/alertes?state=open", "/alertes/flux"} <= set(links)
    for link in links:
        async with client.stream("GET", link) as followed:  # the SSE stream answers 200 and goes on
            assert followed.status_code == 200, link


async def test_the_root_answers_json_to_a_client_that_prefers_it_and_the_page_otherwise(api):
    client, _ = api
    for accept in ("application/json", "application/json, text/html;q=0.9", "application/*"):
        response = await client.get("/", headers={"Accept": accept})
        assert response.headers["Vary"] == "Accept"
        body = response.json()
        assert body["titre"] == "former-équiper-outiller — API de lecture des alertes"
        hrefs = [link["href"] for link in body["liens"]]
        assert {"/docs", "/openapi.json", "/health", "/alertes/flux", "/etablissements/{uai}"} <= set(hrefs), accept
    for accept in ("*/*", "", "text/html, application/json", "application/json;q=0.5, text/*"):
        response = await client.get("/", headers={"Accept": accept})
        assert response.headers["content-type"].startswith("text/html"), accept


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_documentation_is_served_whole_by_the_api_itself(api, page):
    """No CDN: the page and everything it loads come from the service, so /docs works offline."""
    client, _ = api
    response = await client.get(page)
    assert response.status_code == 200
    assets = _attributes(response.text, "src", "href")
    assert any(a.endswith(".js") for a in assets)
    if page == "/docs":
        assert any(a.endswith(".css") for a in assets)
    for url in assets:
        assert not urlsplit(url).scheme and not urlsplit(url).netloc, f"{page} loads {url} from another host"
        asset = await client.get(url)
        assert asset.status_code == 200 and asset.content, url
        if url.endswith(".css"):  # a stylesheet's own url(…): inline data only
            assert all(u.strip("'\" ").startswith("data:") for u in re.findall(r"url\(([^)]*)\)", asset.text))
    assert (await client.get("/openapi.json")).status_code == 200  # what the page then fetches


async def test_openapi_document_lists_every_endpoint_and_states_each_parameter_rule(api):
    client, _ = api
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"/", "/alertes", "/alertes/flux", "/etablissements/{uai}", "/ressources/{resource_id}", "/health"} <= set(
        paths
    )
    parameters = [p for ops in paths.values() for op in ops.values() for p in op.get("parameters", [])]
    assert parameters and all(p.get("description") for p in parameters)  # the rule a refused value is told


async def test_health_reports_the_reevaluations_still_pending(api):
    client, app = api
    pipeline = app.state.pipeline
    pool = pipeline.pool
    await eventually(lambda: health_says(client, "reevaluations_pending", 0), what="what earlier tests left done")
    # A fan-out for a resource nobody subscribes to, requested while the service's writers are
    # held (as a rebuild holds them): pending until they are let go, then one empty chunk.
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", writer_lock(pipeline.settings.db_schema or "ressources"))
        try:
            await conn.execute("INSERT INTO reevaluations (resource_id) VALUES ('ark:/67375/inconnue')")
            # While the writers are held, what is pending cannot change; an earlier test's last
            # batch may still have requested a fan-out of its own just before they were.
            pending = {r["resource_id"] for r in await conn.fetch("SELECT resource_id FROM reevaluations")}
            body = (await client.get("/health")).json()
            assert "ark:/67375/inconnue" in pending
            assert (body["database"], body["reevaluations_pending"]) == (True, len(pending))
        finally:
            await conn.execute("SELECT pg_advisory_unlock_all()")
    quiet = await eventually(lambda: health_says(client, "reevaluations_pending", 0), what="none pending")
    assert await pool.fetchval("SELECT count(*) FROM reevaluations") == quiet["reevaluations_pending"] == 0


async def test_a_resource_stored_before_the_contract_s_bounds_is_read(api):
    """A resource_id over 256 characters (accepted before 30 November 2026) and a stored resource
    without a title: `/alertes` lists their alerts, but their counts were a 422 for good (the
    parameter bounded by today's contract, audit-tightening s62 #4), the other a 500."""
    client, app = api
    long_id = "ark:/67375/" + "x" * 300
    async with app.state.pipeline.pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO ressources (resource_id, publiee, ressource, event_time) VALUES ($1, true, $2, now())",
            [
                (long_id, json.dumps({"resource_id": long_id, "title": "Longue"})),
                ("ark:/x", '{"resource_id": "ark:/x"}'),
            ],
        )
    for path in (f"/ressources/{long_id}", f"/repartition/{long_id}"):
        answer = await client.get(path)
        assert answer.status_code == 200, (path, answer.text)
        assert answer.json()["resource_id"] == long_id
    untitled = await client.get("/ressources/ark:/x")
    assert (untitled.status_code, untitled.json()["title"]) == (200, None), untitled.text
    too_long = await client.get("/ressources/" + "x" * 3000)  # no index could have held it
    assert too_long.status_code == 422, too_long.text


async def test_a_resource_s_counts_say_while_its_re_evaluation_has_yet_to_reach_every_pair(api):
    """Its publication, a republication or a change of the thresholds is evaluated in the
    background, chunk after chunk: the pairs not reached yet were counted by the alerts from
    before it (compatible, without one), and nothing said so (audit helper-167 #2)."""
    client, app = api
    pipeline = app.state.pipeline
    rid = "ark:/67375/comptes-en-attente"
    async with pipeline.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO ressources (resource_id, publiee, ressource, event_time) VALUES ($1, true, $2, now())",
            rid,
            json.dumps({"resource_id": rid, "title": "t"}),
        )
        await conn.execute("SELECT pg_advisory_lock($1)", writer_lock(pipeline.settings.db_schema or "ressources"))
        try:  # requested while the writers are held: it waits until they are let go
            await conn.execute("INSERT INTO reevaluations (resource_id) VALUES ($1)", rid)
            for path in (f"/ressources/{rid}", f"/repartition/{rid}"):
                assert (await client.get(path)).json()["reevaluation_en_attente"] is True, path
        finally:
            await conn.execute("SELECT pg_advisory_unlock_all()")

    async def counted() -> bool:
        return not (await client.get(f"/ressources/{rid}")).json()["reevaluation_en_attente"]

    await eventually(counted, what="the re-evaluation ended")
    assert (await client.get(f"/repartition/{rid}")).json()["reevaluation_en_attente"] is False


async def health_says(client, field: str, value: int) -> dict | None:
    body = (await client.get("/health")).json()
    return body if body[field] == value else None


async def test_the_open_and_the_resolved_alerts_pages_and_counts_are_read_through_their_indexes(database_url):
    """The dashboards' default view (state=open, newest raise first) and its count, as
    list_alertes asks them, through the open alerts' own index (sequential scans disabled to
    see which the planner can use). Without it, at 900,000 alerts the planner read the whole
    table for both, on every page and live refresh: 115 and 170 ms, against 10 and 0.1."""
    from services.common.storage.db import create_pool, migrate
    from services.ressources import queries

    pool = await create_pool(database_url, "lecture_index")
    try:
        await migrate(pool, "lecture_index", SPEC.package_dir)
        async with pool.acquire() as conn:
            await conn.execute("SET enable_seqscan = off")
            plans: list[str] = []

            class Explaining:
                async def fetchval(self, sql, *args):
                    plans.append(json.dumps(await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)))
                    return await conn.fetchval(sql, *args)

                async def fetch(self, sql, *args):
                    plans.append(json.dumps(await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)))
                    return await conn.fetch(sql, *args)

            for state, index in (("open", "alertes_ouvertes"), ("resolved", "alertes_resolues")):
                plans.clear()
                listed = queries.AlertFilter(state=state)
                page = await queries.list_alertes(Explaining(), listed, 20, 0)
                assert (page.total, page.items, page.after_last) == (0, [], None)
                await queries.list_alertes(Explaining(), listed, 20, 0, (datetime.now(UTC), "a"))  # a page after
                assert len(plans) == 6, "the count, the page and the journal's position, twice"
                for plan in plans[0:2] + plans[3:5]:
                    assert index in plan and "Seq Scan" not in plan, plan
                by = listed.order()
                assert f'"Index Cond": "({by} <=' in json.loads(plans[4]), "the page after a cursor starts at it"
    finally:
        await pool.close()


async def test_the_resolved_alerts_are_listed_the_latest_resolution_first(api):
    """Listed by their raise, an alert raised months ago and resolved a minute ago was pages down
    the resolved ones (audit helper-182 #8): their own list is in order of resolution, page
    after page from `suivant`; every alert's stays in order of raise."""
    client, app = api
    pool = app.state.pipeline.pool
    now = datetime.now(UTC)
    # (raised, resolved) minutes ago; None: open.
    spans = {"ancienne": (90 * 24 * 60, 1), "recente": (30, 20), "moyenne": (60, 40), "ouverte": (10, None)}
    await pool.executemany(
        "INSERT INTO alertes (alert_id, uai, resource_id, kind, ouverte, cycle, raised_at, resolved_at, alerte) "
        "VALUES ($1, $2, 'ark:/67375/r', 'equipement-incompatible', $3, 1, $4, $5, $6::jsonb)",
        [
            (
                name,
                RENNES[0],
                resolved is None,
                now - timedelta(minutes=raised),
                None if resolved is None else now - timedelta(minutes=resolved),
                json.dumps(
                    {
                        "alert_id": name,
                        "uai": RENNES[0],
                        "resource_id": "ark:/67375/r",
                        "kind": "equipement-incompatible",
                        "reasons": [],
                        "code_academie": "14",
                        "code_departement": "035",
                        "responsable": {"type": "departement", "code": "035"},
                        "compatible": 0,
                        "devices": 1,
                        "coverage": None,
                        "raised_at": (now - timedelta(minutes=raised)).isoformat(),
                        "resolved_at": None,
                    }
                ),
            )
            for name, (raised, resolved) in spans.items()
        ],
    )
    resolved = (await client.get("/alertes", params={"state": "resolved"})).json()["items"]
    assert [a["alert_id"] for a in resolved] == ["ancienne", "recente", "moyenne"]
    paged, after = [], None
    while True:
        page = (await client.get("/alertes", params={"state": "resolved", "limit": 1, **after_(after)})).json()
        paged += [a["alert_id"] for a in page["items"]]
        if (after := page["suivant"]) is None:
            break
    assert paged == ["ancienne", "recente", "moyenne"]
    every = (await client.get("/alertes")).json()["items"]
    assert [a["alert_id"] for a in every] == ["ouverte", "recente", "moyenne", "ancienne"]
    # A cursor is a place in its list's order: refused by a list in the other (review helper-184 #10).
    by_resolution = (await client.get("/alertes", params={"state": "resolved", "limit": 1})).json()["suivant"]
    by_raise = (await client.get("/alertes", params={"limit": 1})).json()["suivant"]
    for params in ({"apres": by_resolution}, {"state": "resolved", "apres": by_raise}):
        refused = await client.get("/alertes", params=params)
        assert refused.status_code == 422 and "curseur d'une autre liste" in refused.text, refused.text
    assert (await client.get("/alertes", params={"state": "open", "apres": by_raise})).status_code == 200


def after_(cursor: str | None) -> dict:
    return {} if cursor is None else {"apres": cursor}


async def test_the_reads_of_one_answer_share_one_snapshot(kafka, settings, api, monkeypatch):
    """A fan-out resolving alerts while an answer is read: its count and its page, read apart,
    could disagree (`total` 12 and 11 items). Every read of the answer sees the database as its
    first one did: here an alert resolved and committed after that first read is not seen."""
    from services.ressources import queries

    client, app = api
    pool = app.state.pipeline.pool
    await feed(kafka, settings, pool)
    # The publication's fan-out done too: one still running re-evaluates the pair this test
    # resolves by hand, and raises its alert again (CI at c3186d4: 12 open, not 11).
    settled = "SELECT (SELECT count(*) = 12 FROM alertes) AND NOT EXISTS (SELECT FROM reevaluations)"
    await eventually(lambda: pool.fetchval(settled), what="12 alerts, no re-evaluation pending")
    listed = queries.list_alertes

    async def resolved_after_a_first_read(conn, f, limit, offset, after=None):
        await conn.fetchval("SELECT count(*) FROM alertes")
        async with pool.acquire() as writer:
            first = "SELECT min(alert_id) FROM alertes"
            await writer.execute(f"UPDATE alertes SET ouverte = false WHERE alert_id = ({first})")
        return await listed(conn, f, limit, offset, after)

    monkeypatch.setattr(queries, "list_alertes", resolved_after_a_first_read)
    answer = (await client.get("/alertes", params={"state": "open", "limit": 500})).json()
    assert await pool.fetchval("SELECT count(*) FROM alertes WHERE ouverte") == 11, "resolved meanwhile"
    assert answer["total"] == len(answer["items"]) == 12, "the answer as of its first read"


async def test_the_service_forgets_the_alerts_resolved_past_their_retention_only_when_told(kafka, settings):
    """ALERTS_RESOLVED_RETENTION_DAYS: 0, the default, keeps them (no purge runs); set, the
    service's first purge at its start deletes those resolved longer ago, the others kept."""
    from helpers import migrated_pool

    async with migrated_pool(settings.database_url, SPEC) as pool:
        for alert_id, resolved in (("ancienne", timedelta(days=40)), ("recente", timedelta(days=1))):
            await pool.execute(
                "INSERT INTO alertes (alert_id, uai, resource_id, kind, ouverte, cycle, raised_at, resolved_at, "
                "alerte) VALUES ($1, '0350001A', 'ark:/1/r', 'ent-indisponible', false, 1, "
                "now() - interval '50 days', now() - $2::interval, '{}')",
                alert_id,
                resolved,
            )
        async with serve_api(settings):
            assert "alerts-resolved-purge" not in {t.get_name() for t in asyncio.all_tasks()}
        kept = {"alerts_resolved_retention_days": 30}
        async with serve_api(RessourcesSettings(**settings.model_dump(), **kept)):

            async def forgotten() -> bool:
                return await pool.fetchval("SELECT array_agg(alert_id) FROM alertes") == ["recente"]

            await eventually(forgotten, what="the alert resolved 40 days ago deleted, the other kept")


async def test_a_fiche_lets_the_service_s_other_work_run_between_its_resources(kafka, settings, api, monkeypatch):
    """Each subscribed resource is evaluated for the fiche on the service's event loop: at the
    contract's bounds tens of milliseconds each, and a fiche of hundreds held the consumer, the
    live streams and /livez for seconds (audit s67 read-API F1). Other work runs between two."""
    from services.ressources import api as read_api

    client, app = api
    pool = app.state.pipeline.pool
    await feed(kafka, settings, pool)
    second = "ark:/67375/api-atlas-2"
    await send(
        kafka.bootstrap_servers,
        settings.topic(c.CATALOGUE),
        [
            (second, event(c.RESSOURCE_PUBLIEE, "/ministere", ressource(second), time_=at(3))),
            (
                RENNES[0],
                event(
                    c.ABONNEMENT, "/gar", {"resource_id": second, "uai": RENNES[0], "start": "2026-09-01", "end": None}
                ),
            ),
        ],
    )
    evaluated = "SELECT count(*) = 2 FROM alertes WHERE uai = $1 AND kind = 'equipement-incompatible'"
    await eventually(lambda: pool.fetchval(evaluated, RENNES[0]), what="both resources evaluated there")
    order: list[str] = []
    evaluate = read_api.evaluate

    def evaluating(*args):
        order.append("evaluate")
        return evaluate(*args)

    async def other_work():
        while True:
            if order[-1:] != ["other"]:
                order.append("other")
            await asyncio.sleep(0)

    monkeypatch.setattr(read_api, "evaluate", evaluating)
    ticking = asyncio.create_task(other_work())
    try:
        answer = await client.get(f"/etablissements/{RENNES[0]}")
    finally:
        ticking.cancel()
    assert answer.status_code == 200 and len(answer.json()["ressources"]) == 2
    evaluations = [i for i, step in enumerate(order) if step == "evaluate"]
    assert len(evaluations) == 2 and "other" in order[evaluations[0] : evaluations[1]]
