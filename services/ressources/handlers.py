"""ressources' use case: keep the catalogue, subscriptions, profiles and coverages, and
re-evaluate exactly the pairs a batch touched: a UAI's pairs in the batch's transaction, a
resource's pairs (up to every établissement of the country) in the background, by chunks of
UAIs (`Reevaluations`).

A transaction evaluates a UAI's pairs only while it holds the UAI's lock, taken after writing
its inputs and before reading any (services/common/storage/locks.py): transactions evaluating
one UAI run one after the other, each seeing what those before it wrote. A resource's fan-out
cannot see a subscription not yet committed, so a batch of subscriptions and one changing their
resource also take turns on the resource (`lock_resources`)."""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import structlog
from pydantic_core import to_json

import contracts as c
from contracts import CloudEvent, Etablissement, RessourcePubliee, uai_of
from contracts.envelope import envelope
from contracts.internal import INTERNAL_PAYLOADS
from services.common.messaging.outbox import Twin
from services.common.pipeline import TRACEPARENT_OF, Applied, EncodedEvent, Outgoing, Pipeline
from services.common.rules.state import Verdicts
from services.common.runtime.outages import Outage
from services.ressources.lifecycle import PORTEE, Content, Held, event_id, moved_from, transitions
from services.ressources.rules import Coverage, Fleet, Seuils, evaluate, is_evaluated, read_by_rules
from services.ressources.settings import RessourcesSettings
from services.ressources.store import EVERY_RESOURCE, AlertRow, Pair, ReevaluationPart, Resolution

SOURCE = "/plateforme/ressources"
ALERTE_DEPLACEE = "fr.education.alertes.alerte-deplacee.v1"
"""An open alert that moved (its établissement's académie, département or responsable changed):
on the live stream only (`/alertes/flux`, event `alerte-deplacee`), never on Kafka, not a type of
the contract. Its data the alert as it is now, matched by a stream's filters where it is now and
where it was: a dashboard filtering on either learns of it (read-API audit s67 F3: one whose
filter it moved into saw it only once it resolved)."""
log = structlog.get_logger(__name__)
FAILURE_PAUSE_SECONDS = 1.0
SEUILS_CHECK_SECONDS = 300.0
"""How often a replica compares the thresholds in force with its own (Reevaluations._watch_seuils)."""


class Store(Protocol):
    """What the use case needs of its storage (store.RessourcesStore; an in-memory one in tests)."""

    async def published_rules(self, ids: Sequence[str]) -> dict[str, dict]: ...

    async def store_catalogue(self, events: Sequence[CloudEvent]) -> Verdicts: ...

    async def store_abonnements(self, events: Sequence[CloudEvent]) -> Verdicts: ...

    async def store_derived(self, events: Sequence[CloudEvent]) -> set[str]: ...

    async def lock(self, uais: Sequence[str]) -> None: ...

    async def lock_resources(self, changed: Sequence[str], subscribed: Sequence[str]) -> None: ...

    async def assemble(self, uais: Sequence[str]) -> None: ...

    async def pairs_of(self, uais: Sequence[str], resource_id: str | None = None) -> list[Pair]: ...

    async def etablissements(self, uais: list[str]) -> dict[str, Etablissement]: ...

    async def unsubscribed(self, limit: int) -> list[Pair]: ...

    async def load_ressources(self, ids: set[str]) -> dict[str, RessourcePubliee]: ...

    async def load_inputs(self, uais: list[str]) -> tuple[dict[str, Fleet], dict[str, Coverage]]: ...

    async def load_alertes(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Held]]: ...

    async def save_alertes(self, rows: Sequence[AlertRow]) -> None: ...

    async def resolve_alertes(self, rows: Sequence[Resolution]) -> None: ...

    async def journal(self, entries: Sequence[tuple[bytes, bytes | None]]) -> None: ...

    async def seuils(self) -> tuple[float, float] | None: ...

    async def save_seuils(self, seuils: Seuils) -> None: ...

    async def request_reevaluations(
        self, resource_ids: Sequence[str], traceparents: Mapping[str, str | None] | None = None
    ) -> None: ...

    async def next_reevaluation(self) -> ReevaluationPart | None: ...

    async def subscribers(self, part: ReevaluationPart, limit: int) -> list[str]: ...

    async def advance_reevaluation(self, part: ReevaluationPart, after_uai: str | None) -> int | None: ...

    async def postpone_reevaluation(self, part: ReevaluationPart) -> tuple[int, float] | None: ...

    async def reevaluations_pending(self) -> int: ...


