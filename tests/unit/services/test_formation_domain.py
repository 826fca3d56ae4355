"""Training coverage: counts per competence level (at or above) and per tool."""

from services.formation.domain import competences_content, outils_contents


def test_levels_count_at_or_above():
    # t1 at 3 and t2 at 1 in 3.4; t2 at 8 in 1.1: counts of highest levels, as SQL gives them.
    content = competences_content(2, {"3.4": {3: 1, 1: 1}, "1.1": {8: 1}})
    assert content["enseignants"] == 2
    assert content["competences"]["3.4"] == [2, 1, 1, 0, 0, 0, 0, 0]
    assert content["competences"]["1.1"] == [1] * 8
    assert list(content["competences"]) == ["1.1", "3.4"], "stable order: equal content, no publication"


def test_a_tool_nobody_holds_any_more_is_published_with_zero():
    assert outils_contents({"tni": 3}, {"tni", "tablette"}) == {
        "tablette": {"enseignants": 0},
        "tni": {"enseignants": 3},
    }
    assert outils_contents({}, set()) == {}
