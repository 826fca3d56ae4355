"""The read side of ressources: SQL for the dashboards' API, in one place.

Reads only; the write side (store.py) is the single writer of these tables.
"""

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, NamedTuple

import asyncpg
from pydantic_core import to_json

from contracts import ALERT_KINDS, Etablissement
from services.common.storage.db import Conn

# Each filter of the read API, and where it looks in an alert's data: the one definition that
# the SQL conditions and the Python match are both read from. Each name is also the `alertes`
# column that holds that value (computed from the content: migration 0017).
_PATHS = {
    "code_academie": ("code_academie",),
    "code_departement": ("code_departement",),
    "responsable_type": ("responsable", "type"),
    "responsable_code": ("responsable", "code"),
    "kind": ("kind",),
}


BY_RAISE, BY_RESOLUTION = "raised_at", "resolved_at"
"""The orders of the lists (AlertFilter.order): the `alertes` column each is in order of."""


@dataclass(frozen=True)
class AlertFilter:
    code_academie: str | None = None
    code_departement: str | None = None
    responsable_type: str | None = None
    responsable_code: str | None = None
    kind: str | None = None
    state: str | None = None  # "open" | "resolved"

    def _wanted(self) -> list[tuple[str, tuple[str, ...], str]]:
        """(name, path, value) of each filter given."""
        return [(name, path, value) for name, path in _PATHS.items() if (value := getattr(self, name)) is not None]

    def conditions(self, document: str, first: int) -> tuple[list[str], list[str]]:
        """The filter as SQL over a JSON `document` holding an alert's data, its parameters
        numbered from `first` (the journal's events: `a->'b'->>'c'`)."""
        clauses, args = [], []
        for _, path, value in self._wanted():
            args.append(value)
            steps = "".join(f"->'{p}'" for p in path[:-1]) + f"->>'{path[-1]}'"
            clauses.append(f"{document}{steps} = ${first + len(args) - 1}")
        return clauses, args

    def where(self) -> tuple[str, list]:
        """Over the `alertes` table: its columns of the same names (computed from the alert's
        content, indexed), and the state (open, resolved) it holds beside the data."""
        wanted = self._wanted()
        clauses, args = [f"{name} = ${i}" for i, (name, _, _) in enumerate(wanted, 1)], [v for _, _, v in wanted]
        if self.state is not None:
            clauses.append("ouverte" if self.state == "open" else "NOT ouverte")
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def order(self) -> str:
        """The instant the list is in order of, the latest first: the resolution's for the
        resolved alerts alone (what someone checking what was just fixed looks for), else the raise's."""
        return BY_RESOLUTION if self.state == "resolved" else BY_RAISE

    def matches(self, alert: dict) -> bool:
        """Over an alert event's `data` (the SSE stream filters in Python); tested against the SQL."""
        for _, path, value in self._wanted():
            have: object = alert
            for p in path:
                have = have.get(p) if isinstance(have, dict) else None
            if have != value:
                return False
        return True


class Page(NamedTuple):
    total: int
    """Every alert the filter matches, not only those after the cursor."""
    items: list[dict]
    after_last: tuple[datetime, str] | None
    """Where the next page begins (the last item's place in the order), None after the last page."""
    position: int
    """The journal's position when this page was read: the stream resumes from it without a gap."""


async def list_alertes(
    conn: Conn, f: AlertFilter, limit: int, offset: int, after: tuple[datetime, str] | None = None
) -> Page:
    """A page in the order of the list (the latest raise first, then alert_id; the resolved
    alerts alone: the latest resolution first): `offset` alerts skipped, or those up to `after`
    (a place in that order: no alert still in the list is skipped when those before it change,
    as with an offset)."""
    where, args = f.where()
    total = await conn.fetchval(f"SELECT count(*) FROM alertes{where}", *args)
    by = f.order()
    if after is not None:
        args = [*args, *after]
        n = len(args)
        # The first comparison alone gives the index a range to start from (without it, every
        # alert before the cursor is read and filtered out).
        where += (" AND " if where else " WHERE ") + (
            f"{by} <= ${n - 1} AND ({by} < ${n - 1} OR ({by} = ${n - 1} AND alert_id > ${n}))"
        )
    # The établissement's name and the resource's title as they are now, joined to the page's
    # rows only: a dashboard's reader reads names, not codes (a renamed établissement, a
    # retitled resource: the new name; a withdrawn resource: no title).
    rows = await conn.fetch(
        "SELECT a.alert_id, a.ouverte, a.raised_at, a.resolved_at, a.alerte, e.nom, r.ressource->>'title' AS title "
        f"FROM (SELECT alert_id, uai, resource_id, ouverte, raised_at, resolved_at, alerte FROM alertes{where} "
        f"ORDER BY {by} DESC, alert_id LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}) AS a "
        "LEFT JOIN etablissements e ON e.uai = a.uai "
        "LEFT JOIN ressources r ON r.resource_id = a.resource_id "  # withdrawn: its content null
        f"ORDER BY a.{by} DESC, a.alert_id",
        *args,
        limit + 1,  # one more, unshown: whether a page follows (a full last page has no `suivant`)
        offset,
    )
    rows, more = rows[:limit], len(rows) > limit
    last = (rows[-1][by], rows[-1]["alert_id"]) if more else None
    return Page(total, [_alert(r) for r in rows], last, await journal_position(conn))