def make_apply(seuils: Seuils):
    async def apply(store: Store, events: Sequence[CloudEvent], ref_changed: Collection[str]) -> Applied:
        """`ref_changed`: the UAIs the référentiel changed in the batch, with their `etablissement`
        event when given as a mapping (the pipeline's): the cause of their alerts' changes."""
        of = lambda *types: [e for e in events if e.type in types]  # noqa: E731
        resources = of(c.RESSOURCE_PUBLIEE, c.RESSOURCE_RETIREE)
        before = await store.published_rules(sorted({e.data.resource_id for e in resources}))
        catalogue = await store.store_catalogue(resources)
        abonnements = await store.store_abonnements(of(c.ABONNEMENT))
        derived = await store.store_derived(of(*INTERNAL_PAYLOADS))

        # Which input event each touched UAI or resource owes its re-evaluation to (tracing): an
        # établissement closed, moved or reopened, else the batch's latest event about it that
        # changed anything (not a stale one).
        causes: dict[str, CloudEvent] = dict(ref_changed) if isinstance(ref_changed, Mapping) else {}
        stale = {id(e) for e in (*catalogue.stale, *abonnements.stale)}
        for e in events:
            for touched in (uai_of(e), getattr(e.data, "resource_id", None)):
                if touched and id(e) not in stale:
                    causes[touched] = e
        # A resource's pairs are re-evaluated in the background (Reevaluations), the batch's UAIs
        # here; not those of a resource republished with nothing the rules read changed. Its
        # fan-out sees only the subscriptions committed: one written here is evaluated here, so
        # this batch either reads the resource's change or commits before its fan-out is cut.
        changed = _changed_for_the_rules(catalogue.winners.values(), before)
        await store.lock_resources(changed, sorted({e.data.resource_id for e in abonnements.winners.values()}))
        # The alerts of its fan-out continue the trace of its change (the catalogue event kept).
        traceparent_of, kept = TRACEPARENT_OF.get(), {e.data.resource_id: e for e in catalogue.winners.values()}
        await store.request_reevaluations(changed, {rid: traceparent_of(kept[rid]) for rid in changed})
        uais = sorted({*ref_changed} | derived | {e.data.uai for e in abonnements.winners.values()})
        await store.lock(uais)
        await store.assemble(sorted(derived))
        evaluated = await reevaluate(store, await store.pairs_of(uais), seuils, causes)
        return Applied(
            stale=catalogue.stale + abonnements.stale, outgoing=evaluated.outgoing, committed=[evaluated.say]
        )

    return apply


def _changed_for_the_rules(winners: Iterable[CloudEvent], before: dict[str, dict]) -> list[str]:
    """The resources whose pairs these catalogue events may change: a withdrawal of a published
    one, a publication of one not published before or with something the rules read changed."""
    changed = []
    for e in winners:
        rid = e.data.resource_id
        if e.type == c.RESSOURCE_RETIREE:
            if rid in before:
                changed.append(rid)
        elif before.get(rid) != read_by_rules(e.data.model_dump(mode="json")):
            changed.append(rid)
        else:
            log.debug(  # one per resource: a partner sending its catalogue again unchanged, thousands
                "ressource.republiee_sans_effet", resource_id=rid, reason="only what the rules do not read changed"
            )
    return changed


