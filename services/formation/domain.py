"""Training coverage of one UAI, from counts over its counted teachers. Pure."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from contracts import CRCN_LEVELS, FormationSuivie, fold_kind

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


def acquis(trainings: Sequence[FormationSuivie]) -> tuple[dict[tuple[str, str], int], set[tuple[str, str]]]:
    """What trainings add: per (teacher, code) the highest level, and (teacher, folded tool)
    pairs. Both accumulate idempotently, so their order and repetition do not matter."""
    levels: dict[tuple[str, str], int] = {}
    tools: set[tuple[str, str]] = set()
    for t in trainings:
        for comp in t.competences:
            key = (t.teacher_id, comp.code)
            levels[key] = max(levels.get(key, 0), comp.level)
        tools.update((t.teacher_id, kind) for kind in folded_tools(t.tools))
    return levels, tools


@dataclass
class Counts:
    """Per UAI: counted teachers, per competence how many reach each highest level, per tool
    how many were trained on it."""

    enseignants: dict[str, int] = field(default_factory=dict)
    levels: dict[str, dict[str, dict[int, int]]] = field(default_factory=dict)
    tools: dict[str, dict[str, int]] = field(default_factory=dict)
