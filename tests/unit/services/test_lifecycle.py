"""Raise when a condition becomes true, resolve when it stops or the pair leaves evaluation."""

from datetime import UTC, datetime, timedelta

import pytest
from pydantic_core import to_json

from contracts import Etablissement, Reason
from contracts._base import MAX_TEXT
from services.ressources.lifecycle import Content, Held, alert_id, transitions
from services.ressources.rules import Evaluation

UAI, RID = "0350002M", "ark:/1/r"
NOW = datetime(2026, 9, 1, 8, tzinfo=UTC)
ETAB = Etablissement(
    uai=UAI,
    nom="x",
    type="college",
    statut="public",
    code_commune="35238",
    code_departement="035",
    code_academie="14",
    code_region="53",
    ouvert=True,
)


def stored(content: Content) -> str:
    """An alert's content as the store holds it."""
    return to_json(content).decode()


INCOMPATIBLE = Evaluation({"equipement-incompatible": [Reason(code="os-version", detail="iPadOS 12.5 < 15")]}, 0, 30)


def test_a_new_condition_raises_once_then_stays_quiet():
    [t] = transitions(UAI, RID, ETAB, INCOMPATIBLE, {}, NOW)
    assert t.raised and t.raised["alert_id"] == alert_id(UAI, RID, "equipement-incompatible")
    assert t.raised["responsable"].model_dump() == {"type": "departement", "code": "035"}
    held = {"equipement-incompatible": Held(True, 1, stored(t.raised))}
    assert transitions(UAI, RID, ETAB, INCOMPATIBLE, held, NOW) == []


def test_changed_reasons_update_without_raising_again():
    [t] = transitions(UAI, RID, ETAB, INCOMPATIBLE, {}, NOW)
    held = {"equipement-incompatible": Held(True, 1, stored(t.raised))}
    other = Evaluation({"equipement-incompatible": [Reason(code="outil-manquant", detail="TNI: 0 < 1")]}, 30, 30)
    [u] = transitions(UAI, RID, ETAB, other, held, NOW)
    assert u.updated and not u.raised and u.updated["raised_at"] == t.raised["raised_at"]


def test_condition_gone_or_pair_not_evaluated_resolves():
    [t] = transitions(UAI, RID, ETAB, INCOMPATIBLE, {}, NOW)
    held = {"equipement-incompatible": Held(True, 1, stored(t.raised))}
    for evaluation in (Evaluation({}, 30, 30), None):
        [r] = transitions(UAI, RID, ETAB, evaluation, held, NOW)
        assert r.resolved and r.resolved["resolved_at"] == NOW and r.resolved["alert_id"] == t.raised["alert_id"]


def test_an_alert_raised_by_a_replica_whose_clock_was_ahead_never_resolves_before_its_raise():
    """Each replica stamps with its own clock: one behind resolved an alert another had raised,
    `resolved_at` before `raised_at` (a negative duration for whoever computes one)."""
    ahead = NOW + timedelta(seconds=40)
    [t] = transitions(UAI, RID, ETAB, INCOMPATIBLE, {}, ahead)
    held = {"equipement-incompatible": Held(True, 1, stored(t.raised))}
    [r] = transitions(UAI, RID, ETAB, None, held, NOW)
    assert r.resolved["resolved_at"] == r.resolved["raised_at"] == ahead


def test_an_alert_moved_since_its_raise_resolves_where_it_was_raised():
    """Its établissement moved to another département: the stored content says the new one (the
    read API's), the resolution the one of its raise (a dashboard filtering on it saw the raise)."""
    [t] = transitions(UAI, RID, ETAB, INCOMPATIBLE, {}, NOW)
    moved = ETAB.model_copy(update={"code_departement": "022"})
    [u] = transitions(UAI, RID, moved, INCOMPATIBLE, {"equipement-incompatible": Held(True, 1, stored(t.raised))}, NOW)
    assert u.updated["code_departement"] == "022"
    raised_at = (
        '{"code_academie": "14", "code_departement": "035", "responsable": {"type": "departement", "code": "035"}}'
    )
    held = {"equipement-incompatible": Held(True, 1, stored(u.updated), raised_at)}
    [r] = transitions(UAI, RID, moved, Evaluation({}, 30, 30), held, NOW)
    assert (r.resolved["code_departement"], r.resolved["responsable"]["code"]) == ("035", "035")
    assert stored(r.resolved) == stored({**t.raised, "resolved_at": NOW}), "the raise's content, resolved"


def test_an_alert_a_stricter_rule_would_refuse_now_resolves_as_it_was_raised():
    """Raised before a rule made an identifier's bound stricter (resource_id at most MAX_TEXT
    characters since 30 November 2026): its resolution repeats what was announced, unvalidated,
    where validating it failed and stopped the batch, or the rebuild, that resolved it."""
    long_rid = "ark:/1/" + "r" * MAX_TEXT
    [t] = transitions(UAI, long_rid, ETAB, INCOMPATIBLE, {}, NOW)
    [r] = transitions(UAI, long_rid, ETAB, None, {"equipement-incompatible": Held(True, 1, stored(t.raised))}, NOW)
    assert stored(r.resolved) == stored({**t.raised, "resolved_at": NOW})


def test_resolved_alert_raises_again_with_the_same_id():
    [t] = transitions(UAI, RID, ETAB, INCOMPATIBLE, {}, NOW)
    held = {"equipement-incompatible": Held(False, 1, stored(t.raised))}
    [again] = transitions(UAI, RID, ETAB, INCOMPATIBLE, held, NOW)
    assert again.raised and again.raised["alert_id"] == t.raised["alert_id"]


def test_type_autre_has_no_responsable():
    autre = ETAB.model_copy(update={"type": "autre"})
    [t] = transitions(UAI, RID, autre, INCOMPATIBLE, {}, NOW)
    assert t.raised["responsable"] is None


OS_16 = [Reason(code="os-version", detail="iPadOS 12.5 < 16")]
CHANGES = {
    "reasons": (ETAB, Evaluation({"equipement-incompatible": OS_16}, 0, 30)),
    "compatible": (ETAB, Evaluation(INCOMPATIBLE.alerts, 1, 30)),
    "devices": (ETAB, Evaluation(INCOMPATIBLE.alerts, 0, 31)),
    "coverage": (ETAB, Evaluation(INCOMPATIBLE.alerts, 0, 30, 0.5)),
    "code_academie": (ETAB.model_copy(update={"code_academie": "15"}), INCOMPATIBLE),
    "code_departement": (ETAB.model_copy(update={"code_departement": "022"}), INCOMPATIBLE),  # and responsable
    "responsable": (ETAB.model_copy(update={"type": "lycee"}), INCOMPATIBLE),
}


@pytest.mark.parametrize("field", CHANGES)
def test_an_open_alert_is_updated_when_any_field_differs_from_what_is_stored(field):
    """Held alerts are compared by their stored JSON's plain values: each field counts, and an
    open alert keeps its raised_at."""
    [t] = transitions(UAI, RID, ETAB, INCOMPATIBLE, {}, NOW - timedelta(days=1))
    held = {"equipement-incompatible": Held(True, 1, stored(t.raised))}
    assert transitions(UAI, RID, ETAB, INCOMPATIBLE, held, NOW) == []
    etab, evaluation = CHANGES[field]
    [u] = transitions(UAI, RID, etab, evaluation, held, NOW)
    assert u.updated and u.updated[field] != t.raised[field]
    changed = {field, "responsable"} if field == "code_departement" else {field}
    assert {k: v for k, v in u.updated.items() if k not in changed} == {
        k: v for k, v in t.raised.items() if k not in changed
    }
