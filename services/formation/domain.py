"""Training coverage of one UAI, from its counted teachers and what each holds. Pure."""

from collections.abc import Mapping, Sequence

from contracts import fold_kind

LEVELS = 8


def couverture_content(
    teachers: Sequence[str],
    levels: Mapping[str, Mapping[str, int]],
    tools: Mapping[str, set[str]],
) -> dict:
    """`levels[teacher][code]` is the highest level reached; `tools[teacher]` the folded kinds.

    Returns, for the UAI, the number of counted teachers, per competence the number at each
    level or above, and per tool the number trained on it.
    """
    competences: dict[str, list[int]] = {}
    outils: dict[str, int] = {}
    for teacher in teachers:
        for code, level in levels.get(teacher, {}).items():
            counts = competences.setdefault(code, [0] * LEVELS)
            for i in range(min(level, LEVELS)):
                counts[i] += 1
        for kind in tools.get(teacher, ()):
            outils[kind] = outils.get(kind, 0) + 1
    return {
        "enseignants": len(teachers),
        "competences": dict(sorted(competences.items())),
        "outils": dict(sorted(outils.items())),
    }


def folded_tools(kinds: Sequence[str]) -> list[str]:
    return sorted({fold_kind(k) for k in kinds})
