"""Property tests: `services.ressources.rules.evaluate` against a second, deliberately naive
implementation written here straight from the words of CONTRACTS.md ("Alerts", "Payloads")
and DOMAIN.md's vocabulary list.

Nothing is imported from services/ressources except the function under test, its inputs as
JSON values (Fleet, Coverage), its `Seuils` and its reason cap: version comparison and name
folding are re-implemented here, so that a shared helper bug cannot make both sides agree.
"""

import json
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from contracts import Competence, Exigence, Formation, Logiciel, OutilRequis, RessourcePubliee
from contracts.internal import ConnectiviteProfil, CouvertureFormation, LotProfil, ProfilEquipement
from services.ressources.rules import MAX_REASONS, Coverage, Fleet, Seuils, evaluate

UAI = "0350002M"
PROPERTY_SETTINGS = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# ---------------------------------------------------------------------------------------------
# The second implementation, from the contract's sentences.
# ---------------------------------------------------------------------------------------------

# DOMAIN.md: "Names and the synonyms to fold (case-insensitive)". First spelling = the name.
SYNONYM_GROUPS = (
    ("any", "Multi-OS"),
    ("Windows", "Microsoft Windows", "ms-windows"),
    ("macOS", "Mac OS", "macos"),
    ("Linux", "GNU/Linux"),  # Debian, Ubuntu, Fedora stay distinct names
    ("ChromeOS", "Chrome OS"),
    ("Android",),
    ("iOS", "iPhone OS"),
    ("iPadOS", "iPad OS"),
    ("Firefox", "Mozilla Firefox"),
    ("Chrome", "Google Chrome"),
    ("Safari",),
    ("Opera",),
    ("Edge", "Microsoft Edge"),
    ("Internet Explorer", "ms-internet explorer"),
)


def naive_name(name: str) -> str:
    """OS and browser names compare case-insensitively after synonyms are folded."""
    low = name.lower()
    for group in SYNONYM_GROUPS:
        if low in [s.lower() for s in group]:
            return group[0].lower()
    return low


def naive_is_any(name: str) -> bool:
    """A requirement named `any` or `Multi-OS` matches every device."""
    return naive_name(name) == "any"


def naive_kind(kind: str) -> str:
    """Equipment kinds compare case-insensitively."""
    return kind.lower()


def naive_version(v: str) -> list[int]:
    """1-4 dot-separated integers; missing parts count as 0."""
    parts = [int(p) for p in v.split(".")]
    while len(parts) < 4:
        parts.append(0)
    return parts


def naive_within(version: str, entry: Exigence) -> bool:
    """The version inside the optional bounds (inclusive)."""
    v = naive_version(version)
    if entry.min_version is not None and v < naive_version(entry.min_version):
        return False
    if entry.max_version is not None and v > naive_version(entry.max_version):
        return False
    return True


def naive_entry_matches(entry: Exigence, lot: LotProfil) -> bool:
    """An `os` entry matches the lot's OS, a `browser` entry matches one of its browsers."""
    if naive_is_any(entry.name):
        return True
    if entry.type == "os":
        software = [lot.os]
    else:
        software = list(lot.browsers)
    for sw in software:
        if naive_name(sw.name) == naive_name(entry.name) and naive_within(sw.version, entry):
            return True
    return False


def naive_satisfies(requirements, lot: LotProfil) -> bool:
    """Every requirement group has at least one entry that matches."""
    for group in requirements:
        if not any(naive_entry_matches(entry, lot) for entry in group):
            return False
    return True


def naive_units(lots, kind: str) -> int:
    """Units of that kind, summed over all lots of the UAI."""
    return sum(lot.quantity for lot in lots if naive_kind(lot.kind) == naive_kind(kind))


def naive_shares(ressource: RessourcePubliee, couverture: CouvertureFormation):
    """[(what, held, n, share)] for each required competence and each required tool."""
    n = couverture.enseignants
    out = []
    for comp in ressource.training.competences:
        counts = couverture.competences.get(comp.code)
        held = counts[comp.level - 1] if counts else 0  # counts[i]: teachers at level i+1 or higher
        out.append((("competence", comp.code, comp.level), held, n, held / n))
    for kind in ressource.training.tools:
        held = 0
        for k, count in couverture.outils.items():
            if naive_kind(k) == naive_kind(kind):
                held = count
        out.append((("tool", kind), held, n, held / n))
    return out


