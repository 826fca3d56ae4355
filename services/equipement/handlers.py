"""equipement's use case: store lots and connectivity, republish the profiles that changed."""

from collections.abc import Sequence

import asyncpg

import contracts as c
from contracts import CloudEvent
from contracts.internal import PROFIL_EQUIPEMENT, PROFILS, ProfilEquipement
from services.common.derived import publish_changes
from services.common.pipeline import Applied
from services.equipement import domain, store

SOURCE = "/plateforme/equipement"


async def apply(conn: asyncpg.Connection, events: Sequence[CloudEvent], _ref_changed: set[str]) -> Applied:
    lots = await store.store_lots(conn, [e for e in events if e.type == c.LOT])
    links = await store.store_connectivites(conn, [e for e in events if e.type == c.CONNECTIVITE])
    causes = {e.data.uai: e for e in [*lots.winners.values(), *links.winners.values()]}
    uais = sorted(causes)
    in_service, connectivites = await store.load_equipment(conn, uais)
    contents = {u: domain.profil_content(in_service[u], connectivites.get(u)) for u in uais}
    outgoing = await publish_changes(
        conn, table="profils", column="profil", topic=PROFILS, event_type=PROFIL_EQUIPEMENT,
        source=SOURCE, contents=contents, model=ProfilEquipement, causes=causes,
    )
    return Applied(stale=lots.stale + links.stale, outgoing=outgoing)
