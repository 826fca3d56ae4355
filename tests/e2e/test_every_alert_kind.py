"""Each alert kind of CONTRACTS.md end to end, with the services as real processes and the
partners sending as they really do (collectivité and rectorat over HTTP with their tokens, the
ministère and the GAR on Kafka as their principals): raised with the reasons a person acts on,
then resolved by the event that fixes its cause. One établissement and one resource per kind,
in one run."""

import pytest

import contracts as c
from contracts.internal import COUVERTURE_ENSEIGNANTS, PROFIL_CONNECTIVITE, PROFIL_LOT
from partner import ce, scratch_suivi

pytestmark = pytest.mark.e2e

DEP = "/collectivites/departements/035"
RECTORAT = "/rectorats/14"


def uai(n: int) -> str:
    digits = f"03520{n:02d}"
    return digits + c.uai_check_letter(digits)


PARTIEL, DEBIT, ENT, FORMATION = uai(1), uai(2), uai(3), uai(4)
TEACHERS = ["ens-form-0001", "ens-form-0002"]


def college(code: str) -> bytes:
    return ce(
        "referentiel.etablissement",
        "/ministere",
        {
            "uai": code,
            "nom": f"Collège {code}",
            "type": "college",
            "statut": "public",
            "code_commune": "35238",
            "code_departement": "035",
            "code_academie": "14",
            "code_region": "53",
            "ouvert": True,
        },
        0,
        code,
    )


def lot(code: str, lot_id: str, quantity: int, os: str, version: str, minute: int) -> bytes:
    return ce(
        "equipement.lot",
        DEP,
        {
            "uai": code,
            "lot_id": lot_id,
            "kind": "ordinateur",
            "quantity": quantity,
            "os": {"name": os, "version": version},
            "browsers": [],
        },
        minute,
        code,
    )


def link(code: str, mbps: float, ent: bool, minute: int) -> bytes:
    return ce("equipement.connectivite", DEP, {"uai": code, "bandwidth_mbps": mbps, "ent": ent}, minute, code)


def resource(rid: str, **kw) -> bytes:
    data = {
        "resource_id": rid,
        "title": rid,
        "editor": "Éditeur",
        "requirements": [],
        "tools": [],
        "min_bandwidth_mbps": None,
        "needs_ent": False,
        "training": {"competences": [], "tools": []},
        **kw,
    }
    return ce("ressources.ressource-publiee", "/ministere", data, 1, rid)


def subscribe(rid: str, code: str) -> bytes:
    return ce(
        "ressources.abonnement", "/gar", {"resource_id": rid, "uai": code, "start": "2026-09-01", "end": None}, 2, code
    )


