"""equipement-incompatible end to end: the services as real processes, partners sending as
they really do (the collectivité over HTTP with its token, the ministère and the GAR on Kafka as
their principals), an alert raised then resolved by the lot that fixes it."""

import json

import asyncpg
import pytest

import contracts as c
from partner import ce

pytestmark = pytest.mark.e2e

UAI = "0350005" + c.uai_check_letter("0350005")
RESOURCE = "ark:/67375/e2e-manuel-numerique"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


def lot(lot_id: str, kind: str, quantity: int, os: dict | None, minute: int) -> bytes:
    return ce(
        "equipement.lot",
        "/collectivites/departements/035",
        {"uai": UAI, "lot_id": lot_id, "kind": kind, "quantity": quantity, "os": os, "browsers": []},
        minute,
        UAI,
    )


async def test_incompatible_equipment_raises_then_a_fixing_lot_resolves(
    platform, publish, alerts, wait_stored, database_url
):
    publish(
        "referentiel.etablissements.v1",
        UAI,
        ce(
            "referentiel.etablissement",
            "/ministere",
            {
                "uai": UAI,
                "nom": "Collège Anne de Bretagne",
                "type": "college",
                "statut": "public",
                "code_commune": "35238",
                "code_departement": "035",
                "code_academie": "14",
                "code_region": "53",
                "ouvert": True,
            },
            0,
            UAI,
        ),
    )
    await wait_stored(("equipement.etablissements", "ressources.etablissements"), [UAI])
    tablets = lot("tablettes-6e", "tablette", 30, {"name": "iPadOS", "version": "12.5"}, 3)
    publish("equipement.declarations.v1", UAI, tablets)
    await wait_stored(("ressources.recus",), [UAI])
    conn = await asyncpg.connect(database_url)
    try:
        applied = json.loads(tablets)["id"]
        principal = await conn.fetchval("SELECT principal FROM equipement.inbox WHERE id = $1", applied)
    finally:
        await conn.close()
    assert principal == "collectivites-departements-035", "the token's sub is kept with the applied lot"
    publish(
        "ressources.catalogue.v1",
        RESOURCE,
        ce(
            "ressources.ressource-publiee",
            "/ministere",
            {
                "resource_id": RESOURCE,
                "title": "Manuel numérique de SVT",
                "editor": "Éditions test",
                "requirements": [
                    [
                        {"type": "os", "name": "iPad OS", "min_version": "15"},
                        {"type": "os", "name": "Microsoft Windows", "min_version": "10"},
                    ]
                ],
                "tools": [{"kind": "TNI", "min_quantity": 1}],
                "min_bandwidth_mbps": None,
                "needs_ent": False,
                "training": {"competences": [], "tools": []},
            },
            1,
            RESOURCE,
        ),
    )
    publish(
        "ressources.catalogue.v1",
        UAI,
        ce(
            "ressources.abonnement",
            "/gar",
            {"resource_id": RESOURCE, "uai": UAI, "start": "2026-09-01", "end": None},
            2,
            UAI,
        ),
    )

    alerts.wait(lambda s: alerts.of("alerte-levee"))
    [levee] = alerts.of("alerte-levee")
    assert levee["data"]["kind"] == "equipement-incompatible"
    assert levee["subject"] == f"{UAI}/{RESOURCE}" and levee["source"] == "/plateforme/ressources"
    assert {(r["code"], r["detail"]) for r in levee["data"]["reasons"]} == {
        ("os-version", "iPadOS 12.5 < 15"),
        ("outil-manquant", "TNI: 0 < 1"),
    }
    assert levee["data"]["responsable"] == {"type": "departement", "code": "035"}
    assert (levee["data"]["compatible"], levee["data"]["devices"]) == (0, 30)

    # The collectivité updates the tablets and installs a TNI: the alert resolves. Its inventory
    # tool traces the change; the trace must reach the alert through equipement and ressources.
    trace = [("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01".encode())]
    publish(
        "equipement.declarations.v1",
        UAI,
        lot("tablettes-6e", "tablette", 30, {"name": "iPadOS", "version": "17.1"}, 4),
        trace,
    )
    publish("equipement.declarations.v1", UAI, lot("tni-salle-12", "TNI", 1, None, 5), trace)
    alerts.wait(lambda s: alerts.of("alerte-resolue"))
    [resolue] = alerts.of("alerte-resolue")
    assert resolue["data"]["alert_id"] == levee["data"]["alert_id"]
    assert resolue["data"]["resolved_at"] is not None
    assert TRACE_ID in alerts.headers[resolue["id"]]["traceparent"].decode()
    assert len(alerts.of("alerte-levee")) == 1, "one raise for one cause"
    assert {a["data"]["kind"] for a in alerts.seen} == {"equipement-incompatible"}
