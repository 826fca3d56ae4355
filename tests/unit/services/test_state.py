"""The state rule: latest time wins, older is stale, equal times: the later arrival wins."""

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from services.common.rules.state import latest_wins

T0 = datetime(2026, 9, 1, tzinfo=UTC)


def t(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_latest_time_wins_and_older_is_stale():
    v = latest_wins({}, [("a", t(2), "new"), ("a", t(1), "old")])
    assert v.winners == {"a": "new"} and v.stale == ["old"]


def test_equal_times_the_later_arrival_wins():
    v = latest_wins({}, [("a", t(1), "first"), ("a", t(1), "second")])
    assert v.winners == {"a": "second"} and v.stale == []


def test_held_state_makes_an_older_event_stale_and_nothing_stored():
    v = latest_wins({"a": t(5)}, [("a", t(4), "late")])
    assert v.winners == {} and v.stale == ["late"]


def test_held_state_at_the_same_time_is_replaced():
    assert latest_wins({"a": t(5)}, [("a", t(5), "same")]).winners == {"a": "same"}


def test_events_that_arrived_before_the_held_state_lose_equal_times_to_it():
    """Records judged again once their établissement came: the state held came after them."""
    v = latest_wins({"a": t(5)}, [("a", t(5), "waited"), ("b", t(5), "new")], arrived_before_held=True)
    assert v.winners == {"b": "new"} and v.stale == ["waited"]
    newer = latest_wins({"a": t(5)}, [("a", t(6), "later")], arrived_before_held=True)
    assert newer.winners == {"a": "later"}, "a later time still wins"
    among = latest_wins({"a": t(5)}, [("a", t(6), "first"), ("a", t(6), "second")], arrived_before_held=True)
    assert among.winners == {"a": "second"}, "among themselves, the later arrival wins equal times"


def test_a_state_stored_by_an_earlier_part_of_the_same_revival_loses_equal_times_to_a_later_arrival():
    """A revival judges a UAI's records in parts of one transaction: what its first part stored
    arrived before the second part's records, so the later arrival wins equal times there."""
    v = latest_wins(
        {"a": t(5), "b": t(5)},
        [("a", t(5), "correction"), ("b", t(5), "waited")],
        arrived_before_held=True,
        held_arrived_before={"a"},
    )
    assert v.winners == {"a": "correction"} and v.stale == ["waited"]


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 3)), max_size=12), st.integers(1, 12))
def test_judged_in_parts_with_what_earlier_parts_stored_as_in_one(events, size):
    """Parts in arrival order, each starting from what the parts before stored: the states and
    the stale events of judging all at once (before the revival, held states that came after)."""
    held = {"c": t(2)}
    numbered = [(k, t(minute), n) for n, (k, minute) in enumerate(events)]
    whole = latest_wins(held, numbered, arrived_before_held=True)
    running, ours, winners, stale = dict(held), set(), {}, []
    for start in range(0, len(numbered), size):
        part = latest_wins(running, numbered[start : start + size], arrived_before_held=True, held_arrived_before=ours)
        stale += part.stale
        for key, n in part.winners.items():
            running[key] = numbered[n][1]
            winners[key] = n
        ours |= set(part.winners)
    assert winners == whole.winners and sorted(stale) == sorted(whole.stale)


def test_entities_are_independent():
    v = latest_wins({"a": t(9)}, [("a", t(1), "a1"), ("b", t(1), "b1")])
    assert v.winners == {"b": "b1"} and v.stale == ["a1"]


def test_outcome_does_not_depend_on_delivery_order():
    events = [("a", t(3), "x"), ("a", t(1), "y"), ("a", t(2), "z"), ("b", t(1), "w")]
    finals = set()
    for order in itertools.permutations(events):
        v = latest_wins({}, order)
        finals.add(tuple(sorted(v.winners.items())))
    assert finals == {(("a", "x"), ("b", "w"))}