@dataclass(frozen=True)
class Chunk:
    """One chunk of a re-evaluation, done: its resource (EVERY_RESOURCE: all) and part, its UAIs,
    whether it was the part's last, and then how many other parts of the resource were left."""

    resource_id: str
    part: int
    uais: int
    last: bool
    parts_left: int | None
    evaluated: "Evaluated"

    @property
    def outgoing(self) -> list[Outgoing]:
        return self.evaluated.outgoing


async def reevaluate_chunk(
    store: Store, seuils: Seuils, size: int, taken: Callable[[ReevaluationPart], None] | None = None
) -> Chunk | None:
    """The next `size` subscribed UAIs of a pending re-evaluation's part that no other
    transaction holds (and not put off), their pairs with its resource evaluated as things are
    now, the part's cursor moved past them (the part deleted after its last chunk). None when no
    part is waiting. Interrupted, the transaction leaves the cursor where it was; a chunk done twice
    changes nothing the second time (transitions go from the stored alerts, whose ids are stable).
    `taken` is told the part before its chunk is evaluated."""
    part = await store.next_reevaluation()
    if part is None:
        return None
    if taken is not None:
        taken(part)
    uais = await store.subscribers(part, size)
    await store.lock(uais)
    pairs = await store.pairs_of(uais, None if part.resource_id == EVERY_RESOURCE else part.resource_id)
    evaluated = await reevaluate(store, pairs, seuils, {})
    last = len(uais) < size or uais[-1] == part.up_to  # nothing after its bound: no empty chunk to come
    left = await store.advance_reevaluation(part, None if last else uais[-1])
    return Chunk(part.resource_id, part.part, len(uais), last, left, evaluated)


