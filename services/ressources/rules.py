"""The five alert conditions of CONTRACTS.md, as pure functions over plain data.

`evaluate` gives, for one (établissement, resource) pair, the kinds whose condition holds,
each with reasons a person can act on, plus the figures every alert carries.

Cost is linear in what the pair holds. At the contract's bounds (2,000 lots of 32 browsers, 32
requirement groups of 32 entries) comparing every entry with every browser of every lot meant
a hundred million name foldings, so names are folded and versions parsed once: per resource,
its entries indexed by folded name (`_Requirements`); per profile, each distinct software
configuration of its lots (`_Configuration`; most lots of a fleet share a few). A configuration
is judged once per resource (`_Verdict`): each software it has finds the groups the entries on
its name meet at its version by one bisection among their bounds (`_Name`), so a judgment costs
the lot's browsers, not the resource's entries; a reason's text is written only for the misses
reported (at most MAX_REASONS of each source: the lots' misses, the tools short, the training's
shortfalls). What is derived from a resource or a profile is kept for the next pair while the
model object lives (found by identity: the models are frozen and
nothing changes their lists in place); configurations and reasons, by value, for the next
profile (a country's fleets repeat a few hundred of each); nothing here does I/O.
"""

import functools
import operator
import weakref
from bisect import bisect_left
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from itertools import chain
from typing import Any, Generic, NamedTuple, TypeVar

from contracts import (
    CRCN_LEVELS,
    Exigence,
    Reason,
    RessourcePubliee,
    display_name,
    fold_kind,
    fold_name,
    is_any,
    parse_version,
)
from contracts.internal import CouvertureFormation, LotProfil, ProfilEquipement

MAX_REASONS = 5
MAX_DETAIL = 256  # CONTRACTS.md Limits: a reason's detail, longer ones shortened with "…"


@dataclass(frozen=True)
class Seuils:
    min_compatible_share: float = 0.5
    min_training_coverage: float = 0.5

    def in_force(self, held: tuple[float, float] | None) -> "Seuils":
        """The thresholds alerts are evaluated with, these being a replica's own: `held`, those
        the database holds (stored by the latest replica to start, or by a catch-up), else
        these (none stored yet). What the evaluation, a fiche's verdicts and the simulations use."""
        return self if held is None else Seuils(*held)


SHOWN_ONLY = frozenset({"title", "editor"})
"""What a resource shows and no rule reads (nor any alert carries): a republication that changes
only these leaves every verdict as it is."""


def read_by_rules(ressource: Mapping[str, Any]) -> dict[str, Any]:
    """A resource's payload (its JSON values) without what the rules do not read: two equal ones
    give every pair the same evaluation. A field added to the payload counts until listed in SHOWN_ONLY."""
    return {k: v for k, v in ressource.items() if k not in SHOWN_ONLY}


def is_evaluated(abonnement_end: date | None, ouvert: bool | None, publiee: bool) -> bool:
    """CONTRACTS.md: a pair is evaluated while its abonnement is active (no `end`), its
    établissement known and open, and its resource published. `queries.EVALUATED` is its SQL
    form, tested against it."""
    return abonnement_end is None and ouvert is True and publiee


def verdict(kinds: Collection[str]) -> str:
    """The equipment verdict of an evaluated pair from the alert kinds that hold: incompatible
    wins over partial. `queries.VERDICT` is its SQL form, tested against it."""
    if "equipement-incompatible" in kinds:
        return "incompatible"
    return "partiel" if "equipement-partiel" in kinds else "compatible"


MIN_TEACHERS_DETAILED = 5
"""Below this many counted teachers, an établissement's training is not shown apart by the read
API (its count alone: api.formation_shown), nor counted by a simulation (simulations.Bilan): the
read API is not authenticated, and at a school of one or two teachers the levels held per
competence and the tools trained on would be those of persons anyone could name."""


@dataclass(frozen=True)
class Evaluation:
    alerts: dict[str, list[Reason]]
    """Kind -> reasons, for every kind whose condition is true."""
    compatible: int = 0
    devices: int = 0
    coverage: float | None = None


