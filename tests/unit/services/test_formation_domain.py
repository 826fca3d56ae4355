"""Training coverage: counts per competence level (at or above) and per tool."""

from services.formation.domain import couverture_content


def test_levels_count_at_or_above_and_only_counted_teachers():
    content = couverture_content(
        ["t1", "t2"],
        {"t1": {"3.4": 3}, "t2": {"3.4": 1, "1.1": 8}, "t3": {"3.4": 8}},
        {"t1": {"tni"}, "t3": {"tni"}},
    )
    assert content["enseignants"] == 2
    assert content["competences"]["3.4"] == [2, 1, 1, 0, 0, 0, 0, 0]
    assert content["competences"]["1.1"] == [1] * 8
    assert content["outils"] == {"tni": 1}
