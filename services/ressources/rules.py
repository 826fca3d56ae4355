"""The five alert conditions of CONTRACTS.md, as pure functions over plain data.

`evaluate` gives, for one (établissement, resource) pair, the kinds whose condition holds,
each with reasons a person can act on, plus the figures every alert carries.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

from contracts import display_name, fold_kind, fold_name, is_any, parse_version
from contracts.internal import CouvertureFormation, LotProfil, ProfilEquipement
from contracts import Exigence, Logiciel, Reason, RessourcePubliee

MAX_REASONS = 5
MAX_DETAIL = 256  # CONTRACTS.md Limits: a reason's detail, longer ones shortened with "…"


@dataclass(frozen=True)
class Seuils:
    min_compatible_share: float = 0.5
    min_training_coverage: float = 0.5


@dataclass(frozen=True)
class Evaluation:
    alerts: dict[str, list[Reason]]
    """Kind -> reasons, for every kind whose condition is true."""
    compatible: int = 0
    devices: int = 0
    coverage: float | None = None


def _reason(code: str, detail: str) -> Reason:
    """Every reason is built here, its detail within the contract's bound (the `have` list of
    a lot with 32 long browser names alone runs to thousands of characters)."""
    if len(detail) > MAX_DETAIL:
        detail = detail[: MAX_DETAIL - 1] + "…"
    return Reason(code=code, detail=detail)


@dataclass
class _Why:
    reasons: list[Reason] = field(default_factory=list)

    def add(self, code: str, detail: str) -> None:
        reason = _reason(code, detail)
        if reason not in self.reasons and len(self.reasons) < MAX_REASONS:
            self.reasons.append(reason)


def _within(version: str, entry: Exigence) -> str | None:
    """None when `version` is inside the entry's inclusive bounds, else why not."""
    v = parse_version(version)
    if entry.min_version is not None and v < parse_version(entry.min_version):
        return f"{version} < {entry.min_version}"
    if entry.max_version is not None and v > parse_version(entry.max_version):
        return f"{version} > {entry.max_version}"
    return None


def _entry_miss(entry: Exigence, lot: LotProfil) -> tuple[str, str] | None:
    """None when the entry matches the lot, else (code, detail) of the closest miss."""
    candidates: Sequence[Logiciel] = [lot.os] if entry.type == "os" else lot.browsers
    if is_any(entry.name):
        return None
    miss = None
    for sw in candidates:  # a lot may carry several versions of one browser: any may match
        if fold_name(sw.name) == fold_name(entry.name):
            out = _within(sw.version, entry)
            if out is None:
                return None
            miss = miss or (f"{entry.type}-version", f"{display_name(sw.name)} {out}")
    if miss:
        return miss
    have = ", ".join(f"{display_name(s.name)} {s.version}" for s in candidates) or "aucun"
    return f"{entry.type}-absent", f"{display_name(entry.name)} requis, {lot.kind} {lot.lot_id}: {have}"


def lot_misses(requirements: Sequence[Sequence[Exigence]], lot: LotProfil) -> list[tuple[str, str]]:
    """Empty when the lot satisfies every requirement group; else one miss per failed group."""
    misses = []
    for group in requirements:
        group_misses = [_entry_miss(entry, lot) for entry in group]
        if all(m is not None for m in group_misses):
            misses.append(group_misses[0] if group_misses else ("exigence-vide", "groupe d'exigences vide"))
    return misses


def _training(ressource: RessourcePubliee, couverture: CouvertureFormation | None, seuil: float, why: _Why) -> float | None:
    training = ressource.training
    if not (training.competences or training.tools) or couverture is None or couverture.enseignants < 1:
        return None
    n = couverture.enseignants
    shares = []
    for comp in training.competences:
        held = couverture.competences.get(comp.code, [0] * 8)[comp.level - 1]
        shares.append(held / n)
        if held / n < seuil:
            why.add("formation", f"{comp.code} niveau {comp.level}: {held}/{n} enseignants")
    for kind in training.tools:
        held = couverture.outils.get(fold_kind(kind), 0)
        shares.append(held / n)
        if held / n < seuil:
            why.add("formation", f"{kind}: {held}/{n} enseignants")
    return min(shares)


def evaluate(
    ressource: RessourcePubliee,
    profil: ProfilEquipement | None,
    couverture: CouvertureFormation | None = None,
    seuils: Seuils = Seuils(),
) -> Evaluation:
    lots = profil.lots if profil else []
    computing = [lot for lot in lots if lot.os is not None and lot.quantity > 0]
    devices = sum(lot.quantity for lot in computing)
    incompatible, alerts = _Why(), {}
    compatible = 0
    for lot in computing:
        misses = lot_misses(ressource.requirements, lot)
        if misses:
            for code, detail in misses:
                incompatible.add(code, detail)
        else:
            compatible += lot.quantity
    if devices == 0:
        incompatible.add("aucun-poste", "aucun poste avec système d'exploitation déclaré")
    short = _Why()
    for tool in ressource.tools:
        have = sum(lot.quantity for lot in lots if fold_kind(lot.kind) == fold_kind(tool.kind))
        if have < tool.min_quantity:
            short.add("outil-manquant", f"{tool.kind}: {have} < {tool.min_quantity}")
    if compatible == 0 or short.reasons:
        alerts["equipement-incompatible"] = (incompatible.reasons if compatible == 0 else []) + short.reasons
    if compatible > 0 and compatible / devices < seuils.min_compatible_share:
        share = _Why()
        share.add("part-compatible", f"{compatible}/{devices} postes compatibles < {seuils.min_compatible_share:.0%}")
        alerts["equipement-partiel"] = share.reasons + incompatible.reasons[: MAX_REASONS - 1]
    link = profil.connectivite if profil else None
    if ressource.min_bandwidth_mbps is not None and link and link.bandwidth_mbps < ressource.min_bandwidth_mbps:
        alerts["connectivite-insuffisante"] = [
            _reason("debit", f"{link.bandwidth_mbps:g} Mbit/s < {ressource.min_bandwidth_mbps:g}")
        ]
    if ressource.needs_ent and link and not link.ent:
        alerts["ent-indisponible"] = [_reason("ent", "l'ENT n'est pas joignable depuis l'établissement")]
    training = _Why()
    coverage = _training(ressource, couverture, seuils.min_training_coverage, training)
    if coverage is not None and coverage < seuils.min_training_coverage:
        alerts["formation-insuffisante"] = training.reasons
    return Evaluation(alerts, compatible, devices, coverage)