def _shortened(detail: str) -> str:
    """A detail within the contract's bound (the `have` list of a lot with 32 long browser
    names alone runs to thousands of characters)."""
    return detail if len(detail) <= MAX_DETAIL else detail[: MAX_DETAIL - 1] + "…"


@functools.lru_cache(maxsize=4096)
def reason(code: str, detail: str) -> Reason:
    """Every reason is built here, its detail shortened. Kept: the same few reasons recur at
    thousands of établissements, and a Reason is frozen, so one object serves them all."""
    return Reason(code=code, detail=_shortened(detail))


@dataclass
class _Why:
    reasons: list[Reason] = field(default_factory=list)
    _held: set[tuple[str, str]] = field(default_factory=set)
    """(code, detail shortened) of each reason added: a Reason's fields, so a repeat (two details
    may read alike once shortened) is refused without comparing models."""

    @property
    def full(self) -> bool:
        return len(self.reasons) >= MAX_REASONS

    def add(self, code: str, detail: str) -> None:
        if len(self.reasons) < MAX_REASONS and (code, held := _shortened(detail)) not in self._held:
            self._held.add((code, held))
            self.reasons.append(reason(code, detail))


# ---------------------------------------------------------------------------------------------
# Derived data: names folded and versions parsed once, verdicts per software configuration.
# Few objects per configuration: at the bounds, a few hundred thousand small ones kept alive set
# off the garbage collector's full passes, which then cost more than the rules themselves.
# ---------------------------------------------------------------------------------------------

Version = tuple[int, int, int, int]
ConfigKey = tuple[str, ...]
"""A lot's software as declared, flat: OS name, OS version, then each browser's name and version."""

_fold = functools.lru_cache(maxsize=4096)(fold_name)  # a fleet repeats a few names thousands of times
_fold_kind = functools.lru_cache(maxsize=4096)(fold_kind)
_display = functools.lru_cache(maxsize=4096)(display_name)
_name_version = operator.attrgetter("name", "version")


def _config_key(lot: LotProfil) -> ConfigKey:
    assert lot.os is not None
    return (lot.os.name, lot.os.version, *chain.from_iterable(map(_name_version, lot.browsers)))


class _Configuration:
    """The software of lots declared alike: the OS, and the browsers by folded name (a lot may
    carry several versions of one browser: any may match)."""

    __slots__ = ("key", "many", "one", "os", "os_version")

    def __init__(self, key: ConfigKey) -> None:
        self.key = key
        self.os, self.os_version = _fold(key[0]), parse_version(key[1])
        self.one: dict[str, Version] = {}
        """Folded name -> version, for a browser declared once."""
        self.many: dict[str, list[Version]] = {}
        """Folded name -> versions, for a browser declared several times."""
        for i in range(2, len(key), 2):
            name, version = _fold(key[i]), parse_version(key[i + 1])
            if name in self.many:
                self.many[name].append(version)
            elif name in self.one:
                self.many[name] = [self.one.pop(name), version]
            else:
                self.one[name] = version


_configuration = functools.lru_cache(maxsize=4096)(_Configuration)
"""The configuration of a key, shared by the lots and profiles declaring it (the fleets of a
country repeat a few hundred; a verdict is found by its key, so sharing changes no result)."""


def _first(key: ConfigKey, browser: bool, name: str) -> tuple[str, str, Version] | None:
    """The configuration's first software of that folded name, as declared and its version parsed."""
    for i in range(2, len(key), 2) if browser else (0,):
        if _fold(key[i]) == name:
            return key[i], key[i + 1], parse_version(key[i + 1])
    return None


def _have(key: ConfigKey, browser: bool) -> str:
    """The configuration's OS, or its browsers, as an `-absent` reason lists them."""
    listed = range(2, len(key), 2) if browser else (0,)
    return ", ".join(f"{_display(key[i])} {key[i + 1]}" for i in listed) or "aucun"


