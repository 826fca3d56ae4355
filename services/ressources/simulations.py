""" "What if": a resource before it is published, lots before they are declared, judged by the
live evaluation's own rules (rules.evaluate, lifecycle.transitions) over what is stored now.

Nothing is written or published: each simulation reads in one read-only transaction (PostgreSQL
refuses any write in it), a consistent snapshot however long it takes. The établissements of a
resource simulation are read by batches, each judged and counted (`judge`) in a pool of worker
processes while the next ones are read: the event loop (the Kafka consumer, the SSE streams) stays
free, and the cores judge side by side; at most IN_FLIGHT batches are held. Within a batch, a
resource is judged once per distinct set of stored inputs: établissements holding equal ones (as
many as the fleets repeat) share one evaluation, exact since evaluate never reads the UAI.
"""

import asyncio
import functools
import re
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import BaseModel, Field

from contracts import AlertKind, Lot, Reason, RessourcePubliee
from contracts.internal import LotProfil, ProfilEquipement
from services.common.storage.db import Conn
from services.equipement.domain import lot_content
from services.ressources import queries, rules, views
from services.ressources.lifecycle import Transition, transitions
from services.ressources.rules import MIN_TEACHERS_DETAILED, Evaluation, Seuils, evaluate, is_evaluated, verdict
from services.ressources.store import RessourcesStore

CHUNK = 2000  # UAIs read and judged at a time
MAX_PAIRS = 50_000
"""Subscribed pairs an equipment simulation evaluates at most: it runs on the service's event loop
(the stored alerts it starts from are read in its transaction) and answers every alert raised or
resolved. 10,000 lots at as many établissements of 20 subscriptions each made 200,000 pairs:
12 s of CPU, an answer of 50 MB (a review, with a stand-in store)."""
YIELD_SECONDS = 0.01
"""The longest an equipment simulation works between two turns of the event loop (but one
établissement's profile built, or one pair evaluated, longer): the consumer, the SSE stream and
the probes are served meanwhile."""
IN_FLIGHT = 4  # batches sent to the worker processes and not yet counted
MAX_MOTIFS = 10
COUNTS = ("evalues", "compatibles", "partiels", "incompatibles", "sous_formes", "formation_non_comptee")
_OF_VERDICT = {"compatible": "compatibles", "partiel": "partiels", "incompatible": "incompatibles"}
TRAINING: AlertKind = "formation-insuffisante"

# A reason's detail without what is particular to one établissement (a lot's kind and id, its
# counts), so that the same cause reads the same everywhere and can be counted: per code, the
# pattern of its detail (rules.py writes them) and what it becomes. A detail that does not
# match (shortened at its bound) is counted as it is.
_MOTIFS: dict[str, tuple[re.Pattern[str], str]] = {
    "os-absent": (re.compile(r"^(.+? requis), .*: ([^:]*)$"), r"\1, …: \2"),
    "browser-absent": (re.compile(r"^(.+? requis), .*: ([^:]*)$"), r"\1, …: \2"),
    "formation": (re.compile(r"^(.+): \d+/\d+ enseignants$"), r"\1: …/… enseignants"),
    "part-compatible": (re.compile(r"^\d+/\d+ (postes compatibles < .+)$"), r"…/… \1"),
    "outil-manquant": (re.compile(r"^(.+): \d+ < (\d+)$"), r"\1: … < \2"),
    "debit": (re.compile(r"^\S+ (Mbit/s < .+)$"), r"… \1"),
}


def motif(reason: Reason) -> tuple[str, str]:
    """(code, pattern of the detail): what the reasons of one cause share across établissements."""
    return _motif(reason.code, reason.detail)


@functools.lru_cache(maxsize=4096)  # the same few details recur at thousands of établissements
def _motif(code: str, detail: str) -> tuple[str, str]:
    known = _MOTIFS.get(code)
    return code, detail if known is None else known[0].sub(known[1], detail)


def _zero() -> dict[str, int]:
    return dict.fromkeys(COUNTS, 0)


def _sum(counts: dict[str, int], more: dict[str, int]) -> None:
    for name, n in more.items():
        counts[name] += n