def naive(ressource: RessourcePubliee, profil, couverture, seuils: Seuils) -> dict:
    lots = profil.lots if profil is not None else []
    computing = [lot for lot in lots if lot.os is not None and lot.quantity > 0]
    devices = sum(lot.quantity for lot in computing)
    compatible = sum(lot.quantity for lot in computing if naive_satisfies(ressource.requirements, lot))
    short_tools = [t for t in ressource.tools if naive_units(lots, t.kind) < t.min_quantity]
    link = profil.connectivite if profil is not None else None

    kinds = set()
    if compatible == 0 or short_tools:
        kinds.add("equipement-incompatible")
    if compatible > 0 and compatible / devices < seuils.min_compatible_share:
        kinds.add("equipement-partiel")
    if (
        ressource.min_bandwidth_mbps is not None
        and link is not None
        and link.bandwidth_mbps < ressource.min_bandwidth_mbps
    ):
        kinds.add("connectivite-insuffisante")
    if ressource.needs_ent and link is not None and link.ent is False:
        kinds.add("ent-indisponible")

    lists_training = bool(ressource.training.competences) or bool(ressource.training.tools)
    coverage = None
    if lists_training and couverture is not None and couverture.enseignants >= 1:
        coverage = min(share for *_, share in naive_shares(ressource, couverture))
        if coverage < seuils.min_training_coverage:
            kinds.add("formation-insuffisante")
    return {
        "kinds": kinds,
        "compatible": compatible,
        "devices": devices,
        "coverage": coverage,
        "short_tools": short_tools,
        "computing": computing,
        "lots": lots,
    }


# ---------------------------------------------------------------------------------------------
# Strategies: random but realistic inputs.
# ---------------------------------------------------------------------------------------------

# Software as partners spell it: each family is one name in all its spellings (GLPI exports,
# ScoLOMFR voc-024...). Debian, Ubuntu and Fedora are their own families, not Linux's.
OS_FAMILIES = (
    ("Windows", "Microsoft Windows", "ms-windows"),
    ("macOS", "Mac OS", "macos"),
    ("Linux", "GNU/Linux"),
    ("Debian",),
    ("Ubuntu",),
    ("Fedora",),
    ("ChromeOS", "Chrome OS"),
    ("Android",),
    ("iOS", "iPhone OS"),
    ("iPadOS", "iPad OS"),
)
BROWSER_FAMILIES = (
    ("Firefox", "Mozilla Firefox"),
    ("Chrome", "Google Chrome"),
    ("Safari",),
    ("Opera",),
    ("Edge", "Microsoft Edge"),
    ("Internet Explorer", "ms-internet explorer"),
    ("Lynx",),  # outside the vocabulary: still compares, case-insensitively
)
ANY_FAMILY = ("any", "Multi-OS")
KINDS = (
    "tablette",
    "ordinateur portable",
    "ordinateur",
    "TNI",
    "VPI",
    "vidéoprojecteur",
    "casque",
    "ENT",
    "robot programmable",
)
CRCN = ("1.1", "1.2", "1.3", "2.1", "2.2", "2.3", "2.4", "3.1", "3.2", "3.3", "3.4", "4.1", "4.2", "4.3", "5.1", "5.2")
CASINGS = (
    lambda n: n,
    str.lower,
    str.upper,
    str.swapcase,
    str.title,
    lambda n: f" {n}",  # spaces count: another name (the contract compares nothing but the case)
    lambda n: n.replace(" ", "  ") if " " in n else f"{n} ",
)

INTEGERS_UPTO = [st.integers(0, k) for k in range(101)]
QUANTITIES = st.sampled_from((0, 1, 2, 15, 30)) | st.integers(0, 50)
bandwidths = st.sampled_from((0.0, 2.0, 8.0, 10.0, 100.0)) | st.floats(0, 1000, allow_nan=False)
shares = st.sampled_from((0.0, 0.25, 0.5, 1.0)) | st.floats(0, 1, allow_nan=False)