Miss = tuple[str, str, str | None]
"""(code, detail, None), or for a detail that names the lot (`-absent`): (code, the text
before the lot's kind and id, the text after)."""


class _Name:
    """The entries on one folded name, as the groups they meet by version: their bounds cut the
    versions into regions (each bound alone, and the spans around them), each region with the
    mask of the groups (bit i: group i) that some entry covering it belongs to."""

    __slots__ = ("masks", "points")

    def __init__(self, entries: list[tuple[int, Version | None, Version | None]]) -> None:
        self.points = sorted({p for _, low, high in entries for p in (low, high) if p is not None})
        """Version v is in region 2i+1 when v == points[i], else in region 2i, i = bisect_left."""
        at = {p: 2 * i + 1 for i, p in enumerate(self.points)}
        regions = 2 * len(self.points) + 1
        starts: dict[int, list[int]] = {}
        ends: dict[int, list[int]] = {}
        for group, low, high in entries:  # inclusive bounds: regions at(low) .. at(high)
            first, last = at[low] if low is not None else 0, at[high] if high is not None else regions - 1
            if first <= last:
                starts.setdefault(first, []).append(group)
                ends.setdefault(last, []).append(group)
        covering: dict[int, int] = {}  # group -> entries of it covering the current region
        mask, self.masks = 0, []
        for region in range(regions):  # one sweep: linear in regions and entries
            for group in starts.get(region, ()):
                covering[group] = covering.get(group, 0) + 1
                mask |= 1 << group
            self.masks.append(mask)
            for group in ends.get(region, ()):
                covering[group] -= 1
                if not covering[group]:
                    mask &= ~(1 << group)

    def met(self, version: Version) -> int:
        """The groups an entry on this name meets at that version."""
        i = bisect_left(self.points, version)
        return self.masks[2 * i + 1 if i < len(self.points) and self.points[i] == version else 2 * i]


@dataclass(frozen=True, slots=True)
class _Group:
    first: Exigence | None
    """The entry whose miss is reported when the group fails; None for an empty group."""
    name: str = ""
    low: Version | None = None

    def miss(self, key: ConfigKey) -> Miss:
        """The closest miss of the first entry (the group failed, so every entry missed): the
        first software of its name out of the bounds, or the absence of that name."""
        e = self.first
        if e is None:
            return "exigence-vide", "groupe d'exigences vide", None
        browser = e.type == "browser"
        held = _first(key, browser, self.name)
        if held is None:
            return f"{e.type}-absent", f"{_display(e.name)} requis, ", f": {_have(key, browser)}"
        name, version, parsed = held
        out = (
            f"{version} < {e.min_version}"
            if self.low is not None and parsed < self.low
            else f"{version} > {e.max_version}"
        )
        return f"{e.type}-version", f"{_display(name)} {out}", None


class _Verdict:
    """Lots of one configuration fail one resource: the miss of each failed group, in order."""

    __slots__ = ("_failed", "_key", "_misses", "_of_lot", "ok")

    def __init__(self, failed: list[_Group] | None, key: ConfigKey = ()) -> None:
        self.ok = failed is None
        self._failed, self._key = failed, key
        self._misses: list[Miss] | None = None
        self._of_lot: list[Miss] = []

    def misses(self) -> list[Miss]:
        if self._misses is None:
            assert self._failed is not None
            self._misses = [g.miss(self._key) for g in self._failed]
            self._of_lot = [m for m in self._misses if m[2] is not None]
        return self._misses

    def of_lot(self) -> list[Miss]:
        """The misses whose detail names the lot."""
        self.misses()
        return self._of_lot


_OK = _Verdict(None)
MAX_VERDICTS = 1024  # configurations per resource; beyond, they are judged again


