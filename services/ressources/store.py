"""ressources' SQL, in one place: the store its use case receives, one per transaction (the
read API builds one over its own connection)."""

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import NamedTuple, TypeVar

import structlog
from pydantic import ValidationError

import contracts as c
from contracts import ALERT_KINDS, CloudEvent, Etablissement, RessourcePubliee
from contracts.internal import GROUP_FIELDS, CouvertureFormation, ProfilEquipement
from services.common.rules.state import Verdicts
from services.common.runtime.metrics import Gauge
from services.common.storage import referentiel
from services.common.storage.db import Conn
from services.common.storage.entities import store_latest
from services.common.storage.locks import lock_keys
from services.ressources import stream, views
from services.ressources.lifecycle import PORTEE, Held
from services.ressources.rules import Coverage, Fleet, Seuils, read_by_rules

P = TypeVar("P")  # a profile as a reader wants it (a model, or what the rules read)
C = TypeVar("C")  # a coverage, likewise
log = structlog.get_logger(__name__)

EVERY_RESOURCE = ""
"""The re-evaluation of every subscribed pair (the thresholds changed); no resource_id is empty."""
Range = tuple[str, str | None]
"""UAIs after the first, up to the second (None: no bound)."""
RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 1.0, 300.0
"""How long a re-evaluation's part whose chunk failed is put off, after its first failure in a
row; the delay doubles with each one up to RETRY_MAX_SECONDS (postpone_reevaluation)."""
PART_SIZE, MAX_PARTS = 500, 16
"""A re-evaluation's UAIs go in parts of at least PART_SIZE, at most MAX_PARTS of them: as many
workers (over all replicas) can evaluate one fan-out at once, and a small one stays whole. The
ranges a fan-out under way leaves out are cut so too, each starting a part of its own: then
there may be a smaller part for each, and more than MAX_PARTS in all."""

_SUBSCRIBED_TO = "SELECT uai FROM abonnements WHERE resource_id = $1"
_SUBSCRIBED_TO_ANY = "SELECT DISTINCT uai FROM abonnements WHERE $1 = ''"
"""A resource's subscribed UAIs; every subscribed UAI ($1 is EVERY_RESOURCE). Active or not: an
ended subscription's open alerts resolve."""
_PART_CUTS = f"""
SELECT * FROM (
    SELECT i, uai, n % greatest($4::bigint, ceil(total / $5::numeric)::bigint) = 0 AND n < total AS cut,
           from_end = 1 AS last
    FROM (
        SELECT r.i, s.uai, row_number() OVER (ORDER BY s.uai) AS n, count(*) OVER () AS total,
               row_number() OVER (PARTITION BY r.i ORDER BY s.uai DESC) AS from_end
        FROM ({_SUBSCRIBED_TO} UNION ALL {_SUBSCRIBED_TO_ANY}) AS s  -- one of the two is empty
        JOIN unnest($2::text[], $3::text[]) WITH ORDINALITY AS r(after_uai, up_to, i)
          ON s.uai > r.after_uai AND (r.up_to IS NULL OR s.uai <= r.up_to)
    ) AS numbered
) AS judged
WHERE cut OR last"""
"""Where to cut the ranges of UAIs ($2, $3: (after, up to], up to NULL: no bound; disjoint) for
the subscribers of resource $1: per range (its number from 1), its subscribers after which a
part ends, counting over all the ranges, every $4 (PART_SIZE) or more so that these cuts make
at most $5 (MAX_PARTS) parts (each range also starts one); and its last subscriber (a range
without one has no row)."""


def cut(ranges: Sequence[Range], rows: Iterable[tuple[int, str, bool, bool]]) -> list[Range]:
    """The parts the ranges make, cut after the subscribers _PART_CUTS gives (its rows: range
    number, UAI, cut after it, the range's last): a range without a subscriber makes none (a
    UAI subscribed later is evaluated by the transaction that subscribes it), a cut after a
    range's last subscriber none either."""
    cuts: dict[int, list[str]] = {}
    last: dict[int, str] = {}
    for i, uai, cut_after, is_last in rows:
        if is_last:
            last[i] = uai
        if cut_after:
            cuts.setdefault(i, []).append(uai)
    parts: list[Range] = []
    for i, (after, up_to) in enumerate(ranges, 1):
        if i in last:
            bounds = sorted(u for u in cuts.get(i, ()) if u != last[i])
            parts += zip([after, *bounds], [*bounds, up_to], strict=True)
    return parts


