"""deploy/rattrapage.py finds the raise count of each alert event Kafka holds from its id: one
or two tries per event, however high the cycle cap, so the alignment (run while the service's
writers wait, during a rebuild's switch) is linear in the stream's length."""

import json
import tracemalloc
from types import SimpleNamespace

import pytest

import contracts as c
from deploy import rattrapage
from services.ressources.lifecycle import event_id


def _record(alert: str, cycle: int, raised: bool) -> SimpleNamespace:
    what, type_ = ("levee", c.ALERTE_LEVEE) if raised else ("resolue", c.ALERTE_RESOLUE)
    event = {"id": event_id(alert, cycle, what), "type": type_, "data": {"alert_id": alert}}
    return SimpleNamespace(value=json.dumps(event).encode())


def test_each_event_costs_one_or_two_tries_and_no_range_is_materialised(monkeypatch: pytest.MonkeyPatch) -> None:
    tries = 0

    def counted(alert: str, cycle: int, what: str) -> str:
        nonlocal tries
        tries += 1
        return event_id(alert, cycle, what)

    monkeypatch.setattr(rattrapage, "event_id", counted)
    alerts = [f"alerte-{n}" for n in range(50)]
    expected = [(a, cycle, raised) for a in alerts for cycle in (1, 2, 3) for raised in (True, False)]
    cycles = rattrapage._Cycles()
    staged = [cycles.row(_record(alert, cycle, raised)) for alert, cycle, raised in expected]
    assert [(alert, cycle, raised) for alert, cycle, raised, _ in staged] == expected
    assert tries <= 2 * len(expected)

    tracemalloc.start()
    try:
        assert rattrapage._cycle("a", event_id("a", 7, "levee"), "levee", 7) == 7
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100_000, f"{peak} bytes: the candidate cycles up to MAX_CYCLE were built, not iterated"


def test_an_id_not_made_by_event_id_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rattrapage, "MAX_CYCLE", 50)
    with pytest.raises(ValueError, match=r"alert a: event id x was not made by lifecycle\.event_id"):
        rattrapage._cycle("a", "x", "levee", 1)
