"""ressources' SQL, in one place."""

import json
from collections.abc import Iterable, Sequence

import asyncpg

import contracts as c
from contracts import CloudEvent, RessourcePubliee
from contracts.internal import (
    COUVERTURE_ENSEIGNANTS,
    COUVERTURE_OUTIL,
    PROFIL_CONNECTIVITE,
    PROFIL_LOT,
    ConnectiviteProfil,
    CouvertureFormation,
    LotProfil,
    ProfilEquipement,
)
from services.common.entities import store_latest
from services.common.state import Verdicts


async def store_catalogue(conn: asyncpg.Connection, events: Sequence[CloudEvent]) -> Verdicts:
    """ressource-publiee and ressource-retiree are two states of one entity, `resource_id`."""
    return await store_latest(
        conn, "ressources", ("resource_id",), ("publiee", "ressource"), events,
        row_of=lambda e: (True, e.data.model_dump_json()) if e.type == c.RESSOURCE_PUBLIEE else (False, None),
    )


async def store_abonnements(conn: asyncpg.Connection, events: Sequence[CloudEvent]) -> Verdicts:
    return await store_latest(
        conn, "abonnements", ("resource_id", "uai"), ("start", "end"), events,
        row_of=lambda e: (e.data.start, e.data.end),
    )


async def store_derived(conn: asyncpg.Connection, events: Sequence[CloudEvent]) -> set[str]:
    """Keep the highest `version` per record key of what equipement and formation publish;
    returns the UAIs whose records changed here."""
    latest: dict[tuple[str, str, str], CloudEvent] = {}
    for e in events:
        key = (e.type, e.data.uai, e.data.entity)
        if key not in latest or latest[key].data.version < e.data.version:
            latest[key] = e
    rows = await conn.fetch(
        """
        INSERT INTO recus (type, uai, entity, version, content)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::jsonb[])
        ON CONFLICT (type, uai, entity) DO UPDATE SET version = EXCLUDED.version, content = EXCLUDED.content
        WHERE recus.version < EXCLUDED.version
        RETURNING uai
        """,
        [t for t, _, _ in latest], [u for _, u, _ in latest], [x for _, _, x in latest],
        [e.data.version for e in latest.values()], [e.data.model_dump_json() for e in latest.values()],
    )
    return {r["uai"] for r in rows}


async def pairs_of(conn: asyncpg.Connection, uais: Iterable[str], resources: Iterable[str]) -> list[asyncpg.Record]:
    """Every subscribed pair touching these UAIs or resources, active or not."""
    return await conn.fetch(
        'SELECT resource_id, uai, "end" FROM abonnements WHERE uai = ANY($1::text[]) OR resource_id = ANY($2::text[])',
        list(uais), list(resources),
    )


async def load_ressources(conn: asyncpg.Connection, ids: Iterable[str]) -> dict[str, RessourcePubliee]:
    rows = await conn.fetch(
        "SELECT resource_id, ressource FROM ressources WHERE resource_id = ANY($1::text[]) AND publiee", list(ids)
    )
    return {r["resource_id"]: RessourcePubliee.model_validate_json(r["ressource"]) for r in rows}


async def _recus(conn: asyncpg.Connection, types: Sequence[str], uais: list[str]) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT type, uai, content FROM recus WHERE type = ANY($1::text[]) AND uai = ANY($2::text[]) "
        "ORDER BY uai, type, entity",
        list(types), uais,
    )


async def load_profils(conn: asyncpg.Connection, uais: list[str]) -> dict[str, ProfilEquipement]:
    """Per UAI with any equipment record: its lots in service (by lot_id) and its link."""
    lots: dict[str, list[LotProfil]] = {}
    links: dict[str, ConnectiviteProfil] = {}
    for r in await _recus(conn, (PROFIL_LOT, PROFIL_CONNECTIVITE), uais):
        lots.setdefault(r["uai"], [])
        if r["type"] == PROFIL_CONNECTIVITE:
            links[r["uai"]] = ConnectiviteProfil.model_validate_json(r["content"])
        elif (lot := LotProfil.model_validate_json(r["content"])).quantity > 0:
            lots[r["uai"]].append(lot)
    return {u: ProfilEquipement(uai=u, lots=lots[u], connectivite=links.get(u)) for u in lots}


async def load_couvertures(conn: asyncpg.Connection, uais: list[str]) -> dict[str, CouvertureFormation]:
    """Per UAI with any training record: counted teachers, competences, tools held by someone."""
    parts: dict[str, dict] = {}
    for r in await _recus(conn, (COUVERTURE_ENSEIGNANTS, COUVERTURE_OUTIL), uais):
        content = json.loads(r["content"])
        part = parts.setdefault(r["uai"], {"uai": r["uai"], "enseignants": 0, "competences": {}, "outils": {}})
        if r["type"] == COUVERTURE_ENSEIGNANTS:
            part.update(enseignants=content["enseignants"], competences=content["competences"])
        elif content["enseignants"] > 0:
            part["outils"][content["kind"]] = content["enseignants"]
    return {u: CouvertureFormation.model_validate(p) for u, p in parts.items()}


async def load_alertes(
    conn: asyncpg.Connection, pairs: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, asyncpg.Record]]:
    """The alerts of exactly these (uai, resource_id) pairs, per pair, per kind."""
    rows = await conn.fetch(
        "SELECT alert_id, uai, resource_id, kind, ouverte, cycle, raised_at, alerte FROM alertes "
        "WHERE (uai, resource_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        [u for u, _ in pairs], [r for _, r in pairs],
    )
    out: dict[tuple[str, str], dict[str, asyncpg.Record]] = {}
    for r in rows:
        out.setdefault((r["uai"], r["resource_id"]), {})[r["kind"]] = r
    return out


async def save_alertes(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """Rows of (alert_id, uai, resource_id, kind, ouverte, cycle, raised_at, resolved_at, alerte json)."""
    await conn.executemany(
        """
        INSERT INTO alertes (alert_id, uai, resource_id, kind, ouverte, cycle, raised_at, resolved_at, alerte)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)
        ON CONFLICT (alert_id) DO UPDATE SET ouverte = EXCLUDED.ouverte, cycle = EXCLUDED.cycle,
            raised_at = EXCLUDED.raised_at, resolved_at = EXCLUDED.resolved_at, alerte = EXCLUDED.alerte
        """,
        rows,
    )
