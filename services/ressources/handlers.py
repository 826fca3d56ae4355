"""ressources' use case: keep the catalogue, subscriptions, profiles and coverages, and
re-evaluate exactly the pairs a batch touched (a UAI's pairs, a resource's pairs)."""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

import structlog

import contracts as c
from contracts import AlerteLevee, AlerteResolue, CloudEvent, Etablissement, RessourcePubliee, make_event, uai_of
from contracts.internal import INTERNAL_PAYLOADS, CouvertureFormation, ProfilEquipement
from services.common.pipeline import Applied, Outgoing, Pipeline
from services.common.rules.state import Verdicts
from services.ressources.lifecycle import Held, event_id, transitions
from services.ressources.rules import Seuils, evaluate, is_evaluated
from services.ressources.settings import RessourcesSettings
from services.ressources.store import AlertRow, Pair

SOURCE = "/plateforme/ressources"
log = structlog.get_logger(__name__)


class Store(Protocol):
    """What the use case needs of its storage (store.RessourcesStore; an in-memory one in tests)."""

    async def store_catalogue(self, events: Sequence[CloudEvent]) -> Verdicts: ...

    async def store_abonnements(self, events: Sequence[CloudEvent]) -> Verdicts: ...

    async def store_derived(self, events: Sequence[CloudEvent]) -> set[str]: ...

    async def pairs_of(self, uais: set[str], resources: set[str]) -> list[Pair]: ...

    async def etablissements(self, uais: list[str]) -> dict[str, Etablissement]: ...

    async def load_ressources(self, ids: set[str]) -> dict[str, RessourcePubliee]: ...

    async def load_profils(self, uais: list[str]) -> dict[str, ProfilEquipement]: ...

    async def load_couvertures(self, uais: list[str]) -> dict[str, CouvertureFormation]: ...

    async def load_alertes(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Held]]: ...

    async def save_alertes(self, rows: Sequence[AlertRow]) -> None: ...

    async def journal(self, events: Sequence[CloudEvent]) -> None: ...

    async def seuils(self) -> tuple[float, float] | None: ...

    async def save_seuils(self, seuils: Seuils) -> None: ...

    async def subscribed_uais(self) -> list[str]: ...


def make_apply(seuils: Seuils):
    async def apply(store: Store, events: Sequence[CloudEvent], ref_changed: set[str]) -> Applied:
        of = lambda *types: [e for e in events if e.type in types]  # noqa: E731
        catalogue = await store.store_catalogue(of(c.RESSOURCE_PUBLIEE, c.RESSOURCE_RETIREE))
        abonnements = await store.store_abonnements(of(c.ABONNEMENT))
        derived = await store.store_derived(of(*INTERNAL_PAYLOADS))

        # Which input event each touched UAI or resource owes its re-evaluation to (tracing).
        causes: dict[str, CloudEvent] = {}
        for e in events:
            for touched in (uai_of(e), getattr(e.data, "resource_id", None)):
                if touched:
                    causes[touched] = e
        uais = ref_changed | derived | {e.data.uai for e in abonnements.winners.values()}
        resources = {e.data.resource_id for e in catalogue.winners.values()}
        outgoing = await reevaluate(store, uais, resources, seuils, causes)
        return Applied(stale=catalogue.stale + abonnements.stale, outgoing=outgoing)

    return apply


async def reconcile_seuils(pipeline: Pipeline, settings: RessourcesSettings, chunk: int = 2000) -> None:
    """At start: when the thresholds differ from those the held alerts were evaluated with,
    re-evaluate every subscribed pair (by chunks of UAIs, each one transaction), then record
    the new thresholds. Interrupted, it starts over at the next start: transitions are idempotent."""
    seuils = settings.seuils
    held = await pipeline.run(lambda store: store.seuils())
    if held == (seuils.min_compatible_share, seuils.min_training_coverage):
        return
    uais = await pipeline.run(lambda store: store.subscribed_uais())
    log.info("seuils.reevaluation", previous=held, pairs_uais=len(uais))
    emitted = 0
    for start in range(0, len(uais), chunk):
        part = set(uais[start : start + chunk])

        async def work(store: Store, part: set[str] = part) -> list[Outgoing]:
            return await reevaluate(store, part, set(), seuils, {})

        emitted += await pipeline.run_exclusive(work)
    await pipeline.run(lambda store: store.save_seuils(seuils))
    log.info("seuils.reevaluated", alerts_emitted=emitted)


async def reevaluate(
    store: Store, uais: set[str], resources: set[str], seuils: Seuils, causes: dict[str, CloudEvent]
) -> list[Outgoing]:
    if not uais and not resources:
        return []
    pairs = await store.pairs_of(uais, resources)
    pair_uais = sorted({p.uai for p in pairs})
    etabs = await store.etablissements(pair_uais)
    ressources = await store.load_ressources({p.resource_id for p in pairs})
    profils = await store.load_profils(pair_uais)
    couvertures = await store.load_couvertures(pair_uais)
    held_alerts = await store.load_alertes([(p.uai, p.resource_id) for p in pairs])
    now = datetime.now(UTC)
    rows, outgoing = [], []
    for pair in sorted(pairs, key=lambda p: (p.uai, p.resource_id)):
        uai, rid = pair.uai, pair.resource_id
        etab, ressource = etabs.get(uai), ressources.get(rid)
        active = is_evaluated(pair.end, etab.ouvert if etab else None, ressource is not None)
        evaluation = (
            evaluate(ressource, profils.get(uai), couvertures.get(uai), seuils)
            if active and ressource is not None
            else None
        )
        cause = causes.get(uai) or causes.get(rid)
        for t in transitions(uai, rid, etab, evaluation, held_alerts.get((uai, rid), {}), now):
            cycle = t.held.cycle if t.held else 0
            if t.raised:
                cycle += 1
                rows.append(AlertRow(t.raised, ouverte=True, cycle=cycle))
                outgoing.append(
                    _announce(c.ALERTE_LEVEE, t.raised, event_id(t.raised.alert_id, cycle, "levee"), now, cause)
                )
            elif t.resolved and t.held:
                rows.append(AlertRow(t.held.alerte, ouverte=False, cycle=cycle, resolved_at=now))
                outgoing.append(
                    _announce(c.ALERTE_RESOLUE, t.resolved, event_id(t.resolved.alert_id, cycle, "resolue"), now, cause)
                )
            elif t.updated:
                rows.append(AlertRow(t.updated, ouverte=True, cycle=cycle))
    await store.save_alertes(rows)
    await store.journal([o.event for o in outgoing])
    for o in outgoing:
        alerte = o.event.data
        log.info(
            "alert.raised" if o.event.type == c.ALERTE_LEVEE else "alert.resolved",
            alert_id=alerte.alert_id,
            kind=alerte.kind,
            uai=alerte.uai,
            resource_id=alerte.resource_id,
        )
    return outgoing


def _announce(
    type_: str, alerte: AlerteLevee | AlerteResolue, id_: str, now: datetime, cause: CloudEvent | None
) -> Outgoing:
    event = make_event(type_, alerte, source=SOURCE, subject=alerte.subject, id=id_, time=now)
    return Outgoing(c.ALERTES, alerte.uai, event, cause)
