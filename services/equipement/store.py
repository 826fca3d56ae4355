"""equipement's SQL, in one place: the store its use case receives, one per transaction."""

from collections.abc import Iterable, Sequence

from contracts import CloudEvent, Lot
from services.common.rules.state import Verdicts
from services.common.storage.db import Conn
from services.common.storage.derived import PgPublished
from services.common.storage.entities import store_latest
from services.common.storage.locks import lock_keys
from services.equipement import domain


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
            row_of=lambda e: _lot_row(e.data),
        )

    async def lock(self, uais: Iterable[str]) -> None:
        await lock_keys(self._conn, "uai", uais)

    async def store_connectivites(self, events: Sequence[CloudEvent]) -> Verdicts:
        return await store_latest(
            self._conn,
            "connectivites",
            ("uai",),
            {"bandwidth_mbps": "float8", "ent": "boolean"},
            events,
            row_of=lambda e: (e.data.bandwidth_mbps, e.data.ent),
        )


def _lot_row(lot: Lot) -> tuple:
    """The row's kind, quantity, os and browsers: what equipement publishes of the lot."""
    content = domain.lot_content(lot)
    return content["kind"], content["quantity"], content["os"], content["browsers"]