@st.composite
def cases(draw):
    """(ressource, profil, couverture, seuils).

    One établissement's fleet and one resource's requirements share a small vocabulary (one to
    three OS, browsers and kinds, each written in any of its spellings and cases; two or three
    version values, each written with or without trailing zeros), as in real life, so that
    names, versions and bounds actually meet and tie; a lot may carry several versions of
    one browser."""

    def upto(k: int) -> int:
        return draw(INTEGERS_UPTO[k])

    os_pool = draw(st.lists(st.sampled_from(OS_FAMILIES), min_size=1, max_size=3, unique=True))
    browser_pool = draw(st.lists(st.sampled_from(BROWSER_FAMILIES), min_size=1, max_size=3, unique=True))
    kind_pool = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=3, unique=True))
    crcn_pool = draw(st.lists(st.sampled_from(CRCN), min_size=1, max_size=3, unique=True))
    # Two or three version values per case, each written with 0-3 trailing ".0" at random.
    values = draw(st.lists(st.lists(st.integers(0, 17), min_size=1, max_size=2), min_size=2, max_size=3))

    def spellings(families) -> list[str]:
        return [casing(name) for family in families for name in family for casing in CASINGS]

    os_names, browser_names = spellings(os_pool), spellings(browser_pool)
    kind_names, any_names = spellings([(k,) for k in kind_pool]), spellings([ANY_FAMILY])

    def one_of(names: list[str]) -> str:
        return names[upto(len(names) - 1)]

    def kind() -> str:
        return one_of(kind_names)

    def version() -> str:
        value = values[upto(len(values) - 1)]
        return ".".join(map(str, value + [0] * upto(4 - len(value))))

    def bound() -> str | None:
        return version() if upto(1) else None

    def a_browser_list() -> list[Logiciel]:
        return [Logiciel(name=one_of(browser_names), version=version()) for _ in range(upto(3))]

    def a_lot(i: int) -> LotProfil:
        has_os = upto(3) > 0
        return LotProfil(
            lot_id=f"L{i}",
            kind=kind(),
            quantity=draw(QUANTITIES),
            os=Logiciel(name=one_of(os_names), version=version()) if has_os else None,
            browsers=a_browser_list() if has_os else [],
        )

    def an_entry() -> Exigence:
        type_ = ("os", "browser")[upto(1)]
        name = one_of(any_names if upto(4) == 0 else os_names if type_ == "os" else browser_names)
        return Exigence(type=type_, name=name, min_version=bound(), max_version=bound())

    ressource = RessourcePubliee(
        resource_id="ark:/67375/r1",
        title="Ressource",
        editor="Éditeur",
        requirements=[[an_entry() for _ in range(upto(3))] for _ in range(upto(3))],
        tools=[OutilRequis(kind=kind(), min_quantity=upto(5)) for _ in range(upto(2))],
        min_bandwidth_mbps=draw(st.none() | bandwidths),
        needs_ent=draw(st.booleans()),
        training=Formation(
            competences=[Competence(code=one_of(crcn_pool), level=1 + upto(7)) for _ in range(upto(3))],
            tools=[kind() for _ in range(upto(2))],
        ),
    )

    profil = None
    if upto(7) > 0:
        link = None
        if upto(1):
            link = ConnectiviteProfil(bandwidth_mbps=draw(bandwidths), ent=draw(st.booleans()))
        lots_ = [a_lot(i) for i in range(upto(5))]
        profil = ProfilEquipement(uai=UAI, version=1, lots=lots_, connectivite=link)

    couverture = None
    if upto(5) > 0:
        n = upto(30)
        # competences[code][i]: teachers at level i+1 or higher, so non-increasing and <= n.
        competences = {}
        for code in crcn_pool:
            if upto(3) > 0:
                competences[code] = sorted((upto(n) for _ in range(8)), reverse=True)
        # outils: keyed by the folded kind.
        outils = {k.casefold(): upto(n) for k in kind_pool if upto(3) > 0}
        couverture = CouvertureFormation(uai=UAI, version=1, enseignants=n, competences=competences, outils=outils)

    seuils = Seuils(min_compatible_share=draw(shares), min_training_coverage=draw(shares))
    return ressource, profil, couverture, seuils


# ---------------------------------------------------------------------------------------------
# Edge cases, by hand.
# ---------------------------------------------------------------------------------------------


def res(requirements=(), tools=(), **kw) -> RessourcePubliee:
    return RessourcePubliee(
        resource_id="ark:/67375/r1",
        title="R",
        editor="E",
        requirements=[list(g) for g in requirements],
        tools=list(tools),
        **kw,
    )


def lot(lot_id, quantity, os=None, browsers=(), kind="tablette") -> LotProfil:
    return LotProfil(
        lot_id=lot_id,
        kind=kind,
        quantity=quantity,
        os=Logiciel(name=os[0], version=os[1]) if os else None,
        browsers=[Logiciel(name=n, version=v) for n, v in browsers],
    )


