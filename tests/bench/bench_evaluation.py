"""How long the compatibility rules take to evaluate one (établissement, resource) pair, now and
before they were made linear, measured in the same run.

    ./dev shell tests/bench/bench_evaluation.py [--runs 7] [--baseline-runs 1]

Three pairs, each evaluated by the current `services.ressources.rules.evaluate` and by
`baseline_evaluate` below (the implementation before the change, kept for comparison):
- bounds, distinct: at the contract's bounds (CONTRACTS.md "Limits" and "Volumes"): 2,000
  computing lots of 32 browsers with 64-character names and 4-part versions of 9 digits, every
  lot its own software configuration (nothing shared between lots); a resource with 32
  requirement groups of 32 entries, some met, some missed by version, some by name;
- bounds, shared: the same sizes, the 2,000 lots sharing 4 configurations, as a real fleet does;
- typical: 12 lots of tablets and computers, 2 groups of 4 entries, a tool, training.

Figures, median and max over the runs (a run of the typical pair is the mean of 200 evaluations):
- cold: the rules' caches emptied first (a resource and a profile seen for the first time);
- next UAI: the same resource (its prepared requirements and verdicts kept) against a fresh copy
  of the profile, as when one resource is re-evaluated for every subscribed établissement;
- before: `baseline_evaluate`, `--baseline-runs` runs at the bounds, where one takes minutes.
The garbage is collected before each run. The results of both implementations are
asserted equal (not timed). No assertion on time.
"""

import argparse
import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import contracts
from contracts import (
    Competence,
    Exigence,
    Formation,
    Logiciel,
    OutilRequis,
    RessourcePubliee,
    display_name,
    fold_kind,
    fold_name,
    is_any,
    parse_version,
)
from contracts.internal import ConnectiviteProfil, CouvertureFormation, LotProfil, ProfilEquipement
from services.ressources import rules
from services.ressources.rules import Evaluation, Seuils

DEFAULT_SEUILS = Seuils()


def Reason(code: str, detail: str) -> contracts.Reason:
    """The baseline's one adaptation: since 7feea38 `contracts.Reason` refuses a detail over 256
    characters, which the baseline wrote for a lot of many long browser names (it raised at the
    bounds); the detail is shortened to the bound with "…", as rules.py now does, then validated."""
    if len(detail) > 256:
        detail = detail[:255] + "…"
    return contracts.Reason(code=code, detail=detail)


# ---------------------------------------------------------------------------------------------
# Baseline: the pre-change implementation kept for comparison. services/ressources/rules.py of
# commit 25d939e, from `_Why` to the end, copied verbatim but for `evaluate`, renamed
# `baseline_evaluate` (`Reason` above is the one stand-in). Not used by the platform.
# ---------------------------------------------------------------------------------------------

MAX_REASONS = 5


@dataclass
class _Why:
    reasons: list[contracts.Reason] = field(default_factory=list)

    def add(self, code: str, detail: str) -> None:
        reason = Reason(code=code, detail=detail)
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
    candidates: Sequence[Logiciel] = [lot.os] if entry.type == "os" else lot.browsers  # type: ignore[list-item]
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
    return misses  # type: ignore[return-value]


def _training(
    ressource: RessourcePubliee, couverture: CouvertureFormation | None, seuil: float, why: _Why
) -> float | None:
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


def baseline_evaluate(
    ressource: RessourcePubliee,
    profil: ProfilEquipement | None,
    couverture: CouvertureFormation | None = None,
    seuils: Seuils = DEFAULT_SEUILS,
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
            Reason(code="debit", detail=f"{link.bandwidth_mbps:g} Mbit/s < {ressource.min_bandwidth_mbps:g}")
        ]
    if ressource.needs_ent and link and not link.ent:
        alerts["ent-indisponible"] = [Reason(code="ent", detail="l'ENT n'est pas joignable depuis l'établissement")]
    training = _Why()
    coverage = _training(ressource, couverture, seuils.min_training_coverage, training)
    if coverage is not None and coverage < seuils.min_training_coverage:
        alerts["formation-insuffisante"] = training.reasons
    return Evaluation(alerts, compatible, devices, coverage)


# ---------------------------------------------------------------------------------------------
# The pairs.
# ---------------------------------------------------------------------------------------------

UAI = "0350002M"
LOTS, BROWSERS, GROUPS, ENTRIES = 2000, 32, 32, 32  # CONTRACTS.md Limits and Volumes


def long_name(text: str) -> str:
    return text.ljust(64, "x")  # OS and browser names: 64 characters at most


def version(major: int, last: int = 0) -> str:
    return f"{major:09d}.123456789.987654321.{100000000 + last:09d}"  # 4 parts of 9 digits