def uncovered(ranges: Sequence[Range]) -> list[Range]:
    """The ranges of UAIs, (after, up to] (None: no bound), that these leave out: what a
    fan-out under way has not left to evaluate, when these are what its parts have left."""
    gaps: list[Range] = []
    lower = ""
    for after, up_to in sorted(ranges, key=lambda r: (r[0], r[1] is None, r[1] or "")):
        if after > lower:
            gaps.append((lower, after))
        if up_to is None:
            return gaps
        lower = max(lower, up_to)
    return [*gaps, (lower, None)]


_UNREADABLE_SAID: set[str] = set()


def stored_ressource(resource_id: str, text: str) -> RessourcePubliee | None:
    """A published resource as stored, read by today's contract; None when a rule made stricter
    since refuses it (a tool kind "" since 3 December, a name over 64 characters since 30
    November): taken for not published, where a rebuild's replay, which refuses its publication,
    leaves it; its pairs' open alerts resolve, and the partner's next publication of it counts as
    usual. Validating stopped every batch and re-evaluation that met one of its subscribers, for
    good. Said once per resource and process (WARNING `ressource.illisible`: its id and the rules
    it breaks, not its values)."""
    try:
        return RessourcePubliee.model_validate_json(text)
    except ValidationError as e:
        if resource_id not in _UNREADABLE_SAID:
            _UNREADABLE_SAID.add(resource_id)
            log.warning(
                "ressource.illisible",
                resource_id=resource_id,
                erreurs=sorted({f"{'.'.join(map(str, err['loc']))}: {err['type']}" for err in e.errors()}),
                hint="accepted before a stricter rule: taken for not published until its partner publishes it again",
            )
        return None


UNSUBSCRIBED = date.min
"""The `end` of a pair that has no abonnement (`RessourcesStore.unsubscribed`): ended, so not
evaluated, its open alerts resolved."""


class Pair(NamedTuple):
    """A subscription: (établissement, resource), and the end of the abonnement if any (a
    NamedTuple: a fan-out makes tens of thousands)."""

    uai: str
    resource_id: str
    end: date | None


@dataclass(frozen=True)
class ReevaluationPart:
    """A part of a pending re-evaluation: its resource (EVERY_RESOURCE: every one), its number,
    its cursor (the UAIs up to it are done) and the last UAI of its range (None: no bound)."""

    resource_id: str
    part: int
    after_uai: str
    up_to: str | None
    traceparent: str | None = None  # of the record that requested it, which its alerts carry
    tour: int | None = None
    """Its row's turn (unique: a part made again after its end has another), as read."""


class AlertRow(NamedTuple):
    """An alert as stored: its last content (the JSON of an AlerteLevee), open or not, its raise
    count, when it resolved."""

    alerte: str
    ouverte: bool
    cycle: int
    resolved_at: datetime | None = None


class Resolution(NamedTuple):
    """An open alert resolved: its content, raised_at and where it was raised stay as stored."""

    alert_id: str
    cycle: int
    resolved_at: datetime


def _portee(alerte: str) -> str:
    """Where an alert is, of its stored content (SQL): its académie, département and responsable."""
    return "jsonb_build_object(" + ", ".join(f"'{k}', {alerte}->'{k}'" for k in PORTEE) + ")"