async def journal_position(conn: Conn) -> int:
    """The seq of the last alert event the caller's snapshot sees (or where the journal was
    purged through, if later): every change committed after the snapshot comes after it."""
    return await conn.fetchval(
        "SELECT greatest(coalesce((SELECT max(seq) FROM alert_journal), 0), purged_through) FROM alert_journal_horizon"
    )


def _alert(r: asyncpg.Record) -> dict:
    data = json.loads(r["alerte"])
    data["state"] = "open" if r["ouverte"] else "resolved"
    data["resolved_at"] = to_json(r["resolved_at"]).decode().strip('"') if r["resolved_at"] else None  # as raised_at
    data["nom"], data["title"] = r["nom"], r["title"]
    return data


_ETABLISSEMENT = f"SELECT {', '.join(Etablissement.model_fields)} FROM etablissements WHERE uai = $1"


async def etablissement(conn: Conn, uai: str) -> asyncpg.Record | None:
    """Its columns named: a migration adding one to the table (a rolling upgrade, former replicas
    serving) would otherwise make the prepared statement refused inside the fiche's transaction."""
    return await conn.fetchrow(_ETABLISSEMENT, uai)


async def abonnements_of(conn: Conn, uai: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        'SELECT a.resource_id, a.start, a."end", r.publiee, r.ressource FROM abonnements a '
        "LEFT JOIN ressources r USING (resource_id) WHERE a.uai = $1 ORDER BY a.resource_id",
        uai,
    )


async def pending_reevaluations(conn: Conn, uai: str) -> set[str]:
    """The resources (EVERY_RESOURCE: all) whose re-evaluation in the background has yet to reach
    `uai`: a part's cursor before it, and the part's range up to it or beyond."""
    rows = await conn.fetch(
        "SELECT DISTINCT resource_id FROM reevaluations WHERE $1 > after_uai AND (up_to IS NULL OR $1 <= up_to)", uai
    )
    return {r["resource_id"] for r in rows}


async def reevaluation_pending(conn: Conn, resource_ids: list[str]) -> bool:
    """Whether a re-evaluation in the background of these resources' pairs (one published or
    republished; EVERY_RESOURCE, every pair: the thresholds changed) has yet to end: the pairs it
    has not reached are counted by the alerts from before it (synthese)."""
    return await conn.fetchval(
        "SELECT EXISTS (SELECT FROM reevaluations WHERE resource_id = ANY($1::text[]))", resource_ids
    )


async def open_alert_ids(conn: Conn, uai: str) -> dict[tuple[str, str], str]:
    rows = await conn.fetch("SELECT resource_id, kind, alert_id FROM alertes WHERE uai = $1 AND ouverte", uai)
    return {(r["resource_id"], r["kind"]): r["alert_id"] for r in rows}


async def territoires(conn: Conn) -> dict[str, list[str]]:
    """Each académie of the référentiel and its départements, in code order."""
    rows = await conn.fetch(
        "SELECT code_academie, array_agg(DISTINCT code_departement ORDER BY code_departement) AS departements "
        "FROM etablissements GROUP BY code_academie ORDER BY code_academie"
    )
    return {r["code_academie"]: r["departements"] for r in rows}


async def ressource(conn: Conn, resource_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT resource_id, publiee, ressource FROM ressources WHERE resource_id = $1", resource_id
    )


# SQL forms of rules.is_evaluated and rules.verdict, for counting in the database; each is
# tested against its Python definition (tests/integration/test_sql_rules.py). `a` is the
# abonnement, `e` its établissement, `r` its resource; in VERDICT, one boolean column per kind.
SUBSCRIBED = 'a."end" IS NULL AND e.ouvert IS TRUE'
"""EVALUATED but for the resource: the pairs a resource would have once published (simulations)."""
EVALUATED = f"{SUBSCRIBED} AND r.publiee IS TRUE"
VERDICT = (
    """CASE WHEN coalesce("equipement-incompatible", false) THEN 'incompatible' """
    """WHEN coalesce("equipement-partiel", false) THEN 'partiel' ELSE 'compatible' END"""
)


