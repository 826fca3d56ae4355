"""The passerelle's per-subject token bucket, on an injected clock; its requests under way."""

from contextlib import ExitStack

import pytest

from services.passerelle.debit import Debit, EnCours, retry_after


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_then_the_rate_refills_it():
    clock = Clock()
    debit = Debit(rate=100, burst=1000, clock=clock)
    assert debit.take("a", 1000) == 0
    assert debit.take("a", 1) == 0.01  # empty: one event takes 1/100 s to come back
    clock.now += 2.5
    assert debit.take("a", 250) == 0
    assert debit.take("a", 1) > 0


def test_a_refused_request_takes_nothing_and_says_how_long_to_wait():
    clock = Clock()
    debit = Debit(rate=10, burst=1000, clock=clock)
    assert debit.take("a", 900) == 0
    assert debit.take("a", 300) == 20.0  # 100 left, 200 more at 10/s
    clock.now += 20
    assert debit.take("a", 300) == 0  # the refused request took nothing


def test_a_request_refused_after_its_body_was_read_refuses_the_next_before_its_body_until_told():
    """Refused, it took nothing: with one event refilled, the same full batch sent again at once
    passed the look before its body (`waiting`), was read and split again, and refused again, as
    often as it came. Now the next is refused before its body until the wait it was told; then
    it passes, as it would have (nothing taken from the bucket meanwhile)."""
    clock = Clock()
    debit = Debit(rate=10, burst=1000, clock=clock)
    assert debit.take("a", 1000) == 0
    clock.now += 0.1  # one event back
    assert debit.take("a", 1000) == pytest.approx(99.9)
    assert debit.waiting("a") == pytest.approx(99.9), "told to wait: refused before its body"
    assert debit.waiting("b") == 0, "another subject's own"
    clock.now += 99.9
    assert debit.waiting("a") == 0 and debit.take("a", 1000) == 0, "then it passes"


def test_the_bucket_never_holds_more_than_the_burst():
    clock = Clock()
    debit = Debit(rate=1000, burst=1000, clock=clock)
    clock.now += 3600
    assert debit.take("a", 1001) > 0
    assert debit.take("a", 1000) == 0


def test_each_subject_has_its_own_bucket():
    debit = Debit(rate=1, burst=1000, clock=Clock())
    assert debit.take("a", 1000) == 0
    assert debit.take("a", 1) > 0
    assert debit.take("b", 1000) == 0


def test_retry_after_is_whole_seconds_at_least_one():
    assert [retry_after(s) for s in (0.001, 1.0, 1.2, 20.0)] == ["1", "1", "2", "20"]


def test_waiting_says_when_one_event_may_pass_and_takes_nothing():
    clock = Clock()
    debit = Debit(rate=2, burst=1000, clock=clock)
    assert debit.waiting("a") == 0, "a subject never seen has a full bucket"
    assert debit.take("a", 1000) == 0
    assert debit.waiting("a") == 0.5, "one event's worth refills in half a second"
    clock.now += 0.5
    assert debit.waiting("a") == 0 and debit.waiting("a") == 0, "nothing taken by looking"
    assert debit.take("a", 1) == 0


def test_a_request_refused_whole_is_spent_as_a_full_batch_into_debt_by_one_at_most():
    clock = Clock()
    debit = Debit(rate=10, burst=1000, clock=clock)
    debit.spend("a", 600)
    assert debit.waiting("a") == 0 and debit.take("a", 400) == 0
    debit.spend("a", 1000)
    debit.spend("a", 1000)  # one batch in debt at most
    debit.spend("a", 10)  # a smaller spending does not lessen it
    assert debit.waiting("a") == pytest.approx(100.1)  # back to one event: 1,001 at 10 a second
    clock.now += 100.2
    assert debit.waiting("a") == 0 and debit.waiting("b") == 0


def test_at_the_default_rate_a_client_repeating_a_refused_body_meets_429_before_its_body_is_read():
    """Emptied only, the bucket held one event again half a millisecond later: every repetition
    was read and split, none refused."""
    clock = Clock()
    debit = Debit(rate=2000, burst=10_000, clock=clock)
    refused = 0
    for _ in range(200):  # one request every 50 ms
        if debit.waiting("a"):
            refused += 1
        else:
            debit.spend("a", 1000)
        clock.now += 0.05
    assert refused >= 150, refused  # at 2,000 a second: one refused body in 0.5 s gets through


def test_requests_at_once_are_bounded_per_subject_then_in_all_and_released_however_they_end():
    en_cours = EnCours(per_subject=2, total=3)
    with en_cours.tenue("a"), en_cours.tenue("a"):
        assert en_cours.refus("a") == "sujet" and en_cours.refus("b") is None
        with en_cours.tenue("b"):
            assert en_cours.refus("b") == "total" and en_cours.refus("c") == "total"
            assert en_cours.refus("a") == "sujet"  # its own bound first
        assert en_cours.refus("c") is None
    with pytest.raises(RuntimeError), en_cours.tenue("a"):
        raise RuntimeError("a request failed")
    assert en_cours.refus("a") is None
    with en_cours.tenue("a"), en_cours.tenue("b"), en_cours.tenue("c"):
        assert en_cours.refus("d") == "total"


def test_the_last_places_go_to_subjects_with_nothing_under_way():
    """Two clients each at their bound (4 + 4 of 8) took every place: any other partner was
    refused for as long as their bodies took to come (audit helper-166 #4)."""
    en_cours = EnCours(per_subject=4, total=8)
    assert en_cours.reserve == 2
    with ExitStack() as held:
        for subject in "aaaabb":
            held.enter_context(en_cours.tenue(subject))
        assert en_cours.refus("b") == "reserve"  # 6 of 8 under way: the last 2 kept for others
        assert en_cours.refus("c") is None
        with en_cours.tenue("c"), en_cours.tenue("d"):
            assert en_cours.refus("e") == "total"
    alone = EnCours(per_subject=8, total=8)
    with ExitStack() as held:
        for _ in range(7):
            assert alone.refus("a") is None  # alone, a subject goes to its own bound
            held.enter_context(alone.tenue("a"))
        assert alone.refus("a") is None
