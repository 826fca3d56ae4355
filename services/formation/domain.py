"""Training coverage of one UAI, from counts over its counted teachers. Pure."""

from collections.abc import Mapping, Sequence

from contracts import CRCN_LEVELS, fold_kind

LEVELS = len(CRCN_LEVELS)


def competences_content(enseignants: int, per_level: Mapping[str, Mapping[int, int]]) -> dict:
    """`per_level[code][level]` counts the teachers whose highest level in `code` is `level`.

    Returns the UAI's record: its number of counted teachers and, per competence, the number
    of them at each level or above (`[≥1, ≥2, …, ≥8]`).
    """
    competences = {}
    for code, levels in sorted(per_level.items()):
        at_or_above, running = [0] * LEVELS, 0
        for level in range(LEVELS, 0, -1):
            running += levels.get(level, 0)
            at_or_above[level - 1] = running
        competences[code] = at_or_above
    return {"enseignants": enseignants, "competences": competences}


def outils_contents(trained: Mapping[str, int], published: set[str]) -> dict[str, dict]:
    """Per folded tool kind, the number of counted teachers trained on it; a kind published
    before and held by nobody now is published with 0, so that the consumer forgets it."""
    return {kind: {"enseignants": trained.get(kind, 0)} for kind in sorted(trained.keys() | published)}


def folded_tools(kinds: Sequence[str]) -> list[str]:
    return sorted({fold_kind(k) for k in kinds})