class _Requirements:
    """A resource's requirement groups, prepared once: the entries by type and folded name, so
    that a configuration meets only the entries on software it has, by one bisection per
    version whatever their number; verdicts by configuration."""

    def __init__(self, requirements: Sequence[Sequence[Exigence]]) -> None:
        groups: list[_Group] = []
        entries: dict[tuple[bool, str], list[tuple[int, Version | None, Version | None]]] = {}
        for group in requirements:
            if any(is_any(e.name) for e in group):  # met by every device
                continue
            for e in dict.fromkeys(group):
                low = None if e.min_version is None else parse_version(e.min_version)
                high = None if e.max_version is None else parse_version(e.max_version)
                entries.setdefault((e.type == "browser", _fold(e.name)), []).append((len(groups), low, high))
            if group:
                first = group[0]
                low = None if first.min_version is None else parse_version(first.min_version)
                groups.append(_Group(first, _fold(first.name), low))
            else:
                groups.append(_Group(None))
        self.groups: tuple[_Group, ...] = tuple(groups)
        self._all = (1 << len(groups)) - 1
        self._os = {name: _Name(e) for (browser, name), e in entries.items() if not browser}
        self._browsers = {name: _Name(e) for (browser, name), e in entries.items() if browser}
        self._verdicts: dict[ConfigKey, _Verdict] = {}

    def verdict(self, configuration: _Configuration) -> _Verdict:
        verdict = self._verdicts.get(configuration.key)
        if verdict is None:
            if len(self._verdicts) >= MAX_VERDICTS:
                self._verdicts.clear()
            met = self._met(configuration)
            if met == self._all:
                verdict = _OK
            else:
                verdict = _Verdict([g for i, g in enumerate(self.groups) if not met >> i & 1], configuration.key)
            self._verdicts[configuration.key] = verdict
        return verdict

    def _met(self, c: _Configuration) -> int:
        """The mask of the groups with an entry that some software of the configuration matches:
        by name, with a version inside the bounds."""
        met = 0
        name = self._os.get(c.os)
        if name is not None:
            met |= name.met(c.os_version)
        browsers = self._browsers
        for folded, version in c.one.items():
            name = browsers.get(folded)
            if name is not None:
                met |= name.met(version)
        for folded, versions in c.many.items():
            name = browsers.get(folded)
            if name is not None:
                for version in versions:
                    met |= name.met(version)
        return met


class LotRef(NamedTuple):
    """What the rules read of a computing lot besides its software: its reasons name it."""

    lot_id: str
    kind: str
    quantity: int


class Fleet:
    """A profile's lots and link as the rules read them. Built from the model
    (`Fleet.of`), or from the profile ressources assembles in SQL as plain JSON values
    (`Fleet.from_values`): a re-evaluation reads thousands of profiles this service assembled
    from records it validated, and validating each again as a model cost more than the rules."""

    __slots__ = ("computing", "configurations", "devices", "link", "units")

    def __init__(
        self, lots: Iterable[tuple[str, int, ConfigKey | None, LotRef]], link: tuple[float, bool] | None
    ) -> None:
        """`lots`: each lot's kind, quantity, software (its ConfigKey; None: no OS) and reference."""
        self.computing: list[LotRef] = []
        """Lots with an OS and a quantity; `configurations[i]` is the software of `computing[i]`."""
        self.configurations: list[_Configuration] = []
        self.devices = 0
        self.units: dict[str, int] = {}
        """Folded kind -> units over all lots."""
        self.link = link
        """(bandwidth in Mbit/s, ENT reachable) when the link is declared."""
        for kind, quantity, key, ref in lots:
            folded = _fold_kind(kind)
            self.units[folded] = self.units.get(folded, 0) + quantity
            if key is not None and quantity > 0:
                self.computing.append(ref)
                self.configurations.append(_configuration(key))
                self.devices += quantity

    @classmethod
    def of(cls, profil: ProfilEquipement) -> "Fleet":
        link = profil.connectivite
        return cls(
            (
                (
                    lot.kind,
                    lot.quantity,
                    None if lot.os is None else _config_key(lot),
                    LotRef(lot.lot_id, lot.kind, lot.quantity),
                )
                for lot in profil.lots
            ),
            None if link is None else (link.bandwidth_mbps, link.ent),
        )

    @classmethod
    def from_values(cls, profil: Mapping[str, Any]) -> "Fleet":
        """From a profile as views.PROFIL_SQL assembles it, decoded (trusted: not validated)."""
        link = profil["connectivite"]
        return cls(
            (
                (
                    lot["kind"],
                    lot["quantity"],
                    None if (os := lot.get("os")) is None else _values_key(os, lot.get("browsers") or ()),
                    LotRef(lot["lot_id"], lot["kind"], lot["quantity"]),
                )
                for lot in profil["lots"]
            ),
            None if link is None else (link["bandwidth_mbps"], link["ent"]),
        )


