"""The dashboards' read API, served for real (uvicorn on a free port) by ressources, fed
through Kafka: every endpoint, filters, pagination, the SSE stream, bad parameters."""

import asyncio
import json
from contextlib import asynccontextmanager

import httpx
import pytest
import uvicorn

import contracts as c
from contracts.internal import COUVERTURES, PROFILS
from deploy.local.ports import free_port
from helpers import at, couverture, event, eventually, profil_connectivite, profil_lot, send, uai
from services.common.runtime.app import build_app
from services.ressources.api import create_api
from services.ressources.app import SPEC

RID = "ark:/67375/api-atlas"


RENNES = [uai(f"03503{n:02d}") for n in range(4)]  # académie 14, département 035
NANTES = uai("0440001")  # académie 17, département 044


def etab(code: str, dep: str, aca: str, reg: str, type_: str = "college") -> dict:
    return event(
        c.ETABLISSEMENT,
        "/ministere",
        {
            "uai": code,
            "nom": f"Collège {code}",
            "type": type_,
            "statut": "public",
            "code_commune": dep[1:] + "238",
            "code_departement": dep,
            "code_academie": aca,
            "code_region": reg,
            "ouvert": True,
        },
        time_=at(0),
    )


def profil(code: str, ipados: str) -> list[tuple[str, dict]]:
    return [
        profil_lot(code, 1, quantity=10, os={"name": "iPadOS", "version": ipados}),
        profil_connectivite(code, 1, 8.0, True),
    ]


def formation(code: str) -> list[tuple[str, dict]]:
    return couverture(code, 1, 10, {"3.4": [5, 2, 1, 0, 0, 0, 0, 0]})


@asynccontextmanager
async def serve_api(settings):
    """ressources as `python -m services.ressources` serves it, in this process: (client, app)."""
    app = create_api(build_app(SPEC, settings), settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            await eventually(lambda: _ok(client), what="the API to answer /health")
            yield client, app
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def api(kafka, settings):
    async with serve_api(settings) as served:
        yield served


async def _ok(client):
    try:
        return (await client.get("/health")).status_code == 200
    except httpx.TransportError:
        return False


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
                    {
                        "resource_id": RID,
                        "title": "Atlas",
                        "editor": "E",
                        "requirements": [[{"type": "os", "name": "iPadOS", "min_version": "15"}]],
                        "tools": [],
                        "min_bandwidth_mbps": 10,
                        "needs_ent": False,
                        "training": {"competences": [{"code": "3.4", "level": 2}], "tools": []},
                    },
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


async def test_alerts_filters_pagination_etablissement_and_resource(kafka, settings, api):
    client, app = api
    pool = app.state.pipeline.pool
    await feed(kafka, settings, pool)
    # Per pair: connectivity 8 < 10 everywhere (5); RENNES[0..1] and NANTES incompatible (3); RENNES
    # (coverage 0.2 < 0.5) under-trained (4); NANTES has no coverage: no formation alert.
    await eventually(lambda: pool.fetchval("SELECT count(*) = 12 FROM alertes"), what="12 alerts")

    everything = (await client.get("/alertes", params={"limit": 500})).json()
    assert everything["total"] == 12
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
    [sub] = detail["ressources"]
    assert sub["resource_id"] == RID and sub["evaluee"] and (sub["compatible"], sub["devices"]) == (0, 10)
    verdicts = sub["verdicts"]
    assert verdicts["equipement-incompatible"]["reasons"] == [{"code": "os-version", "detail": "iPadOS 12.5 < 15"}]
    assert verdicts["equipement-incompatible"]["alert_id"] is not None
    assert verdicts["formation-insuffisante"]["reasons"] == [
        {"code": "formation", "detail": "3.4 niveau 2: 2/10 enseignants"}
    ]
    assert verdicts["ent-indisponible"] == {"alerte": False, "reasons": [], "alert_id": None}

    summary = (await client.get(f"/ressources/{RID}")).json()
    assert summary["total"] == {"evalues": 5, "compatibles": 2, "partiels": 0, "incompatibles": 3, "sous_formes": 4}
    assert summary["par_academie"]["17"] == {
        "evalues": 1,
        "compatibles": 0,
        "partiels": 0,
        "incompatibles": 1,
        "sous_formes": 0,
    }


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


@pytest.mark.parametrize(
    ("path", "params", "status", "fragment"),
    [
        ("/alertes", {"kind": "panne"}, 422, "kind"),
        ("/alertes", {"state": "ouvert"}, 422, "state"),
        ("/alertes", {"limit": 0}, 422, "limit"),
        ("/alertes", {"limit": "beaucoup"}, 422, "limit"),
        ("/alertes", {"offset": -1}, 422, "offset"),
        ("/alertes", {"offset": 2**63}, 422, "offset"),  # beyond int64: PostgreSQL would refuse it
        ("/alertes", {"offset": 1_000_001}, 422, "offset"),
        ("/alertes", {"limit": 501}, 422, "limit"),
        ("/alertes", {"responsable_code": "03\x005"}, 422, "responsable_code"),
        ("/alertes", {"responsable_code": "0\n35"}, 422, "responsable_code"),
        ("/alertes", {"code_academie": "Rennes"}, 422, "code_academie"),
        ("/alertes", {"code_departement": "35"}, 422, "code_departement"),
        ("/etablissements/0350042A", {}, 422, "lettre attendue F"),
        ("/etablissements/0350042F", {}, 404, "référentiel"),
        ("/etablissements/035%0042F", {}, 422, "uai"),
        ("/etablissements/0350042F%00", {}, 422, "uai"),
        ("/ressources/ark:/1/inconnue", {}, 404, "inconnue"),
        ("/ressources/ark:/1/in%00connue", {}, 422, "resource_id"),
        ("/ressources/ark:/1/%01", {}, 422, "resource_id"),
        ("/ressources/" + "x" * 257, {}, 422, "resource_id"),
        ("/ressources/", {}, 422, "resource_id"),
        ("/alertes/flux", {"code_academie": "1\x004"}, 422, "code_academie"),
        ("/alertes/flux", {"kind": "panne"}, 422, "kind"),
    ],
)
async def test_bad_parameters_get_a_4xx_with_a_message(api, path, params, status, fragment):
    client, _ = api
    response = await client.get(path, params=params)
    assert response.status_code == status
    assert fragment in response.text


@pytest.mark.parametrize("value", ["abc", "-1", str(2**63), "1.5", ""])
async def test_bad_last_event_id_gets_a_422_naming_the_header(api, value):
    client, _ = api
    response = await client.get("/alertes/flux", headers={"Last-Event-ID": value})
    assert response.status_code == 422
    assert "Last-Event-ID" in response.text


async def test_openapi_document_lists_every_endpoint(api):
    client, _ = api
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"/alertes", "/alertes/flux", "/etablissements/{uai}", "/ressources/{resource_id}", "/health"} <= set(paths)
