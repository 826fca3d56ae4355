"""Boundaries of CONTRACTS.md "Alerts" that no test pinned (audit s61)."""

from datetime import timedelta

from memory_stores import RessourcesMemory
from test_lifecycle import ETAB, INCOMPATIBLE, NOW, stored
from test_rules import UAI, browser_req, lot, os_req, profil, ressource
from test_use_cases import announced, catalogue, college, ressources
from test_use_cases import profil as profil_event

import contracts as c
from contracts import Competence, Formation
from contracts.internal import CouvertureFormation
from services.ressources.lifecycle import Held, transitions
from services.ressources.rules import evaluate, is_evaluated


def details(e, kind):
    return [(r.code, r.detail) for r in e.alerts[kind]]


def test_training_reasons_name_only_what_is_below_the_threshold():
    """coverage < threshold; a requirement exactly at it (5/10 at 0.5) is not a shortfall."""
    r = ressource(
        training=Formation(
            competences=[Competence(code="3.4", level=3), Competence(code="3.4", level=4)], tools=["TNI"]
        )
    )
    cov = CouvertureFormation(uai=UAI, enseignants=10, competences={"3.4": [9, 7, 5, 2, 0, 0, 0, 0]}, outils={"tni": 5})
    e = evaluate(r, profil(lot("a", 1, ("Windows", "11"))), cov)
    assert e.coverage == 0.2
    assert details(e, "formation-insuffisante") == [("formation", "3.4 niveau 4: 2/10 enseignants")]


def test_a_version_reason_names_the_software_by_its_usual_spelling():
    """The contract's example `iPadOS 12.5 < 15`, whatever synonym the collectivité declared."""
    e = evaluate(ressource([[os_req("iPadOS", "15")]]), profil(lot("L1", 30, ("iPad OS", "12.5"))))
    assert details(e, "equipement-incompatible") == [("os-version", "iPadOS 12.5 < 15")]
    e = evaluate(
        ressource([[browser_req("Firefox", "115")]]),
        profil(lot("L1", 3, ("Windows", "11"), [("mozilla firefox", "102")])),
    )
    assert details(e, "equipement-incompatible") == [("browser-version", "Firefox 102 < 115")]


def test_an_os_entry_reads_only_the_os_and_a_browser_entry_only_the_browsers():
    """`a os entry matches the lot's OS, a browser entry matches one of its browsers`."""
    as_os = lot("a", 2, ("Chrome", "120"))  # an OS spelled like a browser
    assert evaluate(ressource([[browser_req("Chrome")]]), profil(as_os)).compatible == 0
    as_browser = lot("b", 2, ("Windows", "11"), [("Windows", "11")])
    assert evaluate(ressource([[os_req("Linux")], [browser_req("Windows")]]), profil(as_browser)).compatible == 0
    assert evaluate(ressource([[os_req("Windows")], [browser_req("Windows")]]), profil(as_browser)).compatible == 2


def test_a_lot_without_os_is_no_device_even_with_browsers():
    e = evaluate(ressource([[browser_req("Firefox")]]), profil(lot("a", 5, None, [("Firefox", "128")])))
    assert (e.compatible, e.devices) == (0, 0) and [r.code for r in e.alerts["equipement-incompatible"]] == [
        "aucun-poste"
    ]


def test_a_raise_after_a_resolve_has_its_own_raised_at():
    [first] = transitions(UAI, "r", ETAB, INCOMPATIBLE, {}, NOW)
    later = NOW + timedelta(days=3)
    [again] = transitions(
        UAI, "r", ETAB, INCOMPATIBLE, {"equipement-incompatible": Held(False, 1, stored(first.raised))}, later
    )
    assert again.raised and again.raised["raised_at"] == later


def test_an_unknown_etablissement_is_not_evaluated_and_its_open_alerts_resolve():
    assert not is_evaluated(None, None, True)
    [first] = transitions(UAI, "r", ETAB, INCOMPATIBLE, {}, NOW)
    [r] = transitions(UAI, "r", None, None, {"equipement-incompatible": Held(True, 1, stored(first.raised))}, NOW)
    assert r.resolved


def test_the_responsable_is_the_collectivite_that_equips_each_type():
    expected = {
        "ecole": {"type": "commune", "code": "35238"},
        "college": {"type": "departement", "code": "035"},
        "lycee": {"type": "region", "code": "53"},
        "erea": {"type": "region", "code": "53"},
        "autre": None,
    }
    for type_, want in expected.items():
        [t] = transitions(UAI, "r", ETAB.model_copy(update={"type": type_}), INCOMPATIBLE, {}, NOW)
        got = t.raised["responsable"]
        assert (None if got is None else got.model_dump()) == want, type_


async def test_each_raise_counts_one_more_cycle_and_has_its_own_event_id():
    store = RessourcesMemory([college()])
    await ressources(store, [profil_event(1, "12.5")], set())
    first = await ressources(store, catalogue(), set())
    resolve = await ressources(store, [profil_event(2, "17")], set())
    again = await ressources(store, [profil_event(3, "12.5")], set())
    assert [announced(x) for x in (first, resolve, again)] == [
        [(c.ALERTE_LEVEE, "equipement-incompatible")],
        [(c.ALERTE_RESOLUE, "equipement-incompatible")],
        [(c.ALERTE_LEVEE, "equipement-incompatible")],
    ]
    first, resolve, again = first.outgoing, resolve.outgoing, again.outgoing
    [held] = store.alerts[(first[0].event.data["uai"], first[0].event.data["resource_id"])].values()
    assert held.ouverte and held.cycle == 2
    assert len({o.event.id for o in first + resolve + again}) == 3
