"""ressources' SQL, in one place."""

import json
from collections.abc import Iterable, Sequence

import asyncpg

import contracts as c
from contracts import CloudEvent, RessourcePubliee
from contracts.internal import CouvertureFormation, ProfilEquipement
from services.common.entities import store_latest
from services.common.state import Verdicts


async def store_catalogue(conn: asyncpg.Connection, events: Sequence[CloudEvent]) -> Verdicts:
    """ressource-publiee and ressource-retiree are two states of one entity, `resource_id`."""
    return await store_latest(
        conn, "ressources", ("resource_id",), ("publiee", "ressource"), events,
        key_of=lambda e: (e.data.resource_id,),
        row_of=lambda e: (True, e.data.model_dump_json()) if e.type == c.RESSOURCE_PUBLIEE else (False, None),
    )


async def store_abonnements(conn: asyncpg.Connection, events: Sequence[CloudEvent]) -> Verdicts:
    return await store_latest(
        conn, "abonnements", ("resource_id", "uai"), ("start", "end"), events,
        key_of=lambda e: (e.data.resource_id, e.data.uai),
        row_of=lambda e: (e.data.start, e.data.end),
    )


async def store_versioned(conn: asyncpg.Connection, table: str, column: str, events: Sequence[CloudEvent]) -> set[str]:
    """Keep the highest `version` per UAI of what another service publishes; returns the UAIs
    whose content changed here."""
    latest: dict[str, CloudEvent] = {}
    for e in events:
        if e.data.uai not in latest or latest[e.data.uai].data.version < e.data.version:
            latest[e.data.uai] = e
    rows = await conn.fetch(
        f"""
        INSERT INTO {table} (uai, version, {column})
        SELECT * FROM unnest($1::text[], $2::bigint[], $3::jsonb[])
        ON CONFLICT (uai) DO UPDATE SET version = EXCLUDED.version, {column} = EXCLUDED.{column}
        WHERE {table}.version < EXCLUDED.version
        RETURNING uai
        """,
        list(latest),
        [e.data.version for e in latest.values()],
        [e.data.model_dump_json() for e in latest.values()],
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


async def load_profils(conn: asyncpg.Connection, uais: list[str]) -> dict[str, ProfilEquipement]:
    rows = await conn.fetch("SELECT uai, profil FROM profils WHERE uai = ANY($1::text[])", uais)
    return {r["uai"]: ProfilEquipement.model_validate_json(r["profil"]) for r in rows}


async def load_couvertures(conn: asyncpg.Connection, uais: list[str]) -> dict[str, CouvertureFormation]:
    rows = await conn.fetch("SELECT uai, couverture FROM couvertures WHERE uai = ANY($1::text[])", uais)
    return {r["uai"]: CouvertureFormation.model_validate_json(r["couverture"]) for r in rows}


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