def prof(*lots_, link=None) -> ProfilEquipement:
    return ProfilEquipement(uai=UAI, version=1, lots=list(lots_), connectivite=link)


def os_req(name, lo=None, hi=None) -> Exigence:
    return Exigence(type="os", name=name, min_version=lo, max_version=hi)


def cov(n, competences=None, outils=None) -> CouvertureFormation:
    return CouvertureFormation(uai=UAI, version=1, enseignants=n, competences=competences or {}, outils=outils or {})


TRAINING_34_3 = Formation(competences=[Competence(code="3.4", level=3)])
EDGES = {
    # 5 of 10 teachers hold it, threshold 0.5: "<" is strict, no alert.
    "share-equal-to-training-threshold": (
        (
            res(training=TRAINING_34_3),
            prof(lot("a", 1, ("Windows", "11"))),
            cov(10, {"3.4": [9, 7, 5, 0, 0, 0, 0, 0]}),
            Seuils(),
        ),
        set(),
    ),
    # 4 of 8 devices compatible, threshold 0.5: not partial.
    "share-equal-to-compatible-threshold": (
        (
            res([[os_req("iPadOS", "15")]]),
            prof(lot("n", 4, ("iPadOS", "17")), lot("o", 4, ("iPadOS", "12"))),
            None,
            Seuils(),
        ),
        set(),
    ),
    "version-equal-to-both-bounds": (
        (
            res([[os_req("Windows", "10.0", "10")]]),
            prof(lot("a", 3, ("Microsoft Windows", "10.0.0.0"))),
            None,
            Seuils(),
        ),
        set(),
    ),
    "empty-group-cannot-be-satisfied": (
        (res([[]]), prof(lot("a", 3, ("Windows", "11"))), None, Seuils()),
        {"equipement-incompatible"},
    ),
    "no-requirement-every-computing-lot-satisfies": (
        (res(), prof(lot("a", 3, ("Debian", "12")), lot("b", 2, ("Android", "9"))), None, Seuils()),
        set(),
    ),
    "missing-version-parts-count-as-zero": (
        (res([[os_req("ipad os", "15.0.0", "15")]]), prof(lot("a", 2, ("IPADOS", "15"))), None, Seuils()),
        set(),
    ),
    "debian-is-not-linux": (
        (res([[os_req("Linux")]]), prof(lot("a", 2, ("Debian", "12"))), None, Seuils()),
        {"equipement-incompatible"},
    ),
    "gnu-linux-is-linux": (
        (res([[os_req("LINUX", "6")]]), prof(lot("a", 2, ("GNU/Linux", "6.1"))), None, Seuils()),
        set(),
    ),
    "multi-os-matches-everything": (
        (res([[os_req("Multi-OS", "99")]]), prof(lot("a", 2, ("Debian", "12"))), None, Seuils()),
        set(),
    ),
    "no-teacher-counted-no-training-alert": (
        (res(training=Formation(tools=["TNI"])), prof(lot("a", 1, ("Windows", "11"))), cov(0), Seuils()),
        set(),
    ),
    "any-browser-of-that-name-may-match": (
        (
            res([[Exigence(type="browser", name="Firefox", min_version="115")]]),
            prof(lot("a", 3, ("Windows", "11"), [("Firefox", "100"), ("Mozilla Firefox", "128")])),
            None,
            Seuils(),
        ),
        set(),
    ),
    "one-of-several-versions-inside-both-bounds": (
        (
            res([[Exigence(type="browser", name="Firefox", min_version="100", max_version="110")]]),
            prof(lot("a", 3, ("Windows", "11"), [("Firefox", "90"), ("Firefox", "120"), ("mozilla firefox", "105.2")])),
            None,
            Seuils(),
        ),
        set(),
    ),
    "several-versions-on-both-sides-of-the-bounds": (
        (
            res([[Exigence(type="browser", name="Firefox", min_version="100", max_version="110")]]),
            prof(lot("a", 3, ("Windows", "11"), [("Firefox", "90"), ("Firefox", "120")])),
            None,
            Seuils(),
        ),
        {"equipement-incompatible"},
    ),
    "minimum-above-maximum-matches-nothing": (
        (res([[os_req("Windows", "11", "10")]]), prof(lot("a", 3, ("Windows", "10.5"))), None, Seuils()),
        {"equipement-incompatible"},
    ),
    "one-name-in-two-groups-met-by-two-versions": (
        (
            res(
                [
                    [Exigence(type="browser", name="Firefox", min_version="115")],
                    [Exigence(type="browser", name="Firefox", max_version="100")],
                ]
            ),
            prof(lot("a", 3, ("Windows", "11"), [("Firefox", "120"), ("Firefox", "90")])),
            None,
            Seuils(),
        ),
        set(),
    ),
    "one-name-in-two-groups-one-version": (
        (
            res(
                [
                    [Exigence(type="browser", name="Firefox", min_version="115")],
                    [Exigence(type="browser", name="Firefox", max_version="100")],
                ]
            ),
            prof(lot("a", 3, ("Windows", "11"), [("Firefox", "120")])),
            None,
            Seuils(),
        ),
        {"equipement-incompatible"},
    ),
    "same-group-twice-and-an-entry-twice": (
        (
            res([[os_req("iPadOS", "15"), os_req("ipad os", "15")], [os_req("iPadOS", "15"), os_req("ipad os", "15")]]),
            prof(lot("n", 1, ("iPadOS", "17")), lot("o", 4, ("iPadOS", "12"))),
            None,
            Seuils(),
        ),
        {"equipement-partiel"},
    ),
    "bandwidth-equal-to-minimum": (
        (
            res(min_bandwidth_mbps=10.0),
            prof(lot("a", 1, ("Windows", "11")), link=ConnectiviteProfil(bandwidth_mbps=10.0, ent=True)),
            None,
            Seuils(),
        ),
        set(),
    ),
}


