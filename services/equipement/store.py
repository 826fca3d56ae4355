"""equipement's SQL, in one place."""

import json
from collections.abc import Sequence

import asyncpg

from contracts import CloudEvent
from contracts.internal import ConnectiviteProfil, LotProfil
from services.common.entities import store_latest
from services.common.state import Verdicts
from services.equipement.domain import lot_profil


async def store_lots(conn: asyncpg.Connection, events: Sequence[CloudEvent]) -> Verdicts:
    return await store_latest(
        conn, "lots", ("uai", "lot_id"), ("kind", "quantity", "os", "browsers"), events,
        key_of=lambda e: (e.data.uai, e.data.lot_id),
        row_of=lambda e: (
            e.data.kind,
            e.data.quantity,
            json.dumps(e.data.os.model_dump(mode="json")) if e.data.os else None,
            json.dumps([b.model_dump(mode="json") for b in e.data.browsers]),
        ),
    )


async def store_connectivites(conn: asyncpg.Connection, events: Sequence[CloudEvent]) -> Verdicts:
    return await store_latest(
        conn, "connectivites", ("uai",), ("bandwidth_mbps", "ent"), events,
        key_of=lambda e: (e.data.uai,),
        row_of=lambda e: (e.data.bandwidth_mbps, e.data.ent),
    )


async def load_equipment(
    conn: asyncpg.Connection, uais: list[str]
) -> tuple[dict[str, list[LotProfil]], dict[str, ConnectiviteProfil]]:
    lots: dict[str, list[LotProfil]] = {u: [] for u in uais}
    for r in await conn.fetch(
        "SELECT uai, lot_id, kind, quantity, os, browsers FROM lots WHERE uai = ANY($1::text[]) AND quantity > 0", uais
    ):
        os = json.loads(r["os"]) if r["os"] else None
        lots[r["uai"]].append(lot_profil(r["lot_id"], r["kind"], r["quantity"], os, json.loads(r["browsers"])))
    links = {
        r["uai"]: ConnectiviteProfil(bandwidth_mbps=r["bandwidth_mbps"], ent=r["ent"])
        for r in await conn.fetch("SELECT uai, bandwidth_mbps, ent FROM connectivites WHERE uai = ANY($1::text[])", uais)
    }
    return lots, links
