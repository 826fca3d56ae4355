"""equipement's SQL, in one place: the store its use case receives, one per transaction."""

from collections.abc import Sequence

from pydantic_core import to_json

from contracts import CloudEvent
from services.common.rules.state import Verdicts
from services.common.storage.db import Conn
from services.common.storage.derived import PgPublished
from services.common.storage.entities import store_latest


class EquipementStore:
    def __init__(self, conn: Conn):
        self._conn = conn
        self.published = PgPublished(conn)

    async def store_lots(self, events: Sequence[CloudEvent]) -> Verdicts:
        return await store_latest(
            self._conn,
            "lots",
            ("uai", "lot_id"),
            {"kind": "text", "quantity": "int", "os": "jsonb", "browsers": "jsonb"},
            events,
            row_of=lambda e: (
                e.data.kind,
                e.data.quantity,
                to_json(e.data.os).decode() if e.data.os else None,
                to_json(e.data.browsers).decode(),
            ),
        )

    async def store_connectivites(self, events: Sequence[CloudEvent]) -> Verdicts:
        return await store_latest(
            self._conn,
            "connectivites",
            ("uai",),
            {"bandwidth_mbps": "float8", "ent": "boolean"},
            events,
            row_of=lambda e: (e.data.bandwidth_mbps, e.data.ent),
        )
