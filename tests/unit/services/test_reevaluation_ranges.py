"""What a fan-out's parts leave to evaluate (store.uncovered): when a new version of its
resource comes, the UAIs they passed and the ranges of its parts done are parts again."""

from hypothesis import given
from hypothesis import strategies as st

from services.ressources.store import uncovered


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
