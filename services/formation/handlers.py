"""formation's use case: store affectations and trainings, republish the coverage records that changed."""

from collections.abc import Collection, Iterable, Mapping, Sequence, Set
from typing import Protocol

import contracts as c
from contracts import CloudEvent
from contracts.internal import COUVERTURE_ENSEIGNANTS, COUVERTURE_OUTIL, COUVERTURES
from services.common.pipeline import Applied
from services.common.rules.state import Verdicts
from services.common.storage.derived import Derived, Published, publish_changes
from services.formation import domain

SOURCE = "/plateforme/formation"
ENSEIGNANTS = Derived(COUVERTURE_ENSEIGNANTS, COUVERTURES, retired=lambda _: domain.competences_content(0, {}))
OUTILS = Derived(COUVERTURE_OUTIL, COUVERTURES, entity_field="kind", retired=lambda _: {"enseignants": 0})


class Store(Protocol):
    """What the use case needs of its storage (store.FormationStore; an in-memory one in tests)."""

    published: Published

    async def store_affectations(self, events: Sequence[CloudEvent]) -> Verdicts: ...

    async def add_trainings(self, levels: Mapping[tuple[str, str], int], tools: Set[tuple[str, str]]) -> set[str]: ...

    async def active_uais(self, teachers: Sequence[str]) -> dict[str, list[str]]: ...

    async def coverage_counts(self, uais: Sequence[str]) -> domain.Counts: ...

    async def lock(self, namespace: str, keys: Iterable[str]) -> None: ...


async def apply(store: Store, events: Sequence[CloudEvent], _ref_changed: Collection[str]) -> Applied:
    declared = [e for e in events if e.type == c.AFFECTATION]
    affectations = await store.store_affectations(declared)
    before = {key: counted for key, (counted,) in affectations.held.items()}  # whether the teacher counted there
    trainings = [e for e in events if e.type == c.FORMATION_SUIVIE]
    grew = await store.add_trainings(*domain.acquis([e.data for e in trainings]))
    # A UAI's coverage is counted again only if it may have changed: a teacher starts or stops
    # counting there (or is declared there for the first time), or a teacher counted there
    # gained a level or a tool. A declaration repeated as it is (a rectorat re-sending its
    # affectations) changes no count.
    changed = [e for key, e in affectations.winners.items() if before.get(key) != (e.data.end is None)]
    # Replicas: what a teacher counts for is read, and a UAI counted, only once their keys are
    # held (storage/locks.py), teachers before UAIs; a transaction another one could not see
    # yet counts again itself, later. Only the teachers whose counting changes here, or who
    # learnt: a repeated declaration changes where nobody counts, so no reading can miss it.
    await store.lock("enseignant", {e.data.teacher_id for e in changed} | grew)
    causes: dict[str, CloudEvent] = {e.data.uai: e for e in changed}
    by_teacher = {e.data.teacher_id: e for e in trainings if e.data.teacher_id in grew}
    for uai, teachers in (await store.active_uais(list(by_teacher))).items():
        causes.setdefault(uai, by_teacher[teachers[-1]])
    uais = sorted(causes)
    if not uais:
        return Applied(stale=affectations.stale)
    await store.lock("uai", uais)
    counts = await store.coverage_counts(uais)
    published_tools = await store.published.entities(OUTILS.event_type, uais)
    tools = {
        (u, kind): content
        for u in uais
        for kind, content in domain.outils_contents(counts.tools[u], published_tools.get(u, set())).items()
    }
    counted = {(u, ""): domain.competences_content(counts.enseignants[u], counts.levels[u]) for u in uais}
    outgoing = await publish_changes(
        store.published, [(ENSEIGNANTS, counted), (OUTILS, tools)], source=SOURCE, causes=causes
    )
    return Applied(stale=affectations.stale, outgoing=outgoing)