@dataclass
class Bilan:
    """Counts of verdicts per académie, per département and in all, and of each motif (once
    per établissement), as GET /ressources/{id} counts the live alerts."""

    total: dict[str, int] = field(default_factory=_zero)
    par_academie: dict[str, dict[str, int]] = field(default_factory=dict)
    par_departement: dict[str, dict[str, int]] = field(default_factory=dict)
    motifs: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, evaluation: Evaluation, territoires: Iterable[tuple[str, str, int]], teachers: int) -> None:
        """One evaluation, that of `n` établissements in each (académie, département, n), each
        counting `teachers`. Its training judged over fewer than MIN_TEACHERS_DETAILED teachers
        is not counted (`formation_non_comptee`, nor its motifs): the requirements are the
        caller's, and a simulation over a school's few teachers, one competence level after the
        other, would read each one's levels, of which /etablissements/{uai} shows only what a
        subscribed resource requires (its verdicts' reasons)."""
        of_verdict = _OF_VERDICT[verdict(evaluation.alerts)]
        hidden = evaluation.coverage is not None and teachers < MIN_TEACHERS_DETAILED
        under_trained = not hidden and TRAINING in evaluation.alerts
        shown = (r for kind, reasons in evaluation.alerts.items() if not (hidden and kind == TRAINING) for r in reasons)
        motifs = {motif(r) for r in shown}
        for academie, departement, n in territoires:
            counted = [self.total, self.par_academie.setdefault(academie, _zero())]
            counted.append(self.par_departement.setdefault(departement, _zero()))
            for counts in counted:
                counts["evalues"] += n
                counts[of_verdict] += n
                counts["sous_formes"] += n * under_trained
                counts["formation_non_comptee"] += n * hidden
            self.motifs.update(dict.fromkeys(motifs, n))

    def merge(self, other: "Bilan") -> None:
        """Add the counts of other établissements."""
        for mine, theirs in ((self.par_academie, other.par_academie), (self.par_departement, other.par_departement)):
            for territoire, counts in theirs.items():
                _sum(mine.setdefault(territoire, _zero()), counts)
        _sum(self.total, other.total)
        self.motifs.update(other.motifs)

    def as_json(self) -> dict:
        return {
            "total": self.total,
            "par_academie": dict(sorted(self.par_academie.items())),
            "par_departement": dict(sorted(self.par_departement.items())),
            "motifs": [
                {"code": code, "detail": detail, "etablissements": n}
                for (code, detail), n in sorted(self.motifs.items(), key=lambda m: (-m[1], m[0]))[:MAX_MOTIFS]
            ],
        }


async def simulate_ressource(
    conn: Conn, ressource: RessourcePubliee, abonnes: bool, seuils: Seuils, workers: Executor | None = None
) -> Bilan:
    """The verdicts `ressource` would get, published as it is: at the établissements subscribed
    to its resource_id (`abonnes`) or at every open one. Each batch judged by `workers` (worker
    processes), or here, on the event loop, when None. `seuils`: this replica's own, those the
    database holds used instead (`Seuils.in_force`), read in the simulation's snapshot."""
    text = ressource.model_dump_json()
    loop = asyncio.get_running_loop()
    bilan = Bilan()
    judging: deque[asyncio.Future[Bilan]] = deque()
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            seuils = seuils.in_force(await RessourcesStore(conn).seuils())
            cursor = await queries.inputs(conn, ressource.resource_id if abonnes else None)
            while batch := await cursor.fetch(CHUNK):
                rows = [tuple(r) for r in batch]
                if workers is None:
                    bilan.merge(judge(text, seuils, rows))
                    continue
                judging.append(loop.run_in_executor(workers, judge, text, seuils, rows))
                if len(judging) >= IN_FLIGHT:
                    bilan.merge(await judging.popleft())
        while judging:
            bilan.merge(await judging.popleft())
    finally:
        for future in judging:  # left by an error or a cancellation
            future.cancel()
    return bilan


Row = tuple[str, str, str, str | None, str | None]
"""A row of queries.inputs: uai, code_academie, code_departement, profil, couverture."""
Inputs = tuple[str | None, str | None]
"""An établissement's profile and coverage as queries.inputs reads them (JSON text, or None)."""


def judge(ressource: str, seuils: Seuils, rows: Sequence[Row]) -> Bilan:
    """The counts of these établissements' verdicts for `ressource` (its JSON: what a worker process
    is sent), établissements with equal inputs judged once."""
    where: dict[Inputs, tuple[str, Counter[tuple[str, str]]]] = {}  # inputs -> (first UAI, territoires)
    for uai, academie, departement, profil, couverture in rows:
        where.setdefault((profil, couverture), (uai, Counter()))[1][academie, departement] += 1
    bilan = Bilan()
    for inputs, (uai, territoires) in where.items():
        evaluation, teachers = _evaluate(_ressource(ressource), uai, inputs, seuils)
        bilan.add(evaluation, [(a, d, n) for (a, d), n in territoires.items()], teachers)
    return bilan


@functools.lru_cache(maxsize=1)
def _ressource(text: str) -> RessourcePubliee:
    """One object per simulation in each process: the rules derive a resource's requirements once
    per object."""
    return RessourcePubliee.model_validate_json(text)


def _evaluate(ressource: RessourcePubliee, uai: str, inputs: Inputs, seuils: Seuils) -> tuple[Evaluation, int]:
    """The evaluation of `uai` from its inputs, validated as the store validates them, and its
    counted teachers."""
    profil, couverture = inputs
    held = None if couverture is None else views.couverture(uai, couverture)
    evaluation = evaluate(ressource, None if profil is None else views.profil(uai, profil), held, seuils)
    return evaluation, 0 if held is None else held.enseignants


class TropDePaires(Exception):
    """The lots' établissements have more subscribed pairs than MAX_PAIRS."""

    def __init__(self, pairs: int):
        super().__init__(f"{pairs} paires")
        self.pairs = pairs


