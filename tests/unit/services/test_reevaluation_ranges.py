"""What a fan-out's parts under way leave out (store.uncovered): the ranges of its parts done,
which a new version of the resource makes parts again."""

from hypothesis import given
from hypothesis import strategies as st

from services.ressources.store import uncovered


def test_the_ranges_of_the_parts_done_are_found_between_those_under_way():
    assert uncovered([("b", "d"), ("f", None)]) == [("", "b"), ("d", "f")]
    assert uncovered([("", "b"), ("d", "f")]) == [("b", "d"), ("f", None)]
    assert uncovered([("", None)]) == []
    assert uncovered([("d", "f"), ("", "b")]) == [("b", "d"), ("f", None)], "in any order"


@given(st.lists(st.text("abcdefgh", min_size=1, max_size=3), unique=True).map(sorted), st.data())
def test_parts_under_way_and_the_ranges_left_out_cover_every_uai_once(bounds, data):
    parts = list(zip(["", *bounds], [*bounds, None], strict=True))  # as request_reevaluations cuts them
    under_way = data.draw(st.lists(st.sampled_from(parts), unique=True, min_size=1))
    together = sorted(under_way + uncovered(under_way))
    for uai in data.draw(st.lists(st.text("abcdefghi", min_size=1, max_size=4), max_size=20)):
        holding = [(after, up_to) for after, up_to in together if after < uai and (up_to is None or uai <= up_to)]
        assert len(holding) == 1, (uai, together)