# ---------------------------------------------------------------------------------------------
# Checks.
# ---------------------------------------------------------------------------------------------

VERSION_REASON = re.compile(r"^(?P<name>.+) (?P<version>[0-9.]+) (?P<op>[<>]) (?P<bound>[0-9.]+)$")
TOOL_REASON = re.compile(r"^(?P<kind>.+): (?P<have>[0-9]+) < (?P<min>[0-9]+)$")
COMPETENCE_REASON = re.compile(
    r"^(?P<code>[1-5]\.[1-4]) niveau (?P<level>[1-8]): (?P<held>[0-9]+)/(?P<n>[0-9]+) enseignants$"
)
TOOL_TRAINING_REASON = re.compile(r"^(?P<kind>.+): (?P<held>[0-9]+)/(?P<n>[0-9]+) enseignants$")


def check_version_reason(reason, want: dict, requirements) -> None:
    """`os-version` / `browser-version`: some non-satisfying computing lot has that software at
    that version, and a requirement entry on that name has that bound, which it misses."""
    m = VERSION_REASON.match(reason.detail)
    assert m, f"unreadable {reason.code} detail {reason.detail!r}"
    kind = reason.code.removesuffix("-version")
    entries = [e for g in requirements for e in g if e.type == kind and naive_name(e.name) == naive_name(m["name"])]
    bound_ok = [
        e
        for e in entries
        if (
            m["op"] == "<"
            and e.min_version == m["bound"]
            and naive_version(m["version"]) < naive_version(e.min_version)
        )
        or (
            m["op"] == ">"
            and e.max_version == m["bound"]
            and naive_version(m["version"]) > naive_version(e.max_version)
        )
    ]
    assert bound_ok, f"{reason.detail!r}: no requirement entry with that bound that the version misses"
    lots_with = [
        lot
        for lot in want["computing"]
        if not naive_satisfies(requirements, lot)
        and any(
            naive_name(sw.name) == naive_name(m["name"]) and sw.version == m["version"]
            for sw in ([lot.os] if kind == "os" else lot.browsers)
        )
    ]
    assert lots_with, f"{reason.detail!r}: no failing computing lot has that {kind} at that version"


def expected_tool_details(ressource, want) -> list[str]:
    details = []
    for tool in want["short_tools"]:
        d = f"{tool.kind}: {naive_units(want['lots'], tool.kind)} < {tool.min_quantity}"
        if d not in details:
            details.append(d)
    return details


def expected_training_details(ressource, couverture, threshold) -> list[str]:
    details = []
    for what, held, n, share in naive_shares(ressource, couverture):
        if share < threshold:
            if what[0] == "competence":
                d = f"{what[1]} niveau {what[2]}: {held}/{n} enseignants"
            else:
                d = f"{what[1]}: {held}/{n} enseignants"
            if d not in details:
                details.append(d)
    return details


