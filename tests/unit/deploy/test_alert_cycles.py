"""deploy/rattrapage.py finds the raise count of each alert event Kafka holds from its id: one
or two tries per event, however high the cycle cap, so the alignment (run while the service's
writers wait, during a rebuild's switch) is linear in the stream's length."""

import json
import tracemalloc
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

import contracts as c
from deploy import rattrapage
from services.ressources.lifecycle import event_id

RAISED_AT = datetime(2026, 9, 1, 8, 0, 0, 123456, tzinfo=UTC)


def _record(alert: str, cycle: int, raised: bool, id_: str | None = None) -> SimpleNamespace:
    what, type_ = ("levee", c.ALERTE_LEVEE) if raised else ("resolue", c.ALERTE_RESOLUE)
    id_ = id_ or event_id(alert, cycle, what, RAISED_AT)
    event = {"id": id_, "type": type_, "data": {"alert_id": alert, "raised_at": RAISED_AT.isoformat()}}
    return SimpleNamespace(value=json.dumps(event).encode())


def test_each_event_costs_one_or_two_tries_and_no_range_is_materialised(monkeypatch: pytest.MonkeyPatch) -> None:
    tries = 0

    def counted(alert: str, cycle: int, what: str, raised_at: datetime) -> str:
        nonlocal tries
        tries += 1
        return event_id(alert, cycle, what, raised_at)

    monkeypatch.setattr(rattrapage, "event_id", counted)
    alerts = [f"alerte-{n}" for n in range(50)]
    expected = [(a, cycle, raised) for a in alerts for cycle in (1, 2, 3) for raised in (True, False)]
    cycles = rattrapage._Cycles()
    staged = [cycles.row(_record(alert, cycle, raised)) for alert, cycle, raised in expected]
    assert [(alert, cycle, raised) for alert, cycle, raised, _ in staged] == expected
    assert tries <= 2 * len(expected)

    tracemalloc.start()
    try:
        assert rattrapage._cycle("a", event_id("a", 7, "levee", RAISED_AT), "levee", RAISED_AT, 7) == 7
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100_000, f"{peak} bytes: the candidate cycles up to MAX_CYCLE were built, not iterated"


def test_an_id_not_made_by_event_id_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rattrapage, "MAX_CYCLE", 50)
    with pytest.raises(ValueError, match=r"alert a: event id x was not made by lifecycle\.event_id"):
        rattrapage._cycle("a", "x", "levee", RAISED_AT, 1)


def test_ids_made_before_they_held_the_raise_s_instant_are_still_read() -> None:
    """The alerts stream keeps the events published before ids held the raise's instant: their
    raise count is found from their id all the same."""
    made_before = rattrapage._event_id_without_instant("a", 3, "resolue")
    alert, cycle, opened, _ = rattrapage._Cycles().row(_record("a", 3, False, id_=made_before))
    assert (alert, cycle, opened) == ("a", 3, False)


def test_an_alert_numbered_from_1_again_gets_ids_its_first_raise_did_not_have() -> None:
    """A rebuild over a stream that retention shortened numbers an alert resolved before its
    horizon from 1 again: its next raise, at another instant, has another id (a dashboard that
    remembers ids would otherwise drop it as a duplicate of the first raise)."""
    later = datetime(2027, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)
    assert event_id("a", 1, "levee", later) != event_id("a", 1, "levee", RAISED_AT)
    assert event_id("a", 1, "resolue", later) != event_id("a", 1, "resolue", RAISED_AT)
    assert event_id("a", 1, "levee", RAISED_AT) == event_id("a", 1, "levee", RAISED_AT.astimezone())
