"""formation's use case: store affectations and trainings, republish changed coverages."""

from collections.abc import Sequence

import asyncpg

import contracts as c
from contracts import CloudEvent
from contracts.internal import COUVERTURE_FORMATION, COUVERTURES, CouvertureFormation
from services.common.derived import publish_changes
from services.common.pipeline import Applied
from services.formation import domain, store

SOURCE = "/plateforme/formation"


async def apply(conn: asyncpg.Connection, events: Sequence[CloudEvent], _ref_changed: set[str]) -> Applied:
    affectations = await store.store_affectations(conn, [e for e in events if e.type == c.AFFECTATION])
    trainings = [e for e in events if e.type == c.FORMATION_SUIVIE]
    await store.add_trainings(conn, trainings)

    causes: dict[str, CloudEvent] = {e.data.uai: e for e in affectations.winners.values()}
    by_teacher = {e.data.teacher_id: e for e in trainings}
    for uai, teachers in (await store.active_uais(conn, list(by_teacher))).items():
        causes.setdefault(uai, by_teacher[teachers[-1]])
    uais = sorted(causes)
    per_uai, levels, tools = await store.load_teachers(conn, uais)
    contents = {u: domain.couverture_content(per_uai[u], levels, tools) for u in uais}
    outgoing = await publish_changes(
        conn, table="couvertures", column="couverture", topic=COUVERTURES, event_type=COUVERTURE_FORMATION,
        source=SOURCE, contents=contents, model=CouvertureFormation, causes=causes,
    )
    return Applied(stale=affectations.stale, outgoing=outgoing)
