"""Shared examples: one valid `data` per v1 type, and the real annuaire in ../shared/data."""

import copy
import csv
import json
from pathlib import Path

import pytest

import contracts as c

SHARED_DATA = (Path(__file__).parents[3] / "../shared/data").resolve()
UAI = "0350122T"  # Ecole primaire publique les Lucioles, Baulon (annuaire 2023)

EXAMPLES: dict[str, dict] = {
    c.ETABLISSEMENT: {
        "uai": UAI, "nom": "Ecole primaire publique les Lucioles", "type": "ecole", "statut": "public",
        "code_commune": "35016", "code_departement": "035", "code_academie": "14", "code_region": "53",
        "ouvert": True,
    },
    c.AFFECTATION: {"teacher_id": "t-0001_abcd", "uai": UAI, "start": "2023-09-01", "end": None},
    c.FORMATION_SUIVIE: {
        "teacher_id": "t-0001_abcd", "module_id": "m@g-123", "title": "Enseigner avec la tablette",
        "dispositif": "magistere", "completed_on": "2024-01-15",
        "competences": [{"code": "3.2", "level": 4}], "tools": ["tablette"],
    },
    c.LOT: {
        "uai": UAI, "lot_id": "glpi-42", "kind": "tablette", "quantity": 30,
        "os": {"name": "iPadOS", "version": "15.4"}, "browsers": [{"name": "Safari", "version": "15"}],
    },
    c.CONNECTIVITE: {"uai": UAI, "bandwidth_mbps": 100, "ent": True},
    c.RESSOURCE_PUBLIEE: {
        "resource_id": "ark:/86527/r1", "title": "Lumni", "editor": "France TV", "needs_ent": True,
        "requirements": [[{"type": "os", "name": "iPad OS", "min_version": "15", "max_version": None},
                          {"type": "os", "name": "Windows", "min_version": "10"}],
                         [{"type": "browser", "name": "any"}]],
        "tools": [{"kind": "tablette", "min_quantity": 15}], "min_bandwidth_mbps": 8.5,
        "training": {"competences": [{"code": "3.2", "level": 3}], "tools": ["TNI"]},
    },
    c.RESSOURCE_RETIREE: {"resource_id": "ark:/86527/r1"},
    c.ABONNEMENT: {"resource_id": "ark:/86527/r1", "uai": UAI, "start": "2023-09-01", "end": None},
    c.ALERTE_LEVEE: {
        "alert_id": "a-1", "uai": UAI, "resource_id": "ark:/86527/r1", "kind": "equipement-partiel",
        "reasons": [{"code": "os-version", "detail": "iPadOS 12.5 < 15"}], "code_academie": "14",
        "code_departement": "035", "responsable": {"type": "commune", "code": "35016"},
        "compatible": 10, "devices": 30, "coverage": None, "raised_at": "2024-03-01T08:00:00+01:00",
    },
}  # fmt: skip
EXAMPLES[c.ALERTE_RESOLUE] = {**EXAMPLES[c.ALERTE_LEVEE], "coverage": 0.75, "resolved_at": "2024-03-02T08:00:00Z"}
TOPIC_OF = {t: topic for topic, types in c.TOPIC_TYPES.items() for t in types}
SOURCE_OF = {
    c.REFERENTIEL: "/ministere", c.FORMATION: "/rectorats/14", c.EQUIPEMENT: "/collectivites/communes/35016",
    c.CATALOGUE: "/gar", c.ALERTES: "/plateforme/ressources",
}  # fmt: skip


def subject_of(event_type: str, data: object) -> str:
    """The `subject` a partner writes: the entity's key (CONTRACTS.md, Envelope); the UAI when
    `data` does not carry it (a test of broken data)."""
    fields = data if isinstance(data, dict) else {}
    if event_type == c.FORMATION_SUIVIE:
        return str(fields.get("teacher_id", UAI))
    if event_type in (c.RESSOURCE_PUBLIEE, c.RESSOURCE_RETIREE):
        return str(fields.get("resource_id", UAI))
    if event_type in (c.ALERTE_LEVEE, c.ALERTE_RESOLUE):
        return f"{fields.get('uai')}/{fields.get('resource_id')}"
    return str(fields.get("uai", UAI))


def record(event_type: str, data: dict | None = None, /, **envelope) -> bytes:
    """A record value as a partner would send it; `envelope` overrides or (with ...) removes."""
    data = EXAMPLES.get(event_type) if data is None else data
    event = {
        "specversion": "1.0", "id": "evt-1", "source": SOURCE_OF[TOPIC_OF.get(event_type, c.REFERENTIEL)],
        "type": event_type, "time": "2024-03-01T10:00:00+01:00", "subject": subject_of(event_type, data),
        "datacontenttype": "application/json", "data": data,
    }  # fmt: skip
    event.update(envelope)
    return json.dumps({k: v for k, v in event.items() if v is not ...}).encode()


def read_csv(name: str) -> list[dict[str, str]]:
    with open(SHARED_DATA / name, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f, delimiter=";"))


ANNUAIRE = read_csv("annuaire-education-ille-et-vilaine-2023.csv")


@pytest.fixture
def make_record():
    return record


@pytest.fixture
def examples() -> dict[str, dict]:
    return copy.deepcopy(EXAMPLES)


@pytest.fixture(params=sorted(c.PAYLOADS))
def event_type(request) -> str:
    return request.param


@pytest.fixture(params=[row["Identifiant_de_l_etablissement"] for row in ANNUAIRE])
def annuaire_uai(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def annuaire() -> list[dict[str, str]]:
    return ANNUAIRE


@pytest.fixture(scope="session")
def colleges() -> list[dict[str, str]]:
    return read_csv("colleges-france-geolocalisation-2024.csv")
