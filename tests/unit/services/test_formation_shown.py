"""An établissement's training as the unauthenticated read API gives it: at a school of a few
teachers, the levels per competence and the tools would be those of persons anyone could name."""

from contracts.internal import CouvertureFormation
from services.ressources.api import MIN_TEACHERS_DETAILED, formation_shown


def coverage(enseignants: int) -> CouvertureFormation:
    return CouvertureFormation(
        uai="0350001L", enseignants=enseignants, competences={"3.4": [enseignants, 1]}, outils={"tni": 1}
    )


def test_a_few_teachers_are_counted_without_their_detail():
    shown = formation_shown(coverage(MIN_TEACHERS_DETAILED - 1))
    assert shown == {"uai": "0350001L", "enseignants": MIN_TEACHERS_DETAILED - 1, "detail_masque": True}


def test_enough_teachers_are_shown_in_detail():
    shown = formation_shown(coverage(MIN_TEACHERS_DETAILED))
    assert shown is not None and not shown["detail_masque"]
    assert (shown["competences"], shown["outils"]) == ({"3.4": [MIN_TEACHERS_DETAILED, 1]}, {"tni": 1})


def test_nothing_declared_stays_none():
    assert formation_shown(None) is None
