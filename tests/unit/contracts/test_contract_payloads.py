"""The payload models: one valid example per type, the defaults, the keys, the strictness."""

import json

import pytest
from pydantic import ValidationError

import contracts as c

RESOURCE = "ark:/86527/r1"
TYPE_OF_ANNUAIRE = {"Ecole": "ecole", "Collège": "college", "Lycée": "lycee", "EREA": "erea"}


def test_every_type_has_a_model_and_a_valid_example(event_type, examples):
    model = c.PAYLOADS[event_type]
    payload = model.model_validate_json(json.dumps(examples[event_type]))
    assert model.model_validate_json(payload.model_dump_json()) == payload


def test_every_etablissement_of_the_annuaire_is_a_valid_payload(annuaire):
    for row in annuaire:
        c.Etablissement(
            uai=row["Identifiant_de_l_etablissement"],
            nom=row["Nom_etablissement"],
            type=TYPE_OF_ANNUAIRE.get(row["Type_etablissement"], "autre"),
            statut="prive" if row["Statut_public_prive"] == "Privé" else "public",
            code_commune=row["Code_commune"],
            code_departement=row["Code_departement"],
            code_academie=row["Code_academie"],
            code_region=row["Code_region"],
            ouvert=row["etat"] == "OUVERT",
        )


@pytest.mark.parametrize(
    ("type", "entity_key", "key", "subject"),
    [
        (c.ETABLISSEMENT, ("0350122T",), "0350122T", "0350122T"),
        (c.AFFECTATION, ("t-0001_abcd", "0350122T"), "0350122T", "0350122T"),
        (c.FORMATION_SUIVIE, ("t-0001_abcd", "m@g-123"), "t-0001_abcd", "t-0001_abcd"),
        (c.LOT, ("0350122T", "glpi-42"), "0350122T", "0350122T"),
        (c.CONNECTIVITE, ("0350122T",), "0350122T", "0350122T"),
        (c.RESSOURCE_PUBLIEE, ("ark:/86527/r1",), "ark:/86527/r1", "ark:/86527/r1"),
        (c.RESSOURCE_RETIREE, ("ark:/86527/r1",), "ark:/86527/r1", "ark:/86527/r1"),
        (c.ABONNEMENT, ("ark:/86527/r1", "0350122T"), "0350122T", "0350122T"),
        (c.ALERTE_LEVEE, ("0350122T", RESOURCE, "equipement-partiel"), "0350122T", f"0350122T/{RESOURCE}"),
        (c.ALERTE_RESOLUE, ("0350122T", RESOURCE, "equipement-partiel"), "0350122T", f"0350122T/{RESOURCE}"),
    ],
)
def test_entity_record_key_and_subject_follow_the_contract(type, entity_key, key, subject, examples):
    payload = c.PAYLOADS[type].model_validate_json(json.dumps(examples[type]))
    assert (payload.entity_key, payload.key, payload.subject) == (entity_key, key, subject)


def test_omitted_lists_are_empty_and_omitted_nullables_null():
    lot = c.Lot.model_validate_json('{"uai": "0350122T", "lot_id": "tni-1", "kind": "TNI", "quantity": 3}')
    assert (lot.os, lot.browsers) == (None, [])
    res = c.RessourcePubliee.model_validate_json('{"resource_id": "ark:/1", "title": "t", "editor": "e"}')
    assert (res.requirements, res.tools, res.min_bandwidth_mbps, res.needs_ent) == ([], [], None, False)
    assert res.training == c.Formation(competences=[], tools=[])


def test_fields_a_partner_adds_are_ignored_not_refused(examples):
    data = examples[c.CONNECTIVITE] | {"latency_ms": 12}
    assert not hasattr(c.Connectivite.model_validate_json(json.dumps(data)), "latency_ms")


@pytest.mark.parametrize(
    ("type", "change"),
    [
        (c.LOT, {"quantity": -1}),
        (c.LOT, {"quantity": "3"}),
        (c.LOT, {"quantity": 2.5}),
        (c.LOT, {"lot_id": ""}),
        (c.LOT, {"browsers": None}),
        (c.CONNECTIVITE, {"bandwidth_mbps": -0.1}),
        (c.CONNECTIVITE, {"ent": "true"}),
        (c.CONNECTIVITE, {"ent": 1}),
        (c.ETABLISSEMENT, {"type": "Collège"}),
        (c.ETABLISSEMENT, {"statut": "privé"}),
        (c.AFFECTATION, {"start": "01/09/2023"}),
        (c.AFFECTATION, {"start": 1693526400}),
        (c.FORMATION_SUIVIE, {"dispositif": "paf"}),
        (c.RESSOURCE_PUBLIEE, {"requirements": [{"type": "os", "name": "iOS"}]}),
        (c.RESSOURCE_PUBLIEE, {"requirements": [[{"type": "operating system", "name": "iOS"}]]}),
        (c.RESSOURCE_PUBLIEE, {"tools": [{"kind": "tablette", "min_quantity": -1}]}),
        (c.ALERTE_LEVEE, {"kind": "autre"}),
        (c.ALERTE_LEVEE, {"coverage": 1.5}),
        (c.ALERTE_LEVEE, {"raised_at": "2024-03-01T08:00:00"}),
        (c.ALERTE_LEVEE, {"resolved_at": "2024-03-01T09:00:00Z"}),
        (c.ALERTE_LEVEE, {"responsable": {"type": "etat", "code": "x"}}),
        (c.ALERTE_RESOLUE, {"resolved_at": None}),
    ],
)
def test_data_outside_the_schema_is_refused(type, change, examples):
    with pytest.raises(ValidationError):
        c.PAYLOADS[type].model_validate_json(json.dumps(examples[type] | change))


def test_nan_is_not_a_bandwidth(examples):
    with pytest.raises(ValidationError):
        c.Connectivite.model_validate_json(json.dumps(examples[c.CONNECTIVITE]).replace("100", "NaN"))


def test_alert_for_an_etablissement_of_type_autre_has_no_responsable(examples):
    alert = c.AlerteLevee.model_validate_json(json.dumps(examples[c.ALERTE_LEVEE] | {"responsable": None}))
    assert alert.responsable is None


def test_alert_kinds_are_the_five_of_the_contract():
    assert set(c.ALERT_KINDS) == {"equipement-incompatible", "equipement-partiel", "connectivite-insuffisante",
                                  "ent-indisponible", "formation-insuffisante"}  # fmt: skip


def test_payloads_are_immutable(examples):
    lot = c.Lot.model_validate_json(json.dumps(examples[c.LOT]))
    with pytest.raises(ValidationError):
        lot.quantity = 0