class RessourcesStore:
    def __init__(self, conn: Conn):
        self._conn = conn

    async def store_catalogue(self, events: Sequence[CloudEvent]) -> Verdicts:
        """ressource-publiee and ressource-retiree are two states of one entity, `resource_id`."""
        return await store_latest(
            self._conn,
            "ressources",
            ("resource_id",),
            {"publiee": "boolean", "ressource": "jsonb"},
            events,
            row_of=lambda e: (True, e.data.model_dump(mode="json")) if e.type == c.RESSOURCE_PUBLIEE else (False, None),
        )

    async def published_rules(self, ids: Sequence[str]) -> dict[str, dict]:
        """Of these resources, those published now: what the rules read of each (rules.read_by_rules).
        Their rows stay locked (in key order, as store_catalogue then locks them) until the
        transaction ends: what a republication is compared with is what it replaces."""
        if not ids:
            return {}
        rows = await self._conn.fetch(
            "SELECT resource_id, publiee, ressource FROM ressources WHERE resource_id = ANY($1::text[]) "
            "ORDER BY resource_id FOR UPDATE",
            sorted(ids),
        )
        return {r["resource_id"]: read_by_rules(json.loads(r["ressource"])) for r in rows if r["publiee"]}

    async def store_abonnements(self, events: Sequence[CloudEvent]) -> Verdicts:
        return await store_latest(
            self._conn,
            "abonnements",
            ("resource_id", "uai"),
            {"start": "date", "end": "date"},
            events,
            row_of=lambda e: (e.data.start, e.data.end),
        )

    async def store_derived(self, events: Sequence[CloudEvent]) -> set[str]:
        """Keep the highest `version` per record key of what equipement and formation publish;
        returns the UAIs whose records changed here.

        A record without a group written after grouped ones comes from a producer from before
        groups (a rolling upgrade): its UAI's records of that family then count as from before
        groups, else a group it rewrote a record of would never be whole again. Only those
        written before it: the batch is stored in parts, each ending with its records without a
        group (one part when all have one, or none)."""
        changed: set[str] = set()
        part: list[CloudEvent] = []
        for i, e in enumerate(events):
            part.append(e)
            if e.data.group is None and (i + 1 == len(events) or events[i + 1].data.group is not None):
                changed |= await self._store_part(part)
                part = []
        return changed | await self._store_part(part)

    async def _store_part(self, events: Sequence[CloudEvent]) -> set[str]:
        if not events:
            return set()
        latest: dict[tuple[str, str, str], CloudEvent] = {}
        for e in events:
            key = (e.type, e.data.uai, e.data.entity)
            if key not in latest or latest[key].data.version < e.data.version:
                latest[key] = e
        rows = await self._conn.fetch(
            """
            INSERT INTO recus (type, uai, entity, version, content, group_no, group_size)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::jsonb[], $6::bigint[], $7::int[])
            ON CONFLICT (type, uai, entity) DO UPDATE SET version = EXCLUDED.version, content = EXCLUDED.content,
                group_no = EXCLUDED.group_no, group_size = EXCLUDED.group_size
            WHERE recus.version < EXCLUDED.version
            RETURNING uai, type, group_no
            """,
            [t for t, _, _ in latest],
            [u for _, u, _ in latest],
            [x for _, _, x in latest],
            [e.data.version for e in latest.values()],
            [e.data.model_dump_json(exclude=GROUP_FIELDS) for e in latest.values()],
            [e.data.group for e in latest.values()],
            [e.data.group_size for e in latest.values()],
        )
        ungrouped = {(r["uai"], t) for r in rows if r["group_no"] is None for t in views.FAMILY[r["type"]]}
        if ungrouped:
            await self._conn.execute(
                "UPDATE recus SET group_no = NULL, group_size = NULL "
                "WHERE group_no IS NOT NULL AND (uai, type) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
                [u for u, _ in ungrouped],
                [t for _, t in ungrouped],
            )
        return {r["uai"] for r in rows}

    async def assemble(self, uais: Sequence[str]) -> None:
        """Each UAI's `entrees` row assembled again from its `recus`, under its lock (`lock`):
        read after every transaction that held it before, so no record written by another
        transaction is left out of it. Its profile, or its coverage, stays as it was while
        part of the latest group of their records has not arrived (views.ENTREES_SQL)."""
        if uais:
            await self._conn.execute(views.ENTREES_SQL, sorted(uais))

    async def lock(self, uais: Sequence[str]) -> None:
        """Hold these UAIs until the transaction ends: their pairs are evaluated by one transaction at a time."""
        await lock_keys(self._conn, "uai", uais)

    async def lock_resources(self, changed: Sequence[str], subscribed: Sequence[str]) -> None:
        """Until the transaction ends, hold the resources whose fan-out it requests alone, and
        those it writes subscriptions to shared with other such writers. Without it, a fan-out
        cut while a subscription's transaction had read the resource's former state would miss
        that subscription, not committed yet, and the pair would keep the former verdict. Taken
        after the rows the batch writes and before its UAIs, in the order of their keys: no two
        transactions wait for each other in a cycle. Advisory locks: a resource published for
        the first time has no row to lock yet. A re-evaluation of every resource (new
        thresholds) is EVERY_RESOURCE's: subscription writers hold it shared too."""
        modes = dict.fromkeys([EVERY_RESOURCE, *subscribed] if subscribed else [], False)
        modes |= dict.fromkeys(changed, True)  # alone wins
        if modes:
            await self._conn.execute(
                "SELECT CASE WHEN alone THEN pg_advisory_xact_lock(k) ELSE pg_advisory_xact_lock_shared(k) END "
                "FROM (SELECT hashtextextended('ressource:' || current_schema() || ':' || r, 0) AS k, alone "
                "FROM unnest($1::text[], $2::boolean[]) AS u(r, alone) ORDER BY k) AS held",
                list(modes),
                list(modes.values()),
            )

    async def pairs_of(self, uais: Sequence[str], resource_id: str | None = None) -> list[Pair]:
        """Every subscribed pair of these UAIs (of this resource only, when given), active or not."""
        if not uais:
            return []
        rows = await self._conn.fetch(
            'SELECT uai, resource_id, "end" FROM abonnements '
            "WHERE uai = ANY($1::text[]) AND ($2::text IS NULL OR resource_id = $2)",
            list(uais),
            resource_id,
        )
        return [Pair(r["uai"], r["resource_id"], r["end"]) for r in rows]

    async def unsubscribed(self, limit: int) -> list[Pair]:
        """Up to `limit` pairs that hold an open alert and have no abonnement, as ended
        (UNSUBSCRIBED). None where the service built the schema (it never deletes an abonnement
        row); after a rebuild or a restore's catch-up, those whose abonnement the replay refused
        (a rule or a setting stricter since it was accepted), their alerts as the stream holds them.
        Only alerts of the kinds this version knows, which resolving the pair closes."""
        rows = await self._conn.fetch(
            "SELECT DISTINCT uai, resource_id FROM alertes AS a WHERE ouverte AND kind = ANY($2::text[]) "
            "AND NOT EXISTS (SELECT FROM abonnements AS s WHERE s.uai = a.uai AND s.resource_id = a.resource_id) "
            "ORDER BY uai, resource_id LIMIT $1",
            limit,
            list(ALERT_KINDS),
        )
        return [Pair(r["uai"], r["resource_id"], UNSUBSCRIBED) for r in rows]

    async def load_ressources(self, ids: Iterable[str]) -> dict[str, RessourcePubliee]:
        rows = await self._conn.fetch(
            "SELECT resource_id, ressource FROM ressources WHERE resource_id = ANY($1::text[]) AND publiee", list(ids)
        )
        read = {r["resource_id"]: stored_ressource(r["resource_id"], r["ressource"]) for r in rows}
        return {rid: ressource for rid, ressource in read.items() if ressource is not None}

    async def load_entrees(self, uais: list[str]) -> tuple[dict[str, ProfilEquipement], dict[str, CouvertureFormation]]:
        """The profiles and the coverages of these UAIs (of those that have one), in one reading."""
        return await self._entrees(uais, views.profil, views.couverture)

    async def load_inputs(self, uais: list[str]) -> tuple[dict[str, Fleet], dict[str, Coverage]]:
        """The profiles and the coverages of these UAIs as the rules read them (load_entrees
        without the models: what a re-evaluation reads, thousands at a time)."""
        return await self._entrees(uais, lambda _, text: views.fleet(text), lambda _, text: views.coverage(text))

    async def _entrees(
        self, uais: list[str], profil: Callable[[str, str], P], couverture: Callable[[str, str], C]
    ) -> tuple[dict[str, P], dict[str, C]]:
        rows = await self._conn.fetch("SELECT uai, profil, couverture FROM entrees WHERE uai = ANY($1::text[])", uais)
        return (
            {r["uai"]: profil(r["uai"], r["profil"]) for r in rows if r["profil"] is not None},
            {r["uai"]: couverture(r["uai"], r["couverture"]) for r in rows if r["couverture"] is not None},
        )

    async def load_alertes(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Held]]:
        """The alerts of exactly these (uai, resource_id) pairs, per pair, per kind; their content as
        stored, not validated (this service wrote it; lifecycle.Held)."""
        rows = await self._conn.fetch(
            "SELECT uai, resource_id, kind, ouverte, cycle, alerte, levee_portee FROM alertes "
            "WHERE (uai, resource_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
            [u for u, _ in pairs],
            [r for _, r in pairs],
        )
        out: dict[tuple[str, str], dict[str, Held]] = {}
        for r in rows:
            held = Held(r["ouverte"], r["cycle"], r["alerte"], r["levee_portee"])
            out.setdefault((r["uai"], r["resource_id"]), {})[r["kind"]] = held
        return out

    async def save_alertes(self, rows: Sequence[AlertRow]) -> None:
        """One statement for the rows (unnest): a chunk's hundreds of alerts in one round trip. The
        columns the content holds (its key, raised_at) are read from it: sent once. Where an open
        alert was raised is kept when an update moves it (`levee_portee`, until its next raise)."""
        if not rows:
            return
        await self._conn.execute(
            f"""
            INSERT INTO alertes AS t (alert_id, uai, resource_id, kind, ouverte, cycle, raised_at, resolved_at, alerte)
            SELECT a->>'alert_id', a->>'uai', a->>'resource_id', a->>'kind', ouverte, cycle,
                   (a->>'raised_at')::timestamptz, resolved_at, a
            FROM unnest($1::jsonb[], $2::boolean[], $3::int[], $4::timestamptz[]) AS r(a, ouverte, cycle, resolved_at)
            ON CONFLICT (alert_id) DO UPDATE SET ouverte = EXCLUDED.ouverte, cycle = EXCLUDED.cycle,
                raised_at = EXCLUDED.raised_at, resolved_at = EXCLUDED.resolved_at, alerte = EXCLUDED.alerte,
                levee_portee = CASE
                    WHEN EXCLUDED.cycle <> t.cycle THEN NULL
                    WHEN t.levee_portee IS NOT NULL OR {_portee("t.alerte")} = {_portee("EXCLUDED.alerte")}
                        THEN t.levee_portee
                    ELSE {_portee("t.alerte")} END
            """,
            *zip(*rows, strict=True),
        )

    async def resolve_alertes(self, rows: Sequence[Resolution]) -> None:
        """One statement for the rows, their content not sent again: a republication that relaxes
        a resource's requirements, or a closure, resolves thousands at once, whose stored content
        the upsert made PostgreSQL parse again (a plain update took 11–45% less time in a
        micro-benchmark, 30,000 alerts, 4 rounds; the national bench's stricter step raises and
        updates, and resolves none)."""
        if not rows:
            return
        await self._conn.execute(
            "UPDATE alertes AS t SET ouverte = false, cycle = r.cycle, resolved_at = r.resolved_at "
            "FROM unnest($1::text[], $2::int[], $3::timestamptz[]) AS r(alert_id, cycle, resolved_at) "
            "WHERE t.alert_id = r.alert_id",
            *zip(*rows, strict=True),
        )

    async def etablissements(self, uais: Iterable[str]) -> dict[str, Etablissement]:
        return await referentiel.load(self._conn, uais)

    async def journal(self, entries: Sequence[tuple[bytes, bytes | None]]) -> None:
        """Events for the live stream, in this transaction (stream.notify): each one's value, and
        the other place it concerns (PORTEE fields as JSON; None: where it says)."""
        await stream.notify(self._conn, [value for value, _ in entries], [place for _, place in entries])

    async def seuils(self) -> tuple[float, float] | None:
        """The thresholds the held alerts were evaluated with (None before the first)."""
        held = await self._conn.fetchrow("SELECT min_compatible_share, min_training_coverage FROM seuils")
        return None if held is None else (held["min_compatible_share"], held["min_training_coverage"])

    async def save_seuils(self, seuils: Seuils) -> None:
        await self._conn.execute(
            "INSERT INTO seuils (min_compatible_share, min_training_coverage) VALUES ($1, $2) ON CONFLICT (id) "
            "DO UPDATE SET min_compatible_share = $1, min_training_coverage = $2",
            seuils.min_compatible_share,
            seuils.min_training_coverage,
        )

    async def request_reevaluations(
        self, resource_ids: Sequence[str], traceparents: Mapping[str, str | None] | None = None
    ) -> None:
        """Every pair of these resources (EVERY_RESOURCE: every pair) to re-evaluate in the
        background. Its subscribed UAIs are cut into parts of PART_SIZE or more (at most
        MAX_PARTS), each a range with its cursor, which workers take one at a time
        (`next_reevaluation`). A resource whose parts are under way keeps them (what is left
        of each, ahead of its cursor, is evaluated as things are when it is reached), and what
        they leave out (the UAIs they passed, the ranges of its parts done) is cut into parts
        again, as a first request's UAIs are (`cut`): ranges without a subscriber make none,
        the others as many as their subscribers make (made one part, a pass over them ran on one
        worker). Starting over from the first UAI instead, the last UAIs were never reached while
        versions came faster than a pass. Its parts stay locked to the end of the transaction:
        no chunk evaluates them with the former version meanwhile. Rows locked in order: two
        transactions requesting the same resources never wait for each other in a cycle.
        `traceparents`: each resource's requesting record's trace context, which its parts,
        those under way too, carry from now on."""
        wanted = sorted(set(resource_ids))
        traced = traceparents or {}
        if not wanted:
            return
        held = await self._conn.fetch(
            "SELECT resource_id, part, after_uai, up_to FROM reevaluations WHERE resource_id = ANY($1::text[]) "
            "ORDER BY resource_id, part FOR UPDATE",
            wanted,
        )
        rows: list[tuple[str, int, str, str | None, str | None]] = []
        for rid in wanted:
            parts = [r for r in held if r["resource_id"] == rid]
            ranges = uncovered([(r["after_uai"], r["up_to"]) for r in parts]) if parts else [("", None)]
            cuts = await self._conn.fetch(
                _PART_CUTS, rid, [a for a, _ in ranges], [u for _, u in ranges], PART_SIZE, MAX_PARTS
            )
            first = max((r["part"] for r in parts), default=-1) + 1
            rows += [
                (rid, first + n, after, up_to, traced.get(rid))
                for n, (after, up_to) in enumerate(cut(ranges, map(tuple, cuts)))
            ]
        if held:
            await self._conn.execute(
                "UPDATE reevaluations r SET traceparent = t.traceparent FROM unnest($1::text[], $2::text[]) "
                "AS t(resource_id, traceparent) WHERE r.resource_id = t.resource_id",
                wanted,
                [traced.get(rid) for rid in wanted],
            )
        if not rows:
            return
        await self._conn.execute(
            "INSERT INTO reevaluations (resource_id, part, after_uai, up_to, traceparent) "
            "SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::text[])",
            *map(list, zip(*rows, strict=True)),
        )

    async def next_reevaluation(self) -> ReevaluationPart | None:
        """The pending part of a re-evaluation made first that no other transaction holds, held
        until this one ends. In the order parts were made (`tour`): taken by resource id, a
        resource republished faster than its pass (each version cutting again what its parts
        had passed) held every worker, and the fan-out of another never ran."""
        row = await self._conn.fetchrow(
            "SELECT resource_id, part, after_uai, up_to, traceparent, tour FROM reevaluations "
            "WHERE retry_at IS NULL OR retry_at <= clock_timestamp() ORDER BY tour "
            "LIMIT 1 FOR UPDATE SKIP LOCKED"
        )
        return None if row is None else ReevaluationPart(*row)

    async def subscribers(self, part: ReevaluationPart, limit: int) -> list[str]:
        """The next `limit` subscribed UAIs of the part after its cursor, in order: of its resource, or of any."""
        rows = await self._conn.fetch(
            (_SUBSCRIBED_TO_ANY if part.resource_id == EVERY_RESOURCE else _SUBSCRIBED_TO)
            + " AND uai > $2 AND ($3::text IS NULL OR uai <= $3) ORDER BY uai LIMIT $4",
            part.resource_id,
            part.after_uai,
            part.up_to,
            limit,
        )
        return [r["uai"] for r in rows]

    async def advance_reevaluation(self, part: ReevaluationPart, after_uai: str | None) -> int | None:
        """The part's pairs up to `after_uai` are done; None: all of them, the part is over, and
        then how many other parts of its resource are left (in the same statement)."""
        if after_uai is None:
            return await self._conn.fetchval(
                "WITH gone AS (DELETE FROM reevaluations WHERE resource_id = $1 AND part = $2) "
                "SELECT count(*) FROM reevaluations WHERE resource_id = $1 AND part <> $2",
                part.resource_id,
                part.part,
            )
        await self._conn.execute(
            "UPDATE reevaluations SET after_uai = $3, failures = 0, retry_at = NULL "
            "WHERE resource_id = $1 AND part = $2",
            part.resource_id,
            part.part,
            after_uai,
        )
        return None

    async def postpone_reevaluation(self, part: ReevaluationPart) -> tuple[int, float] | None:
        """A chunk of `part` failed: the part is put off (RETRY_FIRST_SECONDS, doubling with each
        failure in a row up to RETRY_MAX_SECONDS), the other parts taken meanwhile. Its failures
        in a row and the seconds until it is taken again; None when it is gone (done meanwhile)
        or put off already (another worker's chunk failed on it too), or no longer as the chunk
        read it: its chunk done by another worker meanwhile (its cursor moved), or the part done
        and made again (another `tour`: its number is reused), neither of which failed."""
        row = await self._conn.fetchrow(
            # Not past the doubling that reaches the bound (power(2, 1024) overflows a float8),
            # and once only for the workers that failed on it at once: the first puts it off.
            "UPDATE reevaluations SET failures = failures + 1, retry_at = clock_timestamp() "
            "+ least($3 * power(2, least(failures, 30)), $4) * interval '1 second' "
            "WHERE resource_id = $1 AND part = $2 AND (retry_at IS NULL OR retry_at <= clock_timestamp()) "
            "AND after_uai = $5 AND ($6::bigint IS NULL OR tour = $6) "
            "RETURNING failures, least($3 * power(2, least(failures - 1, 30)), $4) AS delay",
            part.resource_id,
            part.part,
            RETRY_FIRST_SECONDS,
            RETRY_MAX_SECONDS,
            part.after_uai,
            part.tour,
        )
        return None if row is None else (row["failures"], row["delay"])

    async def reevaluations_pending(self) -> int:
        """How many resources' re-evaluations are waiting or under way (/health can report it)."""
        return await self._conn.fetchval("SELECT count(DISTINCT resource_id) FROM reevaluations")

    async def gauges(self) -> list[Gauge]:
        """What /metrics reads (Metrics.counts): open alerts by kind (every kind, 0 when none), the
        resources whose pairs wait for their re-evaluation, the parts of those put off after a
        failed chunk (a part failing for good shows there, not only in the log)."""
        rows = await self._conn.fetch("SELECT kind, count(*) AS n FROM alertes WHERE ouverte GROUP BY kind")
        open_ = {r["kind"]: r["n"] for r in rows}
        resources, failing = await self._conn.fetchrow(  # type: ignore[misc]  # an aggregate: one row
            "SELECT count(DISTINCT resource_id) AS resources, count(*) FILTER (WHERE failures > 0) AS failing "
            "FROM reevaluations"
        )
        return [
            *(Gauge("feo_alerts_open", "open alerts, by kind", {"kind": k}, open_.get(k, 0)) for k in c.ALERT_KINDS),
            Gauge(
                "feo_reevaluations_pending",
                "resources whose pairs wait for their re-evaluation",
                {},
                resources,
            ),
            Gauge(
                "feo_reevaluation_parts_failing",
                "parts of re-evaluations put off after their last chunk failed",
                {},
                failing,
            ),
        ]

    async def backlog(self) -> dict[str, int]:
        """What /health reports besides the outbox: resources whose pairs wait for their re-evaluation."""
        return {"reevaluations_pending": await self.reevaluations_pending()}