class UaiInconnus(Exception):
    """Lots for UAIs the référentiel does not know: index of the lot in the request -> its UAI."""

    def __init__(self, lots: dict[int, str]):
        super().__init__(f"{len(lots)} lot(s) pour des UAI hors du référentiel")
        self.lots = lots


def with_lots(uai: str, profil: ProfilEquipement | None, lots: Iterable[Lot]) -> ProfilEquipement:
    """The profile once these lots are declared, in order, as equipement would publish them: each
    replaces the lot of its lot_id or adds one, quantity 0 retires it; lots by lot_id, as the
    store reads them."""
    held = {lot.lot_id: lot for lot in profil.lots} if profil else {}
    for lot in lots:
        held.pop(lot.lot_id, None)
        if lot.quantity > 0:
            held[lot.lot_id] = LotProfil.model_validate({"lot_id": lot.lot_id, **lot_content(lot)})
    return ProfilEquipement(
        uai=uai, lots=[held[k] for k in sorted(held)], connectivite=profil.connectivite if profil else None
    )


class Changement(BaseModel):
    """Une alerte ouverte qui serait résolue, ou une alerte qui serait levée."""

    alert_id: str
    kind: AlertKind
    uai: str
    resource_id: str
    reasons: list[Reason] = Field(description="levée : pourquoi elle le serait ; résolue : pourquoi elle était ouverte")


class Consequences(BaseModel):
    etablissements: int = Field(0, description="les établissements des lots")
    paires: int = Field(0, description="leurs paires (établissement, ressource abonnée) évaluées")
    levees: list[Changement] = Field([], description="les alertes qui seraient levées")
    resolues: list[Changement] = Field([], description="les alertes ouvertes qui seraient résolues")


async def simulate_equipement(conn: Conn, lots: Sequence[Lot], seuils: Seuils) -> Consequences:
    """What the live evaluation would do, from the alerts it holds now, were these lots declared:
    for each evaluated pair of their établissements, the alerts raised and those resolved.
    UaiInconnus when a lot's UAI is not in the référentiel. `seuils` as for `simulate_ressource`."""
    by_uai: dict[str, list[Lot]] = {}
    for lot in lots:
        by_uai.setdefault(lot.uai, []).append(lot)
    uais = sorted(by_uai)
    consequences = Consequences(etablissements=len(uais))
    now = datetime.now(UTC)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        store = RessourcesStore(conn)
        seuils = seuils.in_force(await store.seuils())
        etabs = await store.etablissements(uais)
        if unknown := {i: lot.uai for i, lot in enumerate(lots) if lot.uai not in etabs}:
            raise UaiInconnus(unknown)
        if (subscriptions := await queries.pairs_count(conn, uais)) > MAX_PAIRS:
            raise TropDePaires(subscriptions)
        turn = time.monotonic()
        for start in range(0, len(uais), CHUNK):
            chunk = uais[start : start + CHUNK]
            pairs = await store.pairs_of(chunk)
            ressources = await store.load_ressources({p.resource_id for p in pairs})
            profils, couvertures = await store.load_entrees(chunk)
            held = await store.load_alertes([(p.uai, p.resource_id) for p in pairs])
            simulated: dict[str, ProfilEquipement] = {}  # each UAI's profile with its lots, built once
            for pair in sorted(pairs, key=lambda p: (p.uai, p.resource_id)):
                uai, rid, etab = pair.uai, pair.resource_id, etabs[pair.uai]
                ressource = ressources.get(rid)
                if ressource is None or not is_evaluated(pair.end, etab.ouvert, publiee=True):
                    continue  # not evaluated, whatever its equipment
                if time.monotonic() - turn >= YIELD_SECONDS:
                    await asyncio.sleep(0)
                    turn = time.monotonic()
                consequences.paires += 1
                if (profil := simulated.get(uai)) is None:
                    profil = simulated[uai] = with_lots(uai, profils.get(uai), by_uai[uai])
                evaluation = evaluate(ressource, profil, couvertures.get(uai), seuils)
                for t in transitions(uai, rid, etab, evaluation, held.get((uai, rid), {}), now):
                    if t.raised or t.resolved:
                        (consequences.levees if t.raised else consequences.resolues).append(changement(t))
    return consequences


def changement(t: Transition) -> Changement:
    """A raise or a resolution as the simulation answers it. A resolution's reasons are the
    stored alert's, unvalidated (lifecycle.Held.as_raised): an alert raised before 30 November
    may hold a detail longer than the contract's bound since, which is shortened here as the
    rules shorten theirs (validated as it was, it made the simulation answer 500)."""
    if t.raised:
        return Changement.model_validate(t.raised, from_attributes=True)
    assert t.resolved is not None
    reasons = [rules.reason(r["code"], r["detail"]) for r in t.resolved["reasons"]]
    return Changement.model_validate({**t.resolved, "reasons": reasons}, from_attributes=True)
