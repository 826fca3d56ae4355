"""equipement's use case: store lots and connectivity, republish each lot and link that changed."""

from collections.abc import Sequence

import asyncpg

import contracts as c
from contracts import CloudEvent
from contracts.internal import PROFIL_CONNECTIVITE, PROFIL_LOT, PROFILS, ProfilConnectivite, ProfilLot
from services.common.derived import Derived, publish_changes
from services.common.pipeline import Applied
from services.equipement import domain, store

SOURCE = "/plateforme/equipement"
LOTS = Derived(PROFIL_LOT, PROFILS, ProfilLot, entity_field="lot_id")
LINKS = Derived(PROFIL_CONNECTIVITE, PROFILS, ProfilConnectivite)


async def apply(conn: asyncpg.Connection, events: Sequence[CloudEvent], _ref_changed: set[str]) -> Applied:
    lots = await store.store_lots(conn, [e for e in events if e.type == c.LOT])
    links = await store.store_connectivites(conn, [e for e in events if e.type == c.CONNECTIVITE])
    # The winners are the entities' new state: no need to read back what was just written.
    outgoing = await publish_changes(
        conn, LOTS, source=SOURCE, causes={e.data.uai: e for e in lots.winners.values()},
        contents={(e.data.uai, e.data.lot_id): domain.lot_content(e.data) for e in lots.winners.values()},
    )
    outgoing += await publish_changes(
        conn, LINKS, source=SOURCE, causes={e.data.uai: e for e in links.winners.values()},
        contents={(e.data.uai, ""): domain.connectivite_content(e.data) for e in links.winners.values()},
    )
    return Applied(stale=lots.stale + links.stale, outgoing=outgoing)
