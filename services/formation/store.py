"""formation's SQL, in one place."""

from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from contracts import CloudEvent
from services.common.entities import store_latest
from services.common.state import Verdicts
from services.formation.domain import folded_tools


async def store_affectations(conn: asyncpg.Connection, events: Sequence[CloudEvent]) -> Verdicts:
    return await store_latest(
        conn, "affectations", ("teacher_id", "uai"), ("start", "end"), events,
        row_of=lambda e: (e.data.start, e.data.end),
    )


async def add_trainings(conn: asyncpg.Connection, events: Sequence[CloudEvent]) -> None:
    """Trainings accumulate: the highest level per competence, the union of tools. Both are
    idempotent, so the order and repetition of trainings do not matter."""
    levels: dict[tuple[str, str], int] = {}
    tools: set[tuple[str, str]] = set()
    for e in events:
        for comp in e.data.competences:
            key = (e.data.teacher_id, comp.code)
            levels[key] = max(levels.get(key, 0), comp.level)
        tools.update((e.data.teacher_id, kind) for kind in folded_tools(e.data.tools))
    await conn.executemany(
        "INSERT INTO competences (teacher_id, code, level) VALUES ($1, $2, $3) "
        "ON CONFLICT (teacher_id, code) DO UPDATE SET level = GREATEST(competences.level, EXCLUDED.level)",
        [(t, code, level) for (t, code), level in sorted(levels.items())],
    )
    await conn.executemany(
        "INSERT INTO outils (teacher_id, kind) VALUES ($1, $2) ON CONFLICT DO NOTHING", sorted(tools)
    )


async def active_uais(conn: asyncpg.Connection, teachers: Sequence[str]) -> dict[str, list[str]]:
    """UAI -> the given teachers counted there."""
    out: dict[str, list[str]] = {}
    for r in await conn.fetch(
        'SELECT uai, teacher_id FROM affectations WHERE teacher_id = ANY($1::text[]) AND "end" IS NULL', list(teachers)
    ):
        out.setdefault(r["uai"], []).append(r["teacher_id"])
    return out


@dataclass
class Counts:
    """Per UAI: counted teachers, per competence how many reach each highest level, per tool
    how many were trained on it. Counted in SQL: a UAI may have 5,000 teachers."""

    enseignants: dict[str, int] = field(default_factory=dict)
    levels: dict[str, dict[str, dict[int, int]]] = field(default_factory=dict)
    tools: dict[str, dict[str, int]] = field(default_factory=dict)


async def coverage_counts(conn: asyncpg.Connection, uais: Sequence[str]) -> Counts:
    counts = Counts({u: 0 for u in uais}, {u: {} for u in uais}, {u: {} for u in uais})
    for r in await conn.fetch(
        'SELECT uai, count(*) AS n FROM affectations WHERE uai = ANY($1::text[]) AND "end" IS NULL GROUP BY uai',
        list(uais),
    ):
        counts.enseignants[r["uai"]] = r["n"]
    for r in await conn.fetch(
        "SELECT a.uai, c.code, c.level, count(*) AS n FROM affectations a JOIN competences c USING (teacher_id) "
        'WHERE a.uai = ANY($1::text[]) AND a."end" IS NULL GROUP BY a.uai, c.code, c.level',
        list(uais),
    ):
        counts.levels[r["uai"]].setdefault(r["code"], {})[r["level"]] = r["n"]
    for r in await conn.fetch(
        "SELECT a.uai, o.kind, count(*) AS n FROM affectations a JOIN outils o USING (teacher_id) "
        'WHERE a.uai = ANY($1::text[]) AND a."end" IS NULL GROUP BY a.uai, o.kind',
        list(uais),
    ):
        counts.tools[r["uai"]][r["kind"]] = r["n"]
    return counts
