"""formation's SQL, in one place: the store its use case receives, one per transaction."""

from collections.abc import Iterable, Mapping, Sequence, Set

from contracts import CloudEvent
from services.common.rules.state import Verdicts
from services.common.storage.db import Conn, json_rows
from services.common.storage.derived import PgPublished
from services.common.storage.entities import store_latest
from services.common.storage.locks import lock_keys
from services.formation.domain import Counts


class FormationStore:
    def __init__(self, conn: Conn):
        self._conn = conn
        self.published = PgPublished(conn)

    async def store_affectations(self, events: Sequence[CloudEvent]) -> Verdicts:
        """`held`: per (teacher, UAI) declared before, whether the teacher counted there (no
        `end`), as it was before these events."""
        return await store_latest(
            self._conn,
            "affectations",
            ("teacher_id", "uai"),
            {"start": "date", "end": "date"},
            events,
            row_of=lambda e: (e.data.start, e.data.end),
            also=('t."end" IS NULL',),
        )

    async def add_trainings(self, levels: Mapping[tuple[str, str], int], tools: Set[tuple[str, str]]) -> set[str]:
        """Keeps per (teacher, code) the highest level ever reached, per teacher every tool;
        returns the teachers who gained a level or a tool."""
        grew: set[str] = set()
        if levels:
            keys = sorted(levels)  # rows locked in key order: two writers never wait in a cycle
            rows = await self._conn.fetch(
                "INSERT INTO competences AS c (teacher_id, code, level) "
                "SELECT * FROM json_to_recordset($1::json) AS r(teacher_id text, code text, level int) "
                "ON CONFLICT (teacher_id, code) DO UPDATE SET level = EXCLUDED.level WHERE c.level < EXCLUDED.level "
                "RETURNING teacher_id",
                json_rows({"teacher_id": t, "code": code, "level": levels[(t, code)]} for t, code in keys),
            )
            grew.update(r["teacher_id"] for r in rows)
        if tools:
            rows = await self._conn.fetch(
                "INSERT INTO outils (teacher_id, kind) "
                "SELECT * FROM json_to_recordset($1::json) AS r(teacher_id text, kind text) ON CONFLICT DO NOTHING "
                "RETURNING teacher_id",
                json_rows({"teacher_id": t, "kind": kind} for t, kind in sorted(tools)),
            )
            grew.update(r["teacher_id"] for r in rows)
        return grew

    async def active_uais(self, teachers: Sequence[str]) -> dict[str, list[str]]:
        """UAI -> the given teachers counted there."""
        out: dict[str, list[str]] = {}
        for r in await self._conn.fetch(
            'SELECT uai, teacher_id FROM affectations WHERE teacher_id = ANY($1::text[]) AND "end" IS NULL',
            list(teachers),
        ):
            out.setdefault(r["uai"], []).append(r["teacher_id"])
        return out

    async def lock(self, namespace: str, keys: Iterable[str]) -> None:
        await lock_keys(self._conn, namespace, keys)

    async def coverage_counts(self, uais: Sequence[str]) -> Counts:
        """Counted in SQL: a UAI may have 5,000 teachers."""
        counts = Counts({u: 0 for u in uais}, {u: {} for u in uais}, {u: {} for u in uais})
        for r in await self._conn.fetch(
            'SELECT uai, count(*) AS n FROM affectations WHERE uai = ANY($1::text[]) AND "end" IS NULL GROUP BY uai',
            list(uais),
        ):
            counts.enseignants[r["uai"]] = r["n"]
        for r in await self._conn.fetch(
            "SELECT a.uai, c.code, c.level, count(*) AS n FROM affectations a JOIN competences c USING (teacher_id) "
            'WHERE a.uai = ANY($1::text[]) AND a."end" IS NULL GROUP BY a.uai, c.code, c.level',
            list(uais),
        ):
            counts.levels[r["uai"]].setdefault(r["code"], {})[r["level"]] = r["n"]
        for r in await self._conn.fetch(
            "SELECT a.uai, o.kind, count(*) AS n FROM affectations a JOIN outils o USING (teacher_id) "
            'WHERE a.uai = ANY($1::text[]) AND a."end" IS NULL GROUP BY a.uai, o.kind',
            list(uais),
        ):
            counts.tools[r["uai"]][r["kind"]] = r["n"]
        return counts
