"""In-memory stores for the three use cases: what each handler's `Store` protocol asks, with
the same state rules as the SQL stores (latest `time` wins, highest `version` kept), so that a
handler runs in microseconds with no broker and no database. The real stores are tested
against PostgreSQL in tests/integration/."""

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence, Set
from datetime import datetime

import contracts as c
from contracts import CloudEvent, Etablissement
from services.common.rules.state import Verdicts, latest_wins
from services.common.storage.derived import Content, Key
from services.formation.domain import Counts
from services.ressources import views
from services.ressources.lifecycle import PORTEE, Held, alert_id
from services.ressources.rules import Coverage, Fleet, Seuils, read_by_rules
from services.ressources.store import (
    EVERY_RESOURCE,
    MAX_PARTS,
    UNSUBSCRIBED,
    AlertRow,
    Pair,
    ReevaluationPart,
    Resolution,
    cut,
    uncovered,
)


class Latest:
    """Entities by `entity_key`, the event with the latest time winning."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, ...], CloudEvent] = {}

    async def store(self, events: Sequence[CloudEvent]) -> Verdicts:
        held = {k: e.time for k, e in self.rows.items()}
        verdicts = latest_wins(held, ((e.data.entity_key, e.time, e) for e in events))
        self.rows.update(verdicts.winners)
        return verdicts


class MemoryPublished:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, Key], tuple[int, Content]] = {}
        self.groups = 0

    async def publish(self, event_type: str, contents: Mapping[Key, Content]) -> dict[Key, int]:
        versions = {}
        for key, content in contents.items():
            version, previous = self.rows.get((event_type, key), (0, None))
            if previous != content:
                versions[key] = version + 1
                self.rows[(event_type, key)] = (version + 1, content)
        return versions

    async def entities(self, event_type: str, uais: Iterable[str]) -> dict[str, set[str]]:
        wanted, out = set(uais), {}
        for t, (uai, entity) in self.rows:
            if t == event_type and uai in wanted:
                out.setdefault(uai, set()).add(entity)
        return out

    async def next_group(self) -> int:
        self.groups += 1
        return self.groups


class EquipementMemory:
    def __init__(self) -> None:
        self.lots, self.links, self.published = Latest(), Latest(), MemoryPublished()

    async def store_lots(self, events: Sequence[CloudEvent]) -> Verdicts:
        return await self.lots.store(events)

    async def lock(self, uais: Iterable[str]) -> None:
        pass  # one transaction at a time here

    async def store_connectivites(self, events: Sequence[CloudEvent]) -> Verdicts:
        return await self.links.store(events)


class FormationMemory:
    def __init__(self) -> None:
        self.affectations, self.published = Latest(), MemoryPublished()
        self.levels: dict[tuple[str, str], int] = {}
        self.tools: set[tuple[str, str]] = set()
        self.recounted: list[list[str]] = []  # the UAIs of each coverage_counts call
        self.steps: list[tuple[str, list[str]]] = []  # ("lock:<namespace>" | "count", keys), in order

    async def store_affectations(self, events: Sequence[CloudEvent]) -> Verdicts:
        rows = self.affectations.rows
        held = {k: (rows[k].data.end is None,) for k in {e.data.entity_key for e in events} if k in rows}
        return dataclasses.replace(await self.affectations.store(events), held=held)

    async def add_trainings(self, levels: Mapping[tuple[str, str], int], tools: Set[tuple[str, str]]) -> set[str]:
        grew = {t for (t, code), level in levels.items() if level > self.levels.get((t, code), 0)}
        grew |= {t for t, kind in tools - self.tools}
        for key, level in levels.items():
            self.levels[key] = max(self.levels.get(key, 0), level)
        self.tools |= tools
        return grew

    def _counted(self) -> list[tuple[str, str]]:
        return [(e.data.teacher_id, e.data.uai) for e in self.affectations.rows.values() if e.data.end is None]

    async def active_uais(self, teachers: Sequence[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for teacher, uai in self._counted():
            if teacher in teachers:
                out.setdefault(uai, []).append(teacher)
        return out

    async def lock(self, namespace: str, keys: Iterable[str]) -> None:
        if keys := sorted(keys):  # none: no statement (locks.lock_keys)
            self.steps.append((f"lock:{namespace}", keys))  # one transaction at a time here

    async def coverage_counts(self, uais: Sequence[str]) -> Counts:
        self.recounted.append(list(uais))
        self.steps.append(("count", list(uais)))
        counts = Counts({u: 0 for u in uais}, {u: {} for u in uais}, {u: {} for u in uais})
        for teacher, uai in self._counted():
            if uai not in counts.enseignants:
                continue
            counts.enseignants[uai] += 1
            for (t, code), level in self.levels.items():
                if t == teacher:
                    per_level = counts.levels[uai].setdefault(code, {})
                    per_level[level] = per_level.get(level, 0) + 1
            for t, kind in self.tools:
                if t == teacher:
                    counts.tools[uai][kind] = counts.tools[uai].get(kind, 0) + 1
        return counts


class RessourcesMemory:
    def __init__(self, etablissements: Iterable[Etablissement] = ()) -> None:
        self.etabs = {e.uai: e for e in etablissements}
        self.catalogue, self.abonnements = Latest(), Latest()
        self.derived: dict[tuple[str, str, str], CloudEvent] = {}
        self.assembled: dict[tuple[str, tuple[str, ...]], list[views.Record]] = {}  # (uai, family)
        self.alerts: dict[tuple[str, str], dict[str, Held]] = {}
        self.journalled: list[tuple[dict, dict | None]] = []
        """The live stream's events, decoded, each with the other place it concerns (None: none)."""
        self.held_seuils: tuple[float, float] | None = None
        self.reevaluations: dict[tuple[str, int], ReevaluationPart] = {}  # (resource_id or EVERY_RESOURCE, part)
        self.postponed: dict[tuple[str, int], int] = {}  # failures in a row, put off for good (no clock here)
        self.part_size = 1_000_000  # UAIs per part of a re-evaluation (the real store's PART_SIZE)
        self.resolved_at: dict[str, datetime] = {}  # alert_id -> the row's resolved_at

    async def published_rules(self, ids: Sequence[str]) -> dict[str, dict]:
        return {
            rid: read_by_rules(e.data.model_dump(mode="json"))
            for (rid,), e in self.catalogue.rows.items()
            if rid in ids and e.type == c.RESSOURCE_PUBLIEE
        }

    async def store_catalogue(self, events: Sequence[CloudEvent]) -> Verdicts:
        return await self.catalogue.store(events)

    async def store_abonnements(self, events: Sequence[CloudEvent]) -> Verdicts:
        return await self.abonnements.store(events)

    async def store_derived(self, events: Sequence[CloudEvent]) -> set[str]:
        changed = set()
        for e in events:
            key = (e.type, e.data.uai, e.data.entity)
            if key not in self.derived or self.derived[key].data.version < e.data.version:
                self.derived[key] = e
                changed.add(e.data.uai)
                if e.data.group is None:  # as the SQL store: its family's records count as ungrouped
                    for k, held in self.derived.items():
                        if k[0] in views.FAMILY[e.type] and k[1] == e.data.uai:
                            ungrouped = held.data.model_copy(update={"group": None, "group_size": None})
                            self.derived[k] = held.model_copy(update={"data": ungrouped})
        return changed

    async def lock(self, uais: Sequence[str]) -> None:
        pass  # one transaction at a time here

    async def lock_resources(self, changed: Sequence[str], subscribed: Sequence[str]) -> None:
        pass  # one transaction at a time here

    async def assemble(self, uais: Sequence[str]) -> None:
        """As views.ENTREES_SQL: a family's records kept only once their latest group is whole."""
        for uai in uais:
            for family in views.FAMILIES:
                held = [e for (t, u, _), e in sorted(self.derived.items()) if t in family and u == uai]
                if views.whole((e.data.group, e.data.group_size) for e in held):
                    self.assembled[(uai, family)] = [(e.type, uai, e.data.model_dump(mode="json")) for e in held]

    async def pairs_of(self, uais: Sequence[str], resource_id: str | None = None) -> list[Pair]:
        return [
            Pair(e.data.uai, e.data.resource_id, e.data.end)
            for e in self.abonnements.rows.values()
            if e.data.uai in uais and resource_id in (None, e.data.resource_id)
        ]

    async def unsubscribed(self, limit: int) -> list[Pair]:
        subscribed = {(e.data.uai, e.data.resource_id) for e in self.abonnements.rows.values()}
        held = sorted(
            p
            for p, kinds in self.alerts.items()
            if p not in subscribed and any(h.ouverte for k, h in kinds.items() if k in c.ALERT_KINDS)
        )
        return [Pair(uai, rid, UNSUBSCRIBED) for uai, rid in held[:limit]]

    async def etablissements(self, uais: list[str]) -> dict[str, Etablissement]:
        return {u: self.etabs[u] for u in uais if u in self.etabs}

    async def load_ressources(self, ids: set[str]) -> dict[str, c.RessourcePubliee]:
        return {
            rid: e.data for (rid,), e in self.catalogue.rows.items() if rid in ids and e.type == c.RESSOURCE_PUBLIEE
        }

    def _records(self, family: tuple[str, ...], uais: list[str]) -> list[views.Record]:
        return [r for uai in uais for r in self.assembled.get((uai, family), [])]

    async def load_inputs(self, uais: list[str]) -> tuple[dict[str, Fleet], dict[str, Coverage]]:
        """As the real store reads them: the assembled profile and coverage as JSON values."""
        profils = views.profils(self._records(views.FAMILIES[0], uais))
        couvertures = views.couvertures(self._records(views.FAMILIES[1], uais))
        return (
            {u: Fleet.from_values(p.model_dump(mode="json")) for u, p in profils.items()},
            {u: Coverage.from_values(c.model_dump(mode="json")) for u, c in couvertures.items()},
        )

    async def load_alertes(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Held]]:
        return {p: dict(self.alerts[p]) for p in pairs if p in self.alerts}

    async def save_alertes(self, rows: Sequence[AlertRow]) -> None:
        """As the real store: where an open alert was raised kept once an update moves it."""
        for r in rows:
            alerte = json.loads(r.alerte)
            held = self.alerts.setdefault((alerte["uai"], alerte["resource_id"]), {})
            before = held.get(alerte["kind"])
            levee = None
            if before is not None and before.cycle == r.cycle:
                was = {k: before.values[k] for k in PORTEE}
                levee = before.levee_portee or (None if was == {k: alerte[k] for k in PORTEE} else json.dumps(was))
            held[alerte["kind"]] = Held(r.ouverte, r.cycle, r.alerte, levee)

    async def resolve_alertes(self, rows: Sequence[Resolution]) -> None:
        ids = {
            alert_id(uai, rid, kind): (uai, rid, kind) for (uai, rid), kinds in self.alerts.items() for kind in kinds
        }
        for r in rows:
            uai, rid, kind = ids[r.alert_id]
            held = self.alerts[(uai, rid)][kind]
            self.alerts[(uai, rid)][kind] = Held(False, r.cycle, held.stored, held.levee_portee)
            self.resolved_at[r.alert_id] = r.resolved_at

    async def journal(self, entries: Sequence[tuple[bytes, bytes | None]]) -> None:
        self.journalled += [(json.loads(value), place and json.loads(place)) for value, place in entries]

    async def seuils(self) -> tuple[float, float] | None:
        return self.held_seuils

    async def save_seuils(self, seuils: Seuils) -> None:
        self.held_seuils = (seuils.min_compatible_share, seuils.min_training_coverage)

    async def request_reevaluations(
        self, resource_ids: Sequence[str], traceparents: Mapping[str, str | None] | None = None
    ) -> None:
        traced = traceparents or {}
        for rid in sorted(set(resource_ids)):
            parts = {k: p for k, p in self.reevaluations.items() if k[0] == rid}  # under way: kept
            for k, p in parts.items():  # they carry the latest request's trace
                self.reevaluations[k] = dataclasses.replace(p, traceparent=traced.get(rid))
            ranges = uncovered([(p.after_uai, p.up_to) for p in parts.values()]) if parts else [("", None)]
            inside = [  # (range number, UAI), as _PART_CUTS numbers them
                (i, u)
                for u in sorted(self._subscribed(rid))
                for i, (after, up_to) in enumerate(ranges, 1)
                if after < u and (up_to is None or u <= up_to)
            ]
            every = max(self.part_size, math.ceil(len(inside) / MAX_PARTS))
            last = {i: u for i, u in inside}
            rows = [(i, u, n % every == 0 and n < len(inside), last[i] == u) for n, (i, u) in enumerate(inside, 1)]
            first = max((n for _, n in parts), default=-1) + 1
            for n, (after, up_to) in enumerate(cut(ranges, rows), first):
                self.reevaluations[(rid, n)] = ReevaluationPart(rid, n, after, up_to, traced.get(rid))

    async def next_reevaluation(self) -> ReevaluationPart | None:
        ready = [k for k in self.reevaluations if k not in self.postponed]  # in the order they were made
        return self.reevaluations[ready[0]] if ready else None

    async def postpone_reevaluation(self, part: ReevaluationPart) -> tuple[int, float] | None:
        key = (part.resource_id, part.part)
        if key not in self.reevaluations:
            return None
        self.postponed[key] = self.postponed.get(key, 0) + 1
        return self.postponed[key], 1.0

    def _subscribed(self, resource_id: str) -> set[str]:
        rows = self.abonnements.rows.values()
        return {e.data.uai for e in rows if resource_id in (EVERY_RESOURCE, e.data.resource_id)}

    async def subscribers(self, part: ReevaluationPart, limit: int) -> list[str]:
        inside = (u for u in self._subscribed(part.resource_id) if part.after_uai < u and (part.up_to or u) >= u)
        return sorted(inside)[:limit]

    async def advance_reevaluation(self, part: ReevaluationPart, after_uai: str | None) -> int | None:
        key = (part.resource_id, part.part)
        self.postponed.pop(key, None)
        if after_uai is not None:
            self.reevaluations[key] = dataclasses.replace(part, after_uai=after_uai)
            return None
        del self.reevaluations[key]
        return sum(rid == part.resource_id for rid, _ in self.reevaluations)

    async def reevaluations_pending(self) -> int:
        return len({rid for rid, _ in self.reevaluations})