async def synthese(
    conn: Conn, resource_id: str, by: Literal["code_academie", "code_departement"] = "code_academie"
) -> dict[str, dict[str, int]]:
    """Per académie (or per département, `by`), over the pairs the platform evaluates (`EVALUATED`):
    how many are compatible, partial, incompatible, under-trained. None while the resource is withdrawn."""
    kinds = ", ".join(f"bool_or(al.kind = '{k}') FILTER (WHERE al.ouverte) AS \"{k}\"" for k in ALERT_KINDS)
    rows = await conn.fetch(
        f"""
        WITH pairs AS (
            SELECT e.{by}, a.uai, {kinds}
            FROM abonnements a
            JOIN etablissements e ON e.uai = a.uai
            JOIN ressources r ON r.resource_id = a.resource_id
            LEFT JOIN alertes al ON al.uai = a.uai AND al.resource_id = a.resource_id
            WHERE a.resource_id = $1 AND {EVALUATED}
            GROUP BY e.{by}, a.uai
        ), verdicts AS (
            SELECT {by}, {VERDICT} AS verdict, coalesce("formation-insuffisante", false) AS sous_forme
            FROM pairs
        )
        SELECT {by},
               count(*) AS evalues,
               count(*) FILTER (WHERE verdict = 'incompatible') AS incompatibles,
               count(*) FILTER (WHERE verdict = 'partiel') AS partiels,
               count(*) FILTER (WHERE verdict = 'compatible') AS compatibles,
               count(*) FILTER (WHERE sous_forme) AS sous_formes
        FROM verdicts GROUP BY {by} ORDER BY {by}
        """,
        resource_id,
    )
    return {
        r[by]: {k: r[k] for k in ("evalues", "compatibles", "partiels", "incompatibles", "sous_formes")} for r in rows
    }


_OPEN = "SELECT uai, code_academie, code_departement FROM etablissements WHERE ouvert IS TRUE"
"""Every open établissement."""
_SUBSCRIBERS = (
    "SELECT e.uai, e.code_academie, e.code_departement FROM abonnements a JOIN etablissements e USING (uai) "
    f"WHERE a.resource_id = $1 AND {SUBSCRIBED}"
)
"""The établissements a resource would be evaluated at once published (`SUBSCRIBED`)."""


def inputs(conn: Conn, resource_id: str | None) -> asyncpg.cursor.CursorFactory:
    """Per établissement subscribed to `resource_id` (None: every open one): uai, code_academie,
    code_departement, and what the rules read of it: its `profil` and its `couverture` as the
    store keeps them (`entrees`, views.ENTREES_SQL: JSON text without the uai and the records'
    versions, so that equal inputs read equal; NULL without records). A cursor (inside a
    transaction)."""
    return conn.cursor(
        f"SELECT p.uai, p.code_academie, p.code_departement, e.profil, e.couverture "
        f"FROM ({_OPEN if resource_id is None else _SUBSCRIBERS}) p LEFT JOIN entrees e ON e.uai = p.uai",
        *([] if resource_id is None else [resource_id]),
    )


@dataclass(frozen=True)
class Replay:
    rows: list[tuple[int, str]]
    """(seq, event JSON) after the client's Last-Event-ID, matching its filter, in seq order."""
    purged_through: int
    """Every seq up to this one may have been purged from the journal."""
    last_allocated: int
    """The highest seq ever handed out: a Last-Event-ID beyond it is not from this journal."""


async def journal_replay(conn: Conn, after: int, through: int, f: AlertFilter, limit: int) -> Replay:
    """The journal rows in (after, through] that `f` keeps, at most `limit` + 1 of them (one
    more says there are more). One snapshot, so the horizon and the rows agree."""
    conditions, values = f.conditions("event->'data'", 3)
    clauses = ["seq > $1", "seq <= $2"]
    if conditions:  # where the event says, or the other place it concerns (stream.notify's `elsewhere`)
        now_at, _ = f.conditions("(event->'data' || portee)", 3)
        clauses.append(f"(({' AND '.join(conditions)}) OR (portee IS NOT NULL AND {' AND '.join(now_at)}))")
    args: list[object] = [after, through, *values, limit + 1]
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        purged = await conn.fetchval("SELECT purged_through FROM alert_journal_horizon")
        allocated = await journal_allocated(conn)
        rows = await conn.fetch(
            f"SELECT seq, event FROM alert_journal WHERE {' AND '.join(clauses)} ORDER BY seq LIMIT ${len(args)}", *args
        )
    return Replay([(r["seq"], r["event"]) for r in rows], purged, allocated)


async def journal_allocated(conn: Conn) -> int:
    """The highest seq the journal ever handed out (0: none yet)."""
    allocated = await conn.fetchrow("SELECT last_value, is_called FROM alert_journal_seq_seq")
    assert allocated is not None, "a sequence always has a row"
    return allocated["last_value"] if allocated["is_called"] else 0


async def pairs_count(conn: Conn, uais: list[str]) -> int:
    """How many subscriptions these établissements have (an equipment simulation's bound)."""
    return await conn.fetchval("SELECT count(*) FROM abonnements WHERE uai = ANY($1::text[])", uais)
