"""equipement's SQL, in one place."""

import json
from collections.abc import Sequence

import asyncpg

from contracts import CloudEvent
from services.common.entities import store_latest
from services.common.state import Verdicts


async def store_lots(conn: asyncpg.Connection, events: Sequence[CloudEvent]) -> Verdicts:
    return await store_latest(
        conn, "lots", ("uai", "lot_id"), ("kind", "quantity", "os", "browsers"), events,
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
        row_of=lambda e: (e.data.bandwidth_mbps, e.data.ent),
    )