def _values_key(os: Mapping[str, str], browsers: Iterable[Mapping[str, str]]) -> ConfigKey:
    """_config_key of a lot given as JSON values."""
    return (os["name"], os["version"], *chain.from_iterable((b["name"], b["version"]) for b in browsers))


class Coverage(NamedTuple):
    """A coverage as the rules read it (CouvertureFormation's fields but the UAI), from the JSON
    values views.COUVERTURE_SQL assembles, not validated again (see Fleet)."""

    enseignants: int
    competences: Mapping[str, list[int]]
    outils: Mapping[str, int]

    @classmethod
    def from_values(cls, couverture: Mapping[str, Any]) -> "Coverage":
        return cls(couverture["enseignants"], couverture["competences"], couverture["outils"])


_NO_FLEET = Fleet((), None)

K = TypeVar("K")
V = TypeVar("V")


class _ByIdentity(Generic[K, V]):
    """What was derived from the last few objects, found by identity (the models hold lists, so
    they do not hash); an entry goes when its object does."""

    def __init__(self, derive: Callable[[K], V], size: int) -> None:
        self._derive, self._size = derive, size
        self._held: dict[int, tuple[weakref.ref, V]] = {}

    def __call__(self, obj: K) -> V:
        held = self._held.get(id(obj))
        if held is not None and held[0]() is obj:
            return held[1]
        value = self._derive(obj)
        while len(self._held) >= self._size:  # the oldest first
            self._held.pop(next(iter(self._held)))
        self._held[id(obj)] = (weakref.ref(obj, self._forget(id(obj))), value)
        return value

    def _forget(self, key: int) -> Callable[[weakref.ref], None]:
        def forget(ref: weakref.ref) -> None:
            held = self._held.get(key)
            if held is not None and held[0] is ref:
                del self._held[key]

        return forget

    def clear(self) -> None:
        self._held.clear()


_requirements_of: _ByIdentity[RessourcePubliee, _Requirements] = _ByIdentity(
    lambda r: _Requirements(r.requirements), 32
)
_fleet_of: _ByIdentity[ProfilEquipement, Fleet] = _ByIdentity(Fleet.of, 16)


def clear_caches() -> None:
    """Forget what was derived from earlier pairs (a benchmark measures a first evaluation)."""
    _requirements_of.clear()
    _fleet_of.clear()


def _render(miss: Miss, lot: LotProfil | LotRef) -> tuple[str, str]:
    code, detail, after = miss
    return code, detail if after is None else f"{detail}{lot.kind} {lot.lot_id}{after}"


def lot_misses(requirements: Sequence[Sequence[Exigence]], lot: LotProfil) -> list[tuple[str, str]]:
    """Empty when the computing lot satisfies every requirement group; else one miss per failed group."""
    verdict = _Requirements(requirements).verdict(_Configuration(_config_key(lot)))
    return [] if verdict.ok else [_render(m, lot) for m in verdict.misses()]


