"""equipement's use case: store lots and connectivity, republish each lot and link that changed."""

from collections.abc import Collection, Iterable, Sequence
from typing import Protocol

import contracts as c
from contracts import CloudEvent
from contracts.internal import PROFIL_CONNECTIVITE, PROFIL_LOT, PROFILS
from services.common.pipeline import Applied
from services.common.rules.state import Verdicts
from services.common.storage.derived import Derived, Published, publish_changes
from services.equipement import domain

SOURCE = "/plateforme/equipement"
LOTS = Derived(PROFIL_LOT, PROFILS, entity_field="lot_id", retired=lambda held: {**held, "quantity": 0})
LINKS = Derived(PROFIL_CONNECTIVITE, PROFILS)


class Store(Protocol):
    """What the use case needs of its storage (store.EquipementStore; an in-memory one in tests)."""

    published: Published

    async def store_lots(self, events: Sequence[CloudEvent]) -> Verdicts: ...

    async def store_connectivites(self, events: Sequence[CloudEvent]) -> Verdicts: ...

    async def lock(self, uais: Iterable[str]) -> None: ...


async def apply(store: Store, events: Sequence[CloudEvent], _ref_changed: Collection[str]) -> Applied:
    lots = await store.store_lots([e for e in events if e.type == c.LOT])
    links = await store.store_connectivites([e for e in events if e.type == c.CONNECTIVITE])
    # A UAI's records are read by one consumer (one partition), but records that waited for
    # their établissement are judged again beside it (Pipeline.revive), in another transaction:
    # the UAIs held until the commit, so that a UAI's groups of records are numbered in the
    # order they are committed (ressources assembles a UAI's profile from its latest whole group).
    await store.lock({e.data.uai for e in [*lots.winners.values(), *links.winners.values()]})
    # The winners are the entities' new state: no need to read back what was just written.
    outgoing = await publish_changes(
        store.published,
        [
            (LOTS, {(e.data.uai, e.data.lot_id): domain.lot_content(e.data) for e in lots.winners.values()}),
            (LINKS, {(e.data.uai, ""): domain.connectivite_content(e.data) for e in links.winners.values()}),
        ],
        source=SOURCE,
        causes={e.data.uai: e for e in [*lots.winners.values(), *links.winners.values()]},
    )
    return Applied(stale=lots.stale + links.stale, outgoing=outgoing)