def check(case) -> None:
    ressource, profil, couverture, seuils = case
    got = evaluate(ressource, profil, couverture, seuils)
    want = naive(ressource, profil, couverture, seuils)

    assert set(got.alerts) == want["kinds"]
    assert (got.compatible, got.devices) == (want["compatible"], want["devices"])
    if want["coverage"] is None:
        assert got.coverage is None
    else:
        assert got.coverage == pytest.approx(want["coverage"])

    for kind, reasons in got.alerts.items():
        assert reasons, f"{kind} raised without a reason a person can act on"
        assert len(reasons) == len(set(reasons)), f"{kind}: duplicated reasons"

    incompatible = got.alerts.get("equipement-incompatible", [])
    tool_reasons = [r.detail for r in incompatible if r.code == "outil-manquant"]
    expected_tools = expected_tool_details(ressource, want)
    if "equipement-incompatible" in want["kinds"]:
        # One "KIND: have < min" per short tool, as many as the cap allows.
        assert set(tool_reasons) <= set(expected_tools), (tool_reasons, expected_tools)
        assert len(tool_reasons) == min(MAX_REASONS, len(expected_tools)), (tool_reasons, expected_tools)
        for detail in tool_reasons:
            assert TOOL_REASON.match(detail)
        if want["compatible"] > 0:
            # Only the tools are to blame: no device reason.
            assert all(r.code == "outil-manquant" for r in incompatible), incompatible

    for kind in ("equipement-incompatible", "equipement-partiel"):
        for reason in got.alerts.get(kind, []):
            if reason.code in ("os-version", "browser-version"):
                check_version_reason(reason, want, ressource.requirements)

    if "formation-insuffisante" in want["kinds"]:
        details = [r.detail for r in got.alerts["formation-insuffisante"]]
        assert all(r.code == "formation" for r in got.alerts["formation-insuffisante"])
        expected = expected_training_details(ressource, couverture, seuils.min_training_coverage)
        # Each reason is a requirement whose share is below the threshold, up to the cap.
        assert set(details) <= set(expected), (details, expected)
        assert len(details) == min(MAX_REASONS, len(expected)), (details, expected)
        for detail in details:
            assert COMPETENCE_REASON.match(detail) or TOOL_TRAINING_REASON.match(detail)


def with_edges(test):
    for case, _ in EDGES.values():
        test = example(case=case)(test)
    return test


# ---------------------------------------------------------------------------------------------
# Tests.
# ---------------------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(case=cases())
@with_edges
def test_evaluate_agrees_with_the_contract_read_naively(case):
    check(case)


@PROPERTY_SETTINGS
@given(case=cases())
@with_edges
def test_the_inputs_read_as_json_values_evaluate_as_the_models(case):
    """A re-evaluation reads the profile and the coverage as JSON values, without the models
    (Fleet, Coverage): they give every evaluation the models give."""
    ressource, profil, couverture, seuils = case
    fleet = None if profil is None else Fleet.from_values(json.loads(profil.model_dump_json(exclude={"uai"})))
    coverage = None if couverture is None else Coverage.from_values(json.loads(couverture.model_dump_json()))
    assert evaluate(ressource, fleet, coverage, seuils) == evaluate(ressource, profil, couverture, seuils)


@pytest.mark.parametrize("name", list(EDGES))
def test_edge_cases_give_the_contract_answer(name):
    case, kinds = EDGES[name]
    got = evaluate(*case)
    assert set(got.alerts) == kinds == naive(*case)["kinds"]


def test_reason_formats_are_the_contract_examples():
    r = res([[os_req("iPadOS", "15")]], tools=[OutilRequis(kind="TNI", min_quantity=1)], training=TRAINING_34_3)
    e = evaluate(r, prof(lot("a", 30, ("iPadOS", "12.5"))), cov(10, {"3.4": [9, 5, 2, 0, 0, 0, 0, 0]}))
    incompatible = [x.model_dump() for x in e.alerts["equipement-incompatible"]]
    assert {"code": "os-version", "detail": "iPadOS 12.5 < 15"} in incompatible
    assert {"code": "outil-manquant", "detail": "TNI: 0 < 1"} in incompatible
    assert [x.model_dump() for x in e.alerts["formation-insuffisante"]] == [
        {"code": "formation", "detail": "3.4 niveau 3: 2/10 enseignants"}
    ]
