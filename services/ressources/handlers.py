"""ressources' use case: keep the catalogue, subscriptions, profiles and coverages, and
re-evaluate exactly the pairs a batch touched (a UAI's pairs, a resource's pairs)."""

from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg
import structlog

import contracts as c
from contracts import AlerteLevee, CloudEvent, make_event, uai_of
from contracts.internal import INTERNAL_PAYLOADS
from services.common import referentiel
from services.common.pipeline import Applied, Outgoing, Pipeline
from services.ressources.settings import RessourcesSettings
from services.ressources import store, stream
from services.ressources.lifecycle import Held, event_id, transitions
from services.ressources.rules import Seuils, evaluate, is_evaluated

SOURCE = "/plateforme/ressources"
log = structlog.get_logger(__name__)


def make_apply(seuils: Seuils):
    async def apply(conn: asyncpg.Connection, events: Sequence[CloudEvent], ref_changed: set[str]) -> Applied:
        of = lambda *types: [e for e in events if e.type in types]  # noqa: E731
        catalogue = await store.store_catalogue(conn, of(c.RESSOURCE_PUBLIEE, c.RESSOURCE_RETIREE))
        abonnements = await store.store_abonnements(conn, of(c.ABONNEMENT))
        derived = await store.store_derived(conn, of(*INTERNAL_PAYLOADS))

        # Which input event each touched UAI or resource owes its re-evaluation to (tracing).
        causes: dict[str, CloudEvent] = {}
        for e in events:
            for touched in (uai_of(e), getattr(e.data, "resource_id", None)):
                if touched:
                    causes[touched] = e
        uais = ref_changed | derived | {e.data.uai for e in abonnements.winners.values()}
        resources = {e.data.resource_id for e in catalogue.winners.values()}
        outgoing = await reevaluate(conn, uais, resources, seuils, causes)
        return Applied(stale=catalogue.stale + abonnements.stale, outgoing=outgoing)

    return apply


async def reconcile_seuils(pipeline: Pipeline, settings: RessourcesSettings, chunk: int = 2000) -> None:
    """At start: when the thresholds differ from those the held alerts were evaluated with,
    re-evaluate every subscribed pair (by chunks of UAIs, each one transaction), then record
    the new thresholds. Interrupted, it starts over at the next start: transitions are idempotent."""
    seuils = settings.seuils
    async with pipeline.pool.acquire() as conn:
        held = await conn.fetchrow("SELECT min_compatible_share, min_training_coverage FROM seuils")
        if held is not None and tuple(held) == (seuils.min_compatible_share, seuils.min_training_coverage):
            return
        uais = [r["uai"] for r in await conn.fetch("SELECT DISTINCT uai FROM abonnements ORDER BY uai")]
    log.info("seuils.reevaluation", previous=dict(held) if held else None, pairs_uais=len(uais))
    emitted = 0
    for start in range(0, len(uais), chunk):
        part = set(uais[start:start + chunk])
        emitted += await pipeline.run_exclusive(lambda conn, part=part: reevaluate(conn, part, set(), seuils, {}))
    async with pipeline.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO seuils (min_compatible_share, min_training_coverage) VALUES ($1, $2) ON CONFLICT (id) "
            "DO UPDATE SET min_compatible_share = $1, min_training_coverage = $2",
            seuils.min_compatible_share, seuils.min_training_coverage,
        )
    log.info("seuils.reevaluated", alerts_emitted=emitted)


async def reevaluate(
    conn: asyncpg.Connection, uais: set[str], resources: set[str], seuils: Seuils, causes: dict[str, CloudEvent]
) -> list[Outgoing]:
    if not uais and not resources:
        return []
    pairs = await store.pairs_of(conn, uais, resources)
    pair_uais = sorted({p["uai"] for p in pairs})
    etabs = await referentiel.load(conn, pair_uais)
    ressources = await store.load_ressources(conn, {p["resource_id"] for p in pairs})
    profils = await store.load_profils(conn, pair_uais)
    couvertures = await store.load_couvertures(conn, pair_uais)
    held_rows = await store.load_alertes(conn, [(p["uai"], p["resource_id"]) for p in pairs])
    now = datetime.now(UTC)
    rows, outgoing = [], []
    for pair in sorted(pairs, key=lambda p: (p["uai"], p["resource_id"])):
        uai, rid = pair["uai"], pair["resource_id"]
        etab, ressource = etabs.get(uai), ressources.get(rid)
        active = is_evaluated(pair["end"], etab.ouvert if etab else None, ressource is not None)
        evaluation = evaluate(ressource, profils.get(uai), couvertures.get(uai), seuils) if active else None
        held = {
            kind: Held(r["ouverte"], r["cycle"], AlerteLevee.model_validate_json(r["alerte"]))
            for kind, r in held_rows.get((uai, rid), {}).items()
        }
        cause = causes.get(uai) or causes.get(rid)
        for t in transitions(uai, rid, etab, evaluation, held, now):
            cycle = t.held.cycle if t.held else 0
            if t.raised:
                cycle += 1
                rows.append((t.raised.alert_id, uai, rid, t.kind, True, cycle, now, None, t.raised.model_dump_json()))
                event = make_event(c.ALERTE_LEVEE, t.raised, source=SOURCE, subject=t.raised.subject,
                                   id=event_id(t.raised.alert_id, cycle, "levee"), time=now)
                outgoing.append(Outgoing(c.ALERTES, uai, event, cause))
            elif t.resolved:
                rows.append((t.resolved.alert_id, uai, rid, t.kind, False, cycle, t.resolved.raised_at, now,
                             t.held.alerte.model_dump_json()))
                event = make_event(c.ALERTE_RESOLUE, t.resolved, source=SOURCE, subject=t.resolved.subject,
                                   id=event_id(t.resolved.alert_id, cycle, "resolue"), time=now)
                outgoing.append(Outgoing(c.ALERTES, uai, event, cause))
            elif t.updated:
                rows.append((t.updated.alert_id, uai, rid, t.kind, True, cycle, t.updated.raised_at, None,
                             t.updated.model_dump_json()))
    await store.save_alertes(conn, rows)
    await stream.notify(conn, [o.event for o in outgoing])
    return outgoing