BROWSER = [long_name(f"Navigateur de l'espace numérique de travail n° {j:02d} ") for j in range(2 * BROWSERS)]
LOW, OK, HIGH = 100_000_000, 200_000_000, 300_000_000  # below the groups' minimum, inside, above a maximum


def bounds_ressource() -> RessourcePubliee:
    """Group 0: an OS among 32 (Windows >= 10 last). Group g > 0: the browser BROWSER[g] within
    [150000000, 250000000] (the maximum on one group in four), first of the group when g % 8 < 4,
    else last; the 31 other entries name browsers no lot has."""
    groups = [
        [Exigence(type="os", name=long_name(f"Système absent du parc n° {e:02d} ")) for e in range(ENTRIES - 1)]
        + [Exigence(type="os", name="Microsoft Windows", min_version="10")]
    ]
    for g in range(1, GROUPS):
        real = Exigence(
            type="browser", name=BROWSER[g], min_version="150000000", max_version="250000000" if g % 4 == 3 else None
        )
        others = [
            Exigence(
                type="browser",
                name=long_name(f"Navigateur absent, groupe {g:02d}, entrée {e:02d} "),
                min_version=version(1),
            )
            for e in range(ENTRIES - 1)
        ]
        groups.append([real, *others] if g % 8 < 4 else [*others, real])
    return RessourcePubliee(
        resource_id="ark:/67375/bench-bornes",
        title="Bornes",
        editor="E",
        requirements=groups,
        tools=[OutilRequis(kind="TNI", min_quantity=1)],
        min_bandwidth_mbps=100.0,
        training=Formation(competences=[Competence(code="3.4", level=3)], tools=["TNI"]),
    )


def bounds_lot(i: int, distinct: bool) -> LotProfil:
    """Four kinds of lot in turn: up to date (twice, two OS versions), outdated browsers (one in
    four below the minimum, one in four above a maximum), another OS with other browsers."""
    last = i if distinct else 0
    kind = i % 4
    if kind == 2:
        os = Logiciel(name="GNU/Linux", version=version(6, last))
        browsers = [Logiciel(name=BROWSER[BROWSERS + j], version=version(OK, last)) for j in range(BROWSERS)]
    else:
        os = Logiciel(name="Microsoft Windows", version=version(10 + (kind == 3), last))
        majors = [
            LOW if kind == 1 and j % 4 == 1 else HIGH if kind == 1 and j % 4 == 3 else OK for j in range(BROWSERS)
        ]
        browsers = [Logiciel(name=BROWSER[j], version=version(m, last)) for j, m in enumerate(majors)]
    return LotProfil(
        lot_id=f"lot-{i:04d}", kind="ordinateur portable", quantity=(10, 30, 25, 10)[kind], os=os, browsers=browsers
    )


def bounds_pair(distinct: bool) -> tuple:
    profil = ProfilEquipement(
        uai=UAI,
        version=1,
        lots=[bounds_lot(i, distinct) for i in range(LOTS)],
        connectivite=ConnectiviteProfil(bandwidth_mbps=50.0, ent=True),
    )
    couverture = CouvertureFormation(
        uai=UAI, version=1, enseignants=40, competences={"3.4": [30, 25, 12, 5, 0, 0, 0, 0]}, outils={"tni": 30}
    )
    return bounds_ressource(), profil, couverture


def typical_pair() -> tuple:
    def lot(lot_id, kind, quantity, os, browsers=()):
        return LotProfil(
            lot_id=lot_id,
            kind=kind,
            quantity=quantity,
            os=Logiciel(name=os[0], version=os[1]) if os else None,
            browsers=[Logiciel(name=n, version=v) for n, v in browsers],
        )

    lots = [lot(f"tab-{i}", "tablette", 30, ("iPadOS", "17.1"), [("Safari", "17.1")]) for i in range(4)]
    lots += [lot(f"tab-old-{i}", "tablette", 15, ("iPad OS", "12.5.7"), [("Safari", "12.1")]) for i in range(2)]
    lots += [
        lot(
            f"pc-{i}",
            "ordinateur portable",
            16,
            ("Windows", "11"),
            [("Google Chrome", "120.0.6099"), ("Mozilla Firefox", "115.3"), ("Edge", "120")],
        )
        for i in range(4)
    ]
    lots += [lot("labo", "ordinateur", 12, ("Debian", "12"), [("Firefox", "102.15")]), lot("tni", "TNI", 3, None)]
    ressource = RessourcePubliee(
        resource_id="ark:/67375/bench-type",
        title="Typique",
        editor="E",
        requirements=[
            [
                Exigence(type="os", name="iPadOS", min_version="15"),
                Exigence(type="os", name="Windows", min_version="10"),
                Exigence(type="os", name="ChromeOS", min_version="110"),
                Exigence(type="os", name="Linux"),
            ],
            [
                Exigence(type="browser", name="Chrome", min_version="110"),
                Exigence(type="browser", name="Firefox", min_version="115"),
                Exigence(type="browser", name="Safari", min_version="15"),
                Exigence(type="browser", name="Edge", min_version="110"),
            ],
        ],
        tools=[OutilRequis(kind="TNI", min_quantity=2)],
        min_bandwidth_mbps=8.0,
        needs_ent=True,
        training=Formation(competences=[Competence(code="3.4", level=2)], tools=["tni"]),
    )
    profil = ProfilEquipement(
        uai=UAI, version=1, lots=lots, connectivite=ConnectiviteProfil(bandwidth_mbps=20.0, ent=True)
    )
    couverture = CouvertureFormation(
        uai=UAI, version=1, enseignants=35, competences={"3.4": [30, 14, 6, 2, 0, 0, 0, 0]}, outils={"tni": 20}
    )
    return ressource, profil, couverture