def _training(
    ressource: RessourcePubliee, couverture: CouvertureFormation | Coverage | None, seuil: float, why: _Why
) -> float | None:
    training = ressource.training
    if not (training.competences or training.tools) or couverture is None or couverture.enseignants < 1:
        return None
    n = couverture.enseignants
    shares = []
    for comp in training.competences:
        held = min(couverture.competences.get(comp.code, [0] * len(CRCN_LEVELS))[comp.level - 1], n)
        shares.append(held / n)
        if held / n < seuil:
            why.add("formation", f"{comp.code} niveau {comp.level}: {held}/{n} enseignants")
    for kind in training.tools:
        # At most the teachers counted: a tool's count and the UAI's teacher count are two
        # records, which a batch may read one ahead of the other (teachers leaving: 3 trained
        # of 1 counted, until the tool's record follows).
        held = min(couverture.outils.get(fold_kind(kind), 0), n)
        shares.append(held / n)
        if held / n < seuil:
            why.add("formation", f"{kind}: {held}/{n} enseignants")
    return min(shares)


def _number(x: float) -> str:
    """A number as a reason shows it: every digit it has (its shortest exact form: `:g` keeps
    six, and `9.9999999 < 10` read `10 < 10`), no `.0` for a whole one."""
    text = repr(float(x))
    return text.removesuffix(".0")


def _percent(share: float) -> str:
    """A share as a percentage, every digit of it (0.004: 0.4; 0.7: 70, not 70.00000000000001)."""
    return f"{(Decimal(repr(float(share))) * 100).normalize():f}"


def evaluate(
    ressource: RessourcePubliee,
    profil: ProfilEquipement | Fleet | None,
    couverture: CouvertureFormation | Coverage | None = None,
    seuils: Seuils = Seuils(),
) -> Evaluation:
    """The pair's evaluation; the profile and the coverage as models or as the rules read them
    (Fleet, Coverage: what a re-evaluation reads)."""
    fleet = profil if isinstance(profil, Fleet) else _fleet_of(profil) if profil else _NO_FLEET
    requirements = _requirements_of(ressource)
    devices = fleet.devices
    incompatible, alerts = _Why(), {}
    compatible = 0
    reported: set[ConfigKey] = set()  # configurations whose misses were added once
    for lot, configuration in zip(fleet.computing, fleet.configurations, strict=True):
        verdict = requirements.verdict(configuration)
        if verdict.ok:
            compatible += lot.quantity
        elif not incompatible.full:
            # Adding a reason already held changes nothing: once a configuration's misses are in,
            # only those that name the lot can be new for another lot of that configuration.
            first = configuration.key not in reported
            reported.add(configuration.key)
            for miss in verdict.misses() if first else verdict.of_lot():
                incompatible.add(*_render(miss, lot))
    if devices == 0:
        incompatible.add("aucun-poste", "aucun poste avec système d'exploitation déclaré")
    short = _Why()
    for tool in ressource.tools:
        have = fleet.units.get(_fold_kind(tool.kind), 0)
        if have < tool.min_quantity:
            short.add("outil-manquant", f"{tool.kind}: {have} < {tool.min_quantity}")
    if compatible == 0 or short.reasons:
        alerts["equipement-incompatible"] = (incompatible.reasons if compatible == 0 else []) + short.reasons
    if compatible > 0 and compatible / devices < seuils.min_compatible_share:
        share = _Why()
        share.add(
            "part-compatible",
            f"{compatible}/{devices} postes compatibles < {_percent(seuils.min_compatible_share)}%",
        )
        alerts["equipement-partiel"] = share.reasons + incompatible.reasons[: MAX_REASONS - 1]
    link = fleet.link
    if ressource.min_bandwidth_mbps is not None and link and link[0] < ressource.min_bandwidth_mbps:
        alerts["connectivite-insuffisante"] = [
            reason("debit", f"{_number(link[0])} Mbit/s < {_number(ressource.min_bandwidth_mbps)}")
        ]
    if ressource.needs_ent and link and not link[1]:
        alerts["ent-indisponible"] = [reason("ent", "l'ENT n'est pas joignable depuis l'établissement")]
    training = _Why()
    coverage = _training(ressource, couverture, seuils.min_training_coverage, training)
    if coverage is not None and coverage < seuils.min_training_coverage:
        alerts["formation-insuffisante"] = training.reasons
    return Evaluation(alerts, compatible, devices, coverage)
