"""formation's use case: store affectations and trainings, republish the coverage records that changed."""

from collections.abc import Sequence

import asyncpg

import contracts as c
from contracts import CloudEvent
from contracts.internal import (
    COUVERTURE_ENSEIGNANTS,
    COUVERTURE_OUTIL,
    COUVERTURES,
    CouvertureEnseignants,
    CouvertureOutil,
)
from services.common.derived import Derived, publish_changes, published_entities
from services.common.pipeline import Applied
from services.formation import domain, store

SOURCE = "/plateforme/formation"
ENSEIGNANTS = Derived(COUVERTURE_ENSEIGNANTS, COUVERTURES, CouvertureEnseignants)
OUTILS = Derived(COUVERTURE_OUTIL, COUVERTURES, CouvertureOutil, entity_field="kind")


async def apply(conn: asyncpg.Connection, events: Sequence[CloudEvent], _ref_changed: set[str]) -> Applied:
    affectations = await store.store_affectations(conn, [e for e in events if e.type == c.AFFECTATION])
    trainings = [e for e in events if e.type == c.FORMATION_SUIVIE]
    await store.add_trainings(conn, trainings)

    causes: dict[str, CloudEvent] = {e.data.uai: e for e in affectations.winners.values()}
    by_teacher = {e.data.teacher_id: e for e in trainings}
    for uai, teachers in (await store.active_uais(conn, list(by_teacher))).items():
        causes.setdefault(uai, by_teacher[teachers[-1]])
    uais = sorted(causes)
    counts = await store.coverage_counts(conn, uais)
    published_tools = await published_entities(conn, OUTILS, uais)
    outgoing = await publish_changes(
        conn, ENSEIGNANTS, source=SOURCE, causes=causes,
        contents={(u, ""): domain.competences_content(counts.enseignants[u], counts.levels[u]) for u in uais},
    )
    outgoing += await publish_changes(
        conn, OUTILS, source=SOURCE, causes=causes,
        contents={(u, kind): content for u in uais
                  for kind, content in domain.outils_contents(counts.tools[u], published_tools.get(u, set())).items()},
    )
    return Applied(stale=affectations.stale, outgoing=outgoing)