# ---------------------------------------------------------------------------------------------
# Timing.
# ---------------------------------------------------------------------------------------------


def timed(runs: int, repeat: int, evaluate: Callable, arguments: Callable[[], tuple]) -> tuple[list[float], object]:
    """Seconds per evaluation, one figure per run (the mean of `repeat` evaluations), and the
    last result. The arguments are made outside the timing, the garbage collected before each run."""
    figures, result = [], None
    for _ in range(runs):
        total = 0.0
        gc.collect()
        for _ in range(repeat):
            args = arguments()
            start = time.perf_counter()
            result = evaluate(*args)
            total += time.perf_counter() - start
        figures.append(total / repeat)
    return figures, result


def measure(label: str, pair: tuple, runs: int, baseline_runs: int, repeat: int) -> dict:
    ressource, profil, couverture = pair

    def cold() -> tuple:
        rules.clear_caches()
        return ressource, profil, couverture

    def next_uai() -> tuple:
        return ressource, profil.model_copy(deep=True), couverture

    before, old = timed(baseline_runs, repeat, baseline_evaluate, lambda: (ressource, profil, couverture))
    new = rules.evaluate(*cold())
    assert isinstance(new, Evaluation) and new == old, f"{label}: the implementations disagree\n{new}\n{old}"
    cold_figures, _ = timed(runs, repeat, rules.evaluate, cold)
    rules.evaluate(ressource, profil, couverture)  # the resource's verdicts, kept for "next UAI"
    next_figures, _ = timed(runs, repeat, rules.evaluate, next_uai)
    configurations = len({(lot.os.name, lot.os.version, tuple(lot.browsers)) for lot in profil.lots if lot.os})
    return {
        "label": label,
        "figures": {"cold": cold_figures, "next UAI": next_figures, "before": before},
        "lots": len(profil.lots),
        "configurations": configurations,
        "groups": len(ressource.requirements),
        "entries": sum(len(g) for g in ressource.requirements),
        "compatible": new.compatible,
        "devices": new.devices,
        "alerts": ", ".join(f"{k} {len(v)}" for k, v in new.alerts.items()),
    }


def show(row: dict) -> None:
    def ms(seconds: float) -> str:
        return f"{seconds * 1000:10.3f}"

    f = row["figures"]
    print(
        f"{row['label']}: {row['lots']} lots, {row['configurations']} configurations, {row['groups']} groups / "
        f"{row['entries']} entries; compatible {row['compatible']}/{row['devices']}; alerts (reasons): {row['alerts']}"
    )
    for name, runs in f.items():
        print(f"  {name:9s} median {ms(statistics.median(runs))} ms   max {ms(max(runs))} ms   ({len(runs)} runs)")
    before = statistics.median(f["before"])
    print(
        f"  before / cold: {before / statistics.median(f['cold']):8.1f}x   "
        f"before / next UAI: {before / statistics.median(f['next UAI']):8.1f}x"
    )


def main(runs: int, baseline_runs: int) -> None:
    print("rules.evaluate(), one pair, per evaluation; the same Evaluation from both implementations asserted")
    for label, pair, repeat, baseline in (
        ("typical", typical_pair(), 200, runs),
        ("bounds, shared configurations", bounds_pair(distinct=False), 1, baseline_runs),
        ("bounds, distinct configurations", bounds_pair(distinct=True), 1, baseline_runs),
    ):
        show(measure(label, pair, runs, baseline, repeat))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--baseline-runs", type=int, default=1, help="runs of the baseline at the bounds (minutes each)"
    )
    args = parser.parse_args()
    main(args.runs, args.baseline_runs)
