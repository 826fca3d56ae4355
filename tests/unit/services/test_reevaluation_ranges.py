"""What a fan-out's parts leave to evaluate (store.uncovered): when a new version of its
resource comes, the UAIs they passed and the ranges of its parts done are parts again, cut as a
first request's UAIs are (store.cut)."""

from hypothesis import given
from hypothesis import strategies as st

from services.ressources.store import cut, uncovered


def test_what_the_parts_under_way_leave_out_is_found_around_them():
    assert uncovered([("b", "d"), ("f", None)]) == [("", "b"), ("d", "f")]
    assert uncovered([("", "b"), ("d", "f")]) == [("b", "d"), ("f", None)]
    assert uncovered([("", None)]) == []
    assert uncovered([("d", "f"), ("", "b")]) == [("b", "d"), ("f", None)], "in any order"
    assert uncovered([("d", "d"), ("d", None)]) == [("", "d")], "a part at its end, the next not started"


@given(st.lists(st.text("abcdefgh", min_size=1, max_size=3), unique=True).map(sorted), st.data())
def test_what_parts_have_left_and_what_they_leave_out_cover_every_uai_once(bounds, data):
    parts = list(zip(["", *bounds], [*bounds, None], strict=True))  # as request_reevaluations cuts them
    left = []
    for after, up_to in data.draw(st.lists(st.sampled_from(parts), unique=True, min_size=1)):
        passed = [b for b in bounds if after < b and (up_to is None or b <= up_to)]  # where its cursor may be
        left.append((data.draw(st.sampled_from([after, *passed])), up_to))
    together = uncovered(left) + left
    for uai in data.draw(st.lists(st.text("abcdefghi", min_size=1, max_size=4), max_size=20)):
        holding = [(after, up_to) for after, up_to in together if after < uai and (up_to is None or uai <= up_to)]
        assert len(holding) == 1, (uai, together)


def test_a_range_is_cut_after_the_subscribers_given_and_ends_where_it_ended():
    # _PART_CUTS's rows: (range number, UAI, a part ends after it, the range's last subscriber)
    rows = [(1, "b", True, False), (1, "c", False, True), (2, "f", True, False), (2, "h", False, True)]
    assert cut([("", "d"), ("e", None)], rows) == [("", "b"), ("b", "d"), ("e", "f"), ("f", None)]


def test_a_range_without_a_subscriber_makes_no_part():
    assert cut([("", "b"), ("d", "f"), ("h", None)], [(2, "e", False, True)]) == [("d", "f")]
    assert cut([("", None)], []) == []


def test_a_cut_after_a_range_s_last_subscriber_leaves_no_empty_part_behind_it():
    assert cut([("a", "d")], [(1, "c", True, True)]) == [("a", "d")]


@given(
    st.lists(st.text("abcdefgh", min_size=1, max_size=3), unique=True).map(sorted),
    st.lists(st.text("abcdefghi", min_size=1, max_size=4), unique=True, max_size=30).map(sorted),
    st.integers(1, 5),
)
def test_the_parts_cut_hold_every_subscriber_of_the_ranges_once_and_nothing_outside(bounds, subscribed, every):
    ranges = list(zip(["", *bounds], [*bounds, None], strict=True))[::2]  # every other one: gaps between
    within = lambda uai, r: r[0] < uai and (r[1] is None or uai <= r[1])  # noqa: E731
    inside = [(i, u) for u in subscribed for i, r in enumerate(ranges, 1) if within(u, r)]
    last = {i: u for i, u in inside}
    rows = [(i, u, n % every == 0 and n < len(inside), last[i] == u) for n, (i, u) in enumerate(inside, 1)]
    parts = cut(ranges, rows)
    for uai in subscribed:
        holding = [p for p in parts if within(uai, p)]
        assert len(holding) == (1 if any(within(uai, r) for r in ranges) else 0), (uai, parts)
    assert all(any(within(u, p) for u in subscribed) for p in parts), "no part without a subscriber"
