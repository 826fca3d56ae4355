"""A realistic morning for the demo, on a synthetic référentiel of one département (035).

The ministère publishes a few hundred établissements; each collectivité declares the
equipment of those it equips (communes the écoles, the département the collèges, the région
the lycées); the rectorat of Rennes declares affectations and trainings; the ministère
publishes three resources and the GAR subscribes établissements. Every alert kind appears.
Then the département replaces its old collège computers and alerts resolve.

Events are plain CloudEvents JSON, sent as each partner really sends them (`partenaires.py`);
the same seed gives the same scenario.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import contracts as c
from contracts import Etablissement
from deploy.referentiel.generator import generate

DEPARTEMENT = "035"
SEED = 2026
RECTORAT = "/rectorats/14"
MANUEL, ROBOTS, ATLAS = "ark:/67375/demo-manuel-svt", "ark:/67375/demo-robots-cycle3", "ark:/67375/demo-atlas"
Record = tuple[str, str, bytes]  # topic, key, value


def referentiel(count: int = 300) -> list[Etablissement]:
    return list(generate(count, SEED, departement=DEPARTEMENT))


def _event(type_: str, source: str, data: dict, subject: str) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": source,
            "type": type_,
            "time": datetime.now(UTC).isoformat(),
            "subject": subject,
            "datacontenttype": "application/json",
            "data": data,
        }
    ).encode()


def equipeur(e: Etablissement) -> str | None:
    """The collectivité that equips `e` (CONTRACTS.md, who may declare what)."""
    return {
        "ecole": f"/collectivites/communes/{e.code_commune}",
        "college": f"/collectivites/departements/{e.code_departement}",
        "lycee": f"/collectivites/regions/{e.code_region}",
        "erea": f"/collectivites/regions/{e.code_region}",
    }.get(e.type)


def _equipeur_of(e: Etablissement) -> str:
    source = equipeur(e)
    assert source is not None, f"{e.uai}: only an établissement someone equips declares equipment"
    return source


def _lot(
    e: Etablissement,
    lot_id: str,
    kind: str,
    quantity: int,
    os: tuple[str, str] | None,
    browsers: Sequence[tuple[str, str]] = (),
) -> Record:
    data = {
        "uai": e.uai,
        "lot_id": lot_id,
        "kind": kind,
        "quantity": quantity,
        "os": {"name": os[0], "version": os[1]} if os else None,
        "browsers": [{"name": n, "version": v} for n, v in browsers],
    }
    return c.EQUIPEMENT, e.uai, _event(c.LOT, _equipeur_of(e), data, e.uai)


def declarations(etabs: list[Etablissement]) -> Iterator[Record]:
    """What collectivités and the rectorat declare: lots, connectivity, affectations, trainings."""
    rng = random.Random(SEED)
    for e in etabs:
        if not e.ouvert or equipeur(e) is None:
            continue
        if e.type == "ecole":
            version = rng.choice(["12.5", "16.7", "17.1"])
            yield _lot(e, "tablettes", "tablette", rng.randint(8, 16), ("iPadOS", version), [("Safari", version)])
        elif e.type == "college":
            yield _lot(e, "salle-info", "ordinateur", rng.randint(15, 30), ("Windows", "11"), [("Edge", "120")])
            if rng.random() < 0.4:  # an old room still on Windows 7
                yield _lot(
                    e,
                    "salle-info-2",
                    "ordinateur",
                    rng.randint(20, 30),
                    ("Windows", "7"),
                    [("Internet Explorer", "11")],
                )
        else:
            yield _lot(
                e, "portables", "ordinateur portable", rng.randint(20, 35), ("Ubuntu", "22.04"), [("Firefox", "128")]
            )
            if rng.random() < 0.5:
                yield _lot(e, "robots", "robot programmable", rng.randint(2, 6), None)
        if rng.random() < 0.8:
            yield _lot(e, "tni", "TNI", rng.randint(1, 4), None)
        link = {"uai": e.uai, "bandwidth_mbps": rng.choice([4, 8, 30, 100, 1000]), "ent": rng.random() < 0.85}
        yield c.EQUIPEMENT, e.uai, _event(c.CONNECTIVITE, _equipeur_of(e), link, e.uai)
        for n in range(rng.randint(4, 12)):
            teacher = f"ens-{e.uai}-{n:02d}"
            yield (
                c.FORMATION,
                e.uai,
                _event(
                    c.AFFECTATION,
                    RECTORAT,
                    {"teacher_id": teacher, "uai": e.uai, "start": "2026-09-01", "end": None},
                    e.uai,
                ),
            )
            if rng.random() < (0.7 if e.type == "lycee" else 0.3):
                yield (
                    c.FORMATION,
                    teacher,
                    _event(
                        c.FORMATION_SUIVIE,
                        RECTORAT,
                        {
                            "teacher_id": teacher,
                            "module_id": "magistere-robotique",
                            "title": "Robotique pédagogique",
                            "dispositif": "magistere",
                            "completed_on": "2026-10-01",
                            "competences": [{"code": "3.4", "level": rng.randint(2, 4)}],
                            "tools": ["robot programmable"],
                        },
                        teacher,
                    ),
                )


def catalogue(etabs: list[Etablissement]) -> Iterator[Record]:
    """Three resources from the ministère, and the GAR's subscriptions."""
    resources: dict[str, dict[str, Any]] = {
        MANUEL: {
            "title": "Manuel numérique SVT cycle 4",
            "editor": "Éditions Exemple",
            "requirements": [
                [
                    {"type": "os", "name": "Windows", "min_version": "10"},
                    {"type": "os", "name": "iPad OS", "min_version": "15"},
                    {"type": "os", "name": "Linux"},
                ]
            ],
            "tools": [{"kind": "TNI", "min_quantity": 1}],
            "needs_ent": True,
        },
        ROBOTS: {
            "title": "Programmer des robots au cycle 3",
            "editor": "Canopé",
            "tools": [{"kind": "robot programmable", "min_quantity": 2}],
            "training": {"competences": [{"code": "3.4", "level": 3}], "tools": ["robot programmable"]},
        },
        ATLAS: {
            "title": "Atlas géographique en ligne",
            "editor": "IGN Éducation",
            "requirements": [
                [
                    {"type": "browser", "name": "Firefox", "min_version": "115"},
                    {"type": "browser", "name": "Google Chrome", "min_version": "110"},
                    {"type": "browser", "name": "Edge", "min_version": "110"},
                    {"type": "browser", "name": "Safari", "min_version": "16"},
                ]
            ],
            "min_bandwidth_mbps": 20,
        },
    }
    for rid, data in resources.items():
        yield c.CATALOGUE, rid, _event(c.RESSOURCE_PUBLIEE, "/ministere", {"resource_id": rid, **data}, rid)
    subscribed = {MANUEL: ("college", "ecole"), ROBOTS: ("lycee", "college"), ATLAS: ("ecole", "college", "lycee")}
    for e in etabs:
        for rid, types in subscribed.items():
            if e.type in types:
                yield (
                    c.CATALOGUE,
                    e.uai,
                    _event(
                        c.ABONNEMENT,
                        "/gar",
                        {"resource_id": rid, "uai": e.uai, "start": "2026-09-01", "end": None},
                        e.uai,
                    ),
                )


def renovation(etabs: list[Etablissement]) -> Iterator[Record]:
    """The département moves its collèges' old rooms (Windows 7, `declarations`) to Windows 11 and
    a recent browser: the same rooms, the same computers (it gave every collège a new room of
    another size, the narration saying "replaces")."""
    by_uai = {e.uai: e for e in etabs}
    for _, uai, value in declarations(etabs):
        data = json.loads(value)["data"]
        if data.get("lot_id") == "salle-info-2":
            yield _lot(
                by_uai[uai], "salle-info-2", "ordinateur", data["quantity"], ("Windows", "11"), [("Edge", "120")]
            )
