"""Who may declare what (CONTRACTS.md), each declarant inside and outside its competence."""

from datetime import date

import pytest

import contracts as c
from contracts import Etablissement, make_event, parse_source
from services.common.rules.rights import HORS_COMPETENCE, UAI_INCONNU, check


def etab(uai_digits: str, type_: str, commune="35238", dep="035", aca="14", reg="53") -> Etablissement:
    uai = uai_digits + c.uai_check_letter(uai_digits)
    return Etablissement(
        uai=uai,
        nom="x",
        type=type_,
        statut="public",
        code_commune=commune,
        code_departement=dep,
        code_academie=aca,
        code_region=reg,
        ouvert=True,
    )


ECOLE, COLLEGE, LYCEE, EREA, AUTRE = (
    etab("0350001", "ecole"),
    etab("0350002", "college"),
    etab("0350003", "lycee"),
    etab("0350004", "erea"),
    etab("0350005", "autre"),
)


def lot_from(source: str, where: Etablissement):
    data = c.Lot(uai=where.uai, lot_id="L", kind="tablette", quantity=1, os=None, browsers=[])
    return make_event(c.LOT, data, source=source)


def verdict(event, where):
    refusal = check(event, parse_source(event.source), where)
    return refusal.code if refusal else "ok"


@pytest.mark.parametrize(
    ("source", "where", "expected"),
    [
        ("/collectivites/communes/35238", ECOLE, "ok"),
        ("/collectivites/communes/35001", ECOLE, HORS_COMPETENCE),  # another commune
        ("/collectivites/communes/35238", COLLEGE, HORS_COMPETENCE),  # communes equip écoles only
        ("/collectivites/departements/035", COLLEGE, "ok"),
        ("/collectivites/departements/022", COLLEGE, HORS_COMPETENCE),
        ("/collectivites/departements/035", LYCEE, HORS_COMPETENCE),
        ("/collectivites/regions/53", LYCEE, "ok"),
        ("/collectivites/regions/53", EREA, "ok"),
        ("/collectivites/regions/52", LYCEE, HORS_COMPETENCE),
        ("/collectivites/regions/53", COLLEGE, HORS_COMPETENCE),
        ("/collectivites/regions/53", AUTRE, HORS_COMPETENCE),  # nobody equips type autre
        ("/rectorats/14", COLLEGE, HORS_COMPETENCE),
        ("/ministere", COLLEGE, HORS_COMPETENCE),
    ],
)
def test_lot_declarants(source, where, expected):
    assert verdict(lot_from(source, where), where) == expected


def test_unknown_uai_is_refused_for_a_declarant_of_the_right_kind():
    event = lot_from("/collectivites/departements/035", COLLEGE)
    assert verdict(event, None) == UAI_INCONNU


def affectation(source: str, where: Etablissement):
    return make_event(
        c.AFFECTATION, c.Affectation(teacher_id="ens-00000001", uai=where.uai, start=date(2026, 9, 1)), source=source
    )


def test_rectorat_declares_affectations_in_its_academie_only():
    assert verdict(affectation("/rectorats/14", COLLEGE), COLLEGE) == "ok"
    assert verdict(affectation("/rectorats/17", COLLEGE), COLLEGE) == HORS_COMPETENCE
    assert verdict(affectation("/collectivites/departements/035", COLLEGE), COLLEGE) == HORS_COMPETENCE


def test_referentiel_and_catalogue_writers():
    ref = make_event(c.ETABLISSEMENT, COLLEGE, source="/gar")
    assert verdict(ref, None) == HORS_COMPETENCE
    assert verdict(make_event(c.ETABLISSEMENT, COLLEGE, source="/ministere"), None) == "ok"
    retrait = c.RessourceRetiree(resource_id="ark:/1/x")
    assert verdict(make_event(c.RESSOURCE_RETIREE, retrait, source="/gar"), None) == "ok"
    assert verdict(make_event(c.RESSOURCE_RETIREE, retrait, source="/rectorats/14"), None) == HORS_COMPETENCE


def connectivite_from(source: str, where: Etablissement):
    return make_event(c.CONNECTIVITE, c.Connectivite(uai=where.uai, bandwidth_mbps=100, ent=True), source=source)


@pytest.mark.parametrize(
    ("source", "where", "expected"),
    [
        ("/collectivites/communes/35238", ECOLE, "ok"),
        ("/collectivites/communes/35238", COLLEGE, HORS_COMPETENCE),  # a collège's network: its département's
        ("/collectivites/departements/035", COLLEGE, "ok"),
        ("/collectivites/departements/035", LYCEE, HORS_COMPETENCE),
        ("/collectivites/regions/53", LYCEE, "ok"),
        ("/collectivites/regions/53", AUTRE, HORS_COMPETENCE),
        ("/rectorats/14", ECOLE, HORS_COMPETENCE),
        ("/gar", ECOLE, HORS_COMPETENCE),
    ],
)
def test_connectivite_is_declared_by_the_collectivite_that_equips_the_etablissement(source, where, expected):
    """The contract's competence holds for the network as for the lots (audit helper-188 7a)."""
    assert verdict(connectivite_from(source, where), where) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("/rectorats/14", "ok"),
        ("/rectorats/17", "ok"),  # a training is a teacher's, not an établissement's: any rectorat
        ("/collectivites/departements/035", HORS_COMPETENCE),
        ("/collectivites/communes/35238", HORS_COMPETENCE),
        ("/ministere", HORS_COMPETENCE),
        ("/gar", HORS_COMPETENCE),
    ],
)
def test_only_rectorats_declare_trainings(source, expected):
    """ "Only rectorats write formation.declarations.v1" holds for formation-suivie too (audit
    helper-188 7b)."""
    formation = c.FormationSuivie(
        teacher_id="ens-00000001",
        module_id="M1",
        title="Tableau numérique",
        dispositif="magistere",
        completed_on=date(2026, 10, 1),
    )
    assert verdict(make_event(c.FORMATION_SUIVIE, formation, source=source), None) == expected
