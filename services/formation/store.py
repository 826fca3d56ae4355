"""formation's SQL, in one place."""

from collections.abc import Sequence

import asyncpg

from contracts import CloudEvent
from services.common.entities import store_latest
from services.common.state import Verdicts
from services.formation.domain import folded_tools


async def store_affectations(conn: asyncpg.Connection, events: Sequence[CloudEvent]) -> Verdicts:
    return await store_latest(
        conn, "affectations", ("teacher_id", "uai"), ("start", "end"), events,
        key_of=lambda e: (e.data.teacher_id, e.data.uai),
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


async def load_teachers(
    conn: asyncpg.Connection, uais: Sequence[str]
) -> tuple[dict[str, list[str]], dict[str, dict[str, int]], dict[str, set[str]]]:
    """Per UAI its counted teachers, and for them their levels and tools."""
    per_uai: dict[str, list[str]] = {u: [] for u in uais}
    for r in await conn.fetch(
        'SELECT uai, teacher_id FROM affectations WHERE uai = ANY($1::text[]) AND "end" IS NULL ORDER BY teacher_id',
        list(uais),
    ):
        per_uai[r["uai"]].append(r["teacher_id"])
    teachers = sorted({t for ts in per_uai.values() for t in ts})
    levels: dict[str, dict[str, int]] = {}
    for r in await conn.fetch("SELECT teacher_id, code, level FROM competences WHERE teacher_id = ANY($1::text[])", teachers):
        levels.setdefault(r["teacher_id"], {})[r["code"]] = r["level"]
    tools: dict[str, set[str]] = {}
    for r in await conn.fetch("SELECT teacher_id, kind FROM outils WHERE teacher_id = ANY($1::text[])", teachers):
        tools.setdefault(r["teacher_id"], set()).add(r["kind"])
    return per_uai, levels, tools