@pytest.mark.parametrize("replicas", [1, 2], ids=["one replica", "two replicas per service"])
async def test_each_kind_is_raised_with_its_reasons_then_resolved(platform, publish, alerts, wait_stored, wait_true):
    """With two replicas of each service in one group (partitions split between them, no
    schema-wide lock), exactly the alerts of one replica: each raised once, then resolved."""
    everyone = [PARTIEL, DEBIT, ENT, FORMATION]
    for code in everyone:
        publish(c.REFERENTIEL, code, college(code))
    await wait_stored(("equipement.etablissements", "formation.etablissements", "ressources.etablissements"), everyone)

    # What the collectivité and the rectorat declared before the resources arrive.
    publish(c.EQUIPEMENT, PARTIEL, lot(PARTIEL, "neufs", 3, "Windows", "11", 3))
    publish(c.EQUIPEMENT, PARTIEL, lot(PARTIEL, "anciens", 7, "Windows", "7", 3))
    for code in (DEBIT, ENT, FORMATION):
        publish(c.EQUIPEMENT, code, lot(code, "salle-info", 15, "Ubuntu", "22.04", 3))
        publish(c.EQUIPEMENT, code, link(code, 8, code != ENT, 3))
    for teacher in TEACHERS:
        publish(
            c.FORMATION,
            FORMATION,
            ce(
                "formation.affectation",
                RECTORAT,
                {"teacher_id": teacher, "uai": FORMATION, "start": "2026-09-01", "end": None},
                3,
                FORMATION,
            ),
        )
    # Profiles and coverages are republished as each declaration lands: wait for the final ones,
    # or an alert could be raised on an intermediate state (0/1 teacher) and only updated later.
    await wait_true(f"SELECT count(*) = 2 FROM ressources.recus WHERE type = '{PROFIL_LOT}' AND uai = $1", PARTIEL)
    await wait_true(
        f"SELECT count(*) = 3 FROM ressources.recus WHERE type = '{PROFIL_CONNECTIVITE}' AND uai = ANY($1::text[])",
        [DEBIT, ENT, FORMATION],
    )
    await wait_true(
        f"SELECT (content->>'enseignants')::int = 2 FROM ressources.recus "
        f"WHERE type = '{COUVERTURE_ENSEIGNANTS}' AND uai = $1",
        FORMATION,
    )

    publish(
        c.CATALOGUE,
        "ark:/1/partiel",
        resource("ark:/1/partiel", requirements=[[{"type": "os", "name": "Microsoft Windows", "min_version": "10"}]]),
    )
    publish(c.CATALOGUE, "ark:/1/debit", resource("ark:/1/debit", min_bandwidth_mbps=20))
    publish(c.CATALOGUE, "ark:/1/ent", resource("ark:/1/ent", needs_ent=True))
    publish(
        c.CATALOGUE,
        "ark:/1/formation",
        resource("ark:/1/formation", training={"competences": [{"code": "3.4", "level": 3}], "tools": []}),
    )
    for rid, code in (
        ("ark:/1/partiel", PARTIEL),
        ("ark:/1/debit", DEBIT),
        ("ark:/1/ent", ENT),
        ("ark:/1/formation", FORMATION),
    ):
        publish(c.CATALOGUE, code, subscribe(rid, code))

    alerts.wait(lambda _: len(alerts.of("alerte-levee")) >= 4)
    raised = {a["data"]["kind"]: a["data"] for a in alerts.of("alerte-levee")}
    assert set(raised) == {
        "equipement-partiel",
        "connectivite-insuffisante",
        "ent-indisponible",
        "formation-insuffisante",
    }
    assert raised["equipement-partiel"]["uai"] == PARTIEL
    assert raised["equipement-partiel"]["reasons"][0] == {
        "code": "part-compatible",
        "detail": "3/10 postes compatibles < 50%",
    }
    assert {"code": "os-version", "detail": "Windows 7 < 10"} in raised["equipement-partiel"]["reasons"]
    assert (raised["equipement-partiel"]["compatible"], raised["equipement-partiel"]["devices"]) == (3, 10)
    assert raised["connectivite-insuffisante"]["reasons"] == [{"code": "debit", "detail": "8 Mbit/s < 20"}]
    assert raised["ent-indisponible"]["uai"] == ENT and raised["ent-indisponible"]["reasons"][0]["code"] == "ent"
    assert raised["formation-insuffisante"]["reasons"] == [
        {"code": "formation", "detail": "3.4 niveau 3: 0/2 enseignants"}
    ]
    assert raised["formation-insuffisante"]["coverage"] == 0

    # Each cause fixed by the partner who owns it.
    publish(c.EQUIPEMENT, PARTIEL, lot(PARTIEL, "anciens", 7, "Windows", "10", 10))
    publish(c.EQUIPEMENT, DEBIT, link(DEBIT, 100, True, 10))
    publish(c.EQUIPEMENT, ENT, link(ENT, 8, True, 10))
    for teacher in TEACHERS:
        publish(c.FORMATION, teacher, scratch_suivi(teacher, RECTORAT, 10))

    alerts.wait(lambda _: len(alerts.of("alerte-resolue")) >= 4)
    resolved = {a["data"]["kind"]: a["data"] for a in alerts.of("alerte-resolue")}
    assert {k: d["alert_id"] for k, d in resolved.items()} == {k: d["alert_id"] for k, d in raised.items()}
    assert len(alerts.of("alerte-levee")) == 4, "nothing raised twice"
    assert len(alerts.of("alerte-resolue")) == 4, "nothing resolved twice"