class Reevaluations:
    """ressources' background re-evaluations, chunk after chunk, each one transaction: other
    batches run between two chunks, memory holds one chunk per worker. A re-evaluation comes in
    parts (store.request_reevaluations); `reevaluation_workers` workers here, and those of the
    other replicas, each take a part no other transaction holds, so one fan-out is evaluated by
    all of them at once."""

    def __init__(self, pipeline: Pipeline, settings: RessourcesSettings):
        self._pipeline, self._seuils = pipeline, settings.seuils
        self._size, self._poll = settings.reevaluation_chunk, settings.reevaluation_poll_ms / 1000
        self._workers = settings.reevaluation_workers
        self._outage = Outage(
            log,
            "reevaluation.failed",
            "reevaluation.recovered",
            "PostgreSQL away: the re-evaluations are taken again every second, where they were",
        )

    async def step(self) -> Chunk | None:
        """One chunk, committed with its alerts in the outbox; None when no part is waiting here."""
        chunk: Chunk | None = None
        taken: list[ReevaluationPart] = []

        async def work(store: Store) -> list[Outgoing]:
            nonlocal chunk
            chunk = await reevaluate_chunk(store, self._seuils, self._size, taken.append)
            return chunk.outgoing if chunk else []

        try:
            await self._pipeline.run_exclusive(work, lambda: taken[-1].traceparent if taken else None)
        except Exception:
            if taken:  # else taken first again by every worker, whatever the other parts wait
                await self._postpone(taken[-1])
            raise
        if chunk is not None:
            chunk.evaluated.say()
            resource = chunk.resource_id or "*"
            log.debug(
                "reevaluation.chunk",
                resource_id=resource,
                part=chunk.part,
                uais=chunk.uais,
                alerts=len(chunk.outgoing),
            )
            if chunk.last:  # parts_left: those other transactions had not ended when this one looked
                log.info("reevaluation.part_done", resource_id=resource, part=chunk.part, parts_left=chunk.parts_left)
        return chunk

    async def _postpone(self, part: ReevaluationPart) -> None:
        """The failed chunk's part put off, in a transaction of its own (the chunk's rolled back)."""
        postponed: tuple[int, float] | None = None

        async def work(store: Store) -> list[Outgoing]:
            nonlocal postponed
            postponed = await store.postpone_reevaluation(part)
            return []

        try:
            await self._pipeline.run_exclusive(work)
        except Exception:  # the database away, say: the part is taken again as it was
            log.warning(
                "reevaluation.not_postponed", resource_id=part.resource_id or "*", part=part.part, exc_info=True
            )
            return
        if postponed is not None:
            failures, delay = postponed
            log.warning(
                "reevaluation.part_postponed",
                resource_id=part.resource_id or "*",
                part=part.part,
                failures=failures,
                retry_in_s=delay,
            )

    async def run(self) -> None:
        """Until cancelled: the thresholds checked, then every pending re-evaluation, looked for
        every `reevaluation_poll_ms` by each worker, and the thresholds in force compared with
        this replica's every SEUILS_CHECK_SECONDS. A failure (the database away) is logged and retried."""
        await self._retrying(self.reconcile_seuils)
        await asyncio.gather(self._watch_seuils(), *(self._worker() for _ in range(self._workers)))

    async def _watch_seuils(self) -> None:
        """A warning while the thresholds in force are not this replica's: those of the latest
        replica to start win, and one with other thresholds started after a rolling change (an
        old replica restarted before its turn to go) put its own back, for every replica to
        evaluate with once it is gone. Which are meant is the deployment's to say (restart a
        replica with them: its start stores them); the replicas can only tell."""
        own = (self._seuils.min_compatible_share, self._seuils.min_training_coverage)
        while True:
            await asyncio.sleep(SEUILS_CHECK_SECONDS)
            try:
                held = await self._pipeline.run(lambda store: store.seuils())
            except Exception:
                log.warning("seuils.non_lus", exc_info=True)
                continue
            if held is not None and held != own:
                log.warning(
                    "seuils.differents",
                    en_vigueur={"min_compatible_share": held[0], "min_training_coverage": held[1]},
                    cette_replique={"min_compatible_share": own[0], "min_training_coverage": own[1]},
                    hint="the latest replica to start stored its own: restart those with the thresholds meant",
                )

    async def _worker(self) -> None:
        while True:
            await self._retrying(self._drain)
            await asyncio.sleep(self._poll)

    async def reconcile_seuils(self) -> None:
        """When the thresholds differ from those the held alerts were evaluated with: every
        subscribed pair to re-evaluate, requested with the new thresholds in one transaction."""
        seuils = self._seuils
        own = (seuils.min_compatible_share, seuils.min_training_coverage)
        if await self._pipeline.run(lambda store: store.seuils()) == own:  # no writing transaction at most starts
            return
        held: tuple[float, float] | None = own

        async def work(store: Store) -> list[Outgoing]:
            nonlocal held
            # Read again once alone on every resource: a replica with the same thresholds that
            # started at the same time may have requested every pair since.
            await store.lock_resources([EVERY_RESOURCE], [])
            held = await store.seuils()
            if held != own:
                await request_every_pair(store, seuils)
            return []

        await self._pipeline.run_exclusive(work)
        if held != own:
            log.info("seuils.reevaluation", previous=held)

    async def _drain(self) -> None:
        if await self._pipeline.run(lambda store: store.reevaluations_pending()):  # no transaction when idle
            while await self.step():
                pass

    async def _retrying(self, work: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await work()
            except Exception as exc:
                self._outage.failed(exc)
                await asyncio.sleep(FAILURE_PAUSE_SECONDS)
            else:
                self._outage.succeeded()
                return


async def request_every_pair(store: Store, seuils: Seuils, keep_stored: bool = False) -> None:
    """Every subscribed pair to re-evaluate in the background, with `seuils` stored as the
    thresholds in force (those the schema holds kept instead, if any, with `keep_stored`): what a
    change of thresholds requests, and a catch-up (deploy/rattrapage.py). Alone on every
    resource: a batch subscribing a UAI meanwhile, evaluating with the former thresholds, commits
    before (this fan-out then sees the pair) or starts after; and two such requests take turns,
    the second cutting what the first left out (at once, both cut the same first parts, and the
    second failed on their keys)."""
    await store.lock_resources([EVERY_RESOURCE], [])
    await store.request_reevaluations([EVERY_RESOURCE])
    if not keep_stored or await store.seuils() is None:
        await store.save_seuils(seuils)


async def run_reevaluations(pipeline: Pipeline, settings: RessourcesSettings) -> None:
    """ressources' background work (ServiceSpec.on_start)."""
    await Reevaluations(pipeline, settings).run()


@dataclass(frozen=True)
class Said:
    """What the log says of an evaluation once its transaction committed (Applied.committed):
    one DEBUG line per alert raised or resolved, one INFO line per evaluation that changed any.
    Only that is kept (a revival holds one per part until it commits), not the events."""

    pairs: int
    raised: int
    resolved: int
    updated: int
    alerts: tuple[tuple[str, str, str, str, str], ...] = ()
    """(line, alert_id, kind, uai, resource_id) of each alert, when DEBUG lines are written."""

    @classmethod
    def of(cls, outgoing: list[Outgoing[EncodedEvent]], pairs: int, updated: int) -> "Said":
        raised = sum(o.event.type == c.ALERTE_LEVEE for o in outgoing)
        alerts = tuple(
            (
                "alert.raised" if o.event.type == c.ALERTE_LEVEE else "alert.resolved",
                o.event.data["alert_id"],
                o.event.data["kind"],
                o.event.data["uai"],
                o.event.data["resource_id"],
            )
            # Checked once: a skipped call still builds its arguments, for every alert.
            for o in (outgoing if log.is_enabled_for(logging.DEBUG) else ())
        )
        return cls(pairs, raised, len(outgoing) - raised, updated, alerts)

    def __call__(self) -> None:
        for line, alert_id, kind, uai, resource_id in self.alerts:
            log.debug(line, alert_id=alert_id, kind=kind, uai=uai, resource_id=resource_id)
        if self.raised or self.resolved or self.updated:
            log.info(
                "alerts.evaluated", pairs=self.pairs, raised=self.raised, resolved=self.resolved, updated=self.updated
            )


@dataclass(frozen=True)
class Evaluated:
    """What `reevaluate` did: the alerts to announce, and what to say of them once committed."""

    outgoing: list[Outgoing[EncodedEvent]]
    say: Said = Said(0, 0, 0, 0)


async def reevaluate(store: Store, pairs: list[Pair], seuils: Seuils, causes: dict[str, CloudEvent]) -> Evaluated:
    """The transitions of these pairs' alerts, stored and announced on the stream, then on its
    table (alertes.etat.v1); the caller holds their UAIs' locks and says them once committed
    (`Evaluated.say`).

    With the thresholds in force: those the latest replica to start stored (`reconcile_seuils`),
    else `seuils`, this replica's own. During a rolling change of the thresholds, a replica still
    on the former ones evaluates with the new ones once a new replica has stored them: it may be
    evaluating part of the re-evaluation that replica requested. Read under the UAIs' locks, so
    a chunk of that re-evaluation that evaluates one of these UAIs later reads the same ones."""
    if not pairs:
        return Evaluated([])
    seuils = seuils.in_force(await store.seuils())
    pair_uais = sorted({p.uai for p in pairs})
    etabs = await store.etablissements(pair_uais)
    ressources = await store.load_ressources({p.resource_id for p in pairs})
    profils, couvertures = await store.load_inputs(pair_uais)
    held_alerts = await store.load_alertes([(p.uai, p.resource_id) for p in pairs])
    now = datetime.now(UTC)
    rows: list[AlertRow] = []
    resolutions: list[Resolution] = []
    outgoing: list[Outgoing[EncodedEvent]] = []
    # The live stream's, in order: each event, and the other place it concerns (None: where it says).
    journalled: list[tuple[bytes, bytes | None]] = []
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
                content = to_json(t.raised)  # the row's and the event's data
                rows.append(AlertRow(content.decode(), ouverte=True, cycle=cycle))
                outgoing.append(_announce(c.ALERTE_LEVEE, t.raised, content, cycle, "levee", now, cause))
                journalled.append((outgoing[-1].event.value, None))
            elif t.resolved and t.held:
                # The event's instant (never before the raise), not this replica's clock: the
                # list, the stream and a rebuilt table say the same.
                resolutions.append(Resolution(t.resolved["alert_id"], cycle, t.resolved["resolved_at"]))
                outgoing.append(
                    _announce(c.ALERTE_RESOLUE, t.resolved, to_json(t.resolved), cycle, "resolue", now, cause)
                )
                # Moved since its raise: announced where it was raised, listed at its new place.
                moved = None if t.held.levee_portee is None else to_json({k: t.held.values[k] for k in PORTEE})
                journalled.append((outgoing[-1].event.value, moved))
            elif t.updated:
                content = to_json(t.updated)
                rows.append(AlertRow(content.decode(), ouverte=True, cycle=cycle))
                if t.held is not None and (former := moved_from(t.held, t.updated)) is not None:
                    journalled.append((_moved(t.updated, content, cycle, now), to_json(former)))
    await store.save_alertes(rows)
    await store.resolve_alertes(resolutions)
    await store.journal(journalled)
    return Evaluated(outgoing, Said.of(outgoing, len(pairs), updated=len(rows) + len(resolutions) - len(outgoing)))


async def resolve_unsubscribed(store: Store, seuils: Seuils, size: int) -> Evaluated | None:
    """The open alerts of up to `size` pairs that have no abonnement resolved, as when a
    subscription ends (store.unsubscribed: after a rebuild's or a catch-up's replay, on a schema
    no service runs on yet); None when none is left."""
    pairs = await store.unsubscribed(size)
    if not pairs:
        return None
    await store.lock(sorted({p.uai for p in pairs}))
    return await reevaluate(store, pairs, seuils, {})


def _moved(alert: Content, content: bytes, cycle: int, now: datetime) -> bytes:
    """The live stream's ALERTE_DEPLACEE event of an open alert that moved, `content` its data."""
    id_ = event_id(alert["alert_id"], cycle, f"deplacee/{now.isoformat()}", alert["raised_at"])
    return _value(ALERTE_DEPLACEE, id_, alert, content, now)


def _value(type_: str, id_: str, alert: Content, content: bytes, now: datetime) -> bytes:
    """An alert event's bytes, those of `make_event(...).to_bytes()`: the envelope's fields in
    CloudEvent's order, `data` last, spliced in as `content` (its JSON, encoded once for the row too)."""
    fields = envelope(type_, id=id_, source=SOURCE, subject=f"{alert['uai']}/{alert['resource_id']}", time=now)
    return b"".join((to_json(fields)[:-1], b',"data":', content, b"}"))


def _announce(
    type_: str, alert: Content, content: bytes, cycle: int, what: str, now: datetime, cause: CloudEvent | None
) -> Outgoing[EncodedEvent]:
    """The alert's event on the stream, and on its table (alertes.etat.v1, the stream's table keyed
    by alert_id: the alert's latest event, then a tombstone once it is resolved; CONTRACTS.md,
    "Current state"), `content` its data (_value)."""
    id_ = event_id(alert["alert_id"], cycle, what, alert["raised_at"])
    value = _value(type_, id_, alert, content, now)
    table = Twin(c.ALERTES_ETAT, alert["alert_id"].encode(), ends=type_ == c.ALERTE_RESOLUE)
    return Outgoing(c.ALERTES, alert["uai"], EncodedEvent(type_, id_, alert, value), cause, table)
