"""The compatibility rules of CONTRACTS.md on hand-made profiles (property tests against a
naive implementation come with the full engine)."""

import pytest

from contracts import Competence, Exigence, Formation, Logiciel, OutilRequis, RessourcePubliee
from contracts.internal import ConnectiviteProfil, CouvertureFormation, LotProfil, ProfilEquipement
from services.ressources.rules import MAX_DETAIL, Seuils, evaluate

UAI = "0350002M"


def ressource(requirements=(), tools=(), **kw) -> RessourcePubliee:
    return RessourcePubliee(
        resource_id="ark:/1/r",
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


def profil(*lots, link=None) -> ProfilEquipement:
    return ProfilEquipement(uai=UAI, version=1, lots=list(lots), connectivite=link)


def os_req(name, lo=None, hi=None):
    return Exigence(type="os", name=name, min_version=lo, max_version=hi)


def browser_req(name, lo=None, hi=None):
    return Exigence(type="browser", name=name, min_version=lo, max_version=hi)


IPADOS_15 = [[os_req("iPadOS", "15")]]


def test_old_os_is_incompatible_with_the_version_as_reason():
    e = evaluate(ressource(IPADOS_15), profil(lot("L1", 30, ("iPadOS", "12.5"))))
    assert e.alerts["equipement-incompatible"][0].model_dump() == {"code": "os-version", "detail": "iPadOS 12.5 < 15"}
    assert (e.compatible, e.devices) == (0, 30)


def test_synonyms_are_folded_and_missing_version_parts_count_as_zero():
    e = evaluate(ressource([[os_req("iPad OS", "15")]]), profil(lot("L1", 30, ("ipados", "15"))))
    assert "equipement-incompatible" not in e.alerts and e.compatible == 30


def test_bounds_are_inclusive():
    r = ressource([[os_req("Windows", "10", "11")]])
    assert evaluate(r, profil(lot("a", 1, ("Windows", "11.0.0")))).compatible == 1
    assert evaluate(r, profil(lot("a", 1, ("Windows", "11.0.1")))).compatible == 0


def test_groups_are_anded_entries_ored():
    r = ressource(
        [[os_req("Windows", "10"), os_req("Linux")], [browser_req("Firefox", "115"), browser_req("Chrome", "100")]]
    )
    good = lot("a", 5, ("GNU/Linux", "6"), [("Mozilla Firefox", "128")])
    bad = lot("b", 5, ("Windows", "11"), [("Edge", "120")])
    e = evaluate(r, profil(good, bad))
    assert (e.compatible, e.devices) == (5, 10)
    assert "equipement-partiel" not in e.alerts  # 0.5 is not below the 0.5 threshold


def test_any_matches_every_device_and_debian_is_not_linux():
    assert evaluate(ressource([[os_req("Multi-OS")]]), profil(lot("a", 2, ("Debian", "12")))).compatible == 2
    assert evaluate(ressource([[os_req("Linux")]]), profil(lot("a", 2, ("Debian", "12")))).compatible == 0


def test_no_computing_device_is_incompatible():
    e = evaluate(ressource(), profil(lot("tni", 2, None, kind="TNI")))
    assert "equipement-incompatible" in e.alerts and e.devices == 0
    assert evaluate(ressource(), None).alerts["equipement-incompatible"]


def test_retired_lot_does_not_count():
    assert evaluate(ressource(), profil(lot("a", 0, ("Windows", "11")))).devices == 0


def test_missing_tool_is_incompatible_even_with_compatible_devices_and_kinds_fold_case():
    r = ressource(tools=[OutilRequis(kind="TNI", min_quantity=2)])
    e = evaluate(r, profil(lot("a", 10, ("Windows", "11")), lot("t", 1, None, kind="tni")))
    assert [x.model_dump() for x in e.alerts["equipement-incompatible"]] == [
        {"code": "outil-manquant", "detail": "TNI: 1 < 2"}
    ]
    ok = evaluate(r, profil(lot("a", 10, ("Windows", "11")), lot("t", 2, None, kind="tni")))
    assert "equipement-incompatible" not in ok.alerts


def test_partial_share_below_threshold():
    r = ressource(IPADOS_15)
    e = evaluate(r, profil(lot("new", 4, ("iPadOS", "17")), lot("old", 6, ("iPadOS", "12"))))
    assert "equipement-partiel" in e.alerts and "equipement-incompatible" not in e.alerts
    assert (
        evaluate(
            r,
            profil(lot("new", 4, ("iPadOS", "17")), lot("old", 6, ("iPadOS", "12"))),
            seuils=Seuils(min_compatible_share=0.4),
        ).alerts.get("equipement-partiel")
        is None
    )


@pytest.mark.parametrize(("bandwidth", "expected"), [(5.0, True), (10.0, False), (None, False)])
def test_bandwidth_only_when_known_and_below(bandwidth, expected):
    link = ConnectiviteProfil(bandwidth_mbps=bandwidth, ent=True) if bandwidth is not None else None
    e = evaluate(ressource(min_bandwidth_mbps=10.0), profil(lot("a", 1, ("Windows", "11")), link=link))
    assert ("connectivite-insuffisante" in e.alerts) is expected


@pytest.mark.parametrize(
    ("bandwidth", "minimum", "detail"),
    [
        (8.0, 20.0, "8 Mbit/s < 20"),
        (9.9999999, 10.0, "9.9999999 Mbit/s < 10"),
        (9.9999999999999, 10.0, "9.9999999999999 Mbit/s < 10"),
        (12.3456789, 12.345679, None),
    ],
)
def test_a_bandwidth_reason_shows_every_digit_that_makes_it_below(bandwidth, minimum, detail):
    """A reason a person can act on: not `10 Mbit/s < 10` (six significant digits)."""
    link = ConnectiviteProfil(bandwidth_mbps=bandwidth, ent=True)
    e = evaluate(ressource(min_bandwidth_mbps=minimum), profil(lot("a", 1, ("Windows", "11")), link=link))
    [reason] = e.alerts["connectivite-insuffisante"]
    have, _, below = reason.detail.partition(" Mbit/s < ")
    assert float(have) == bandwidth and float(below) == minimum and have != below
    assert detail is None or reason.detail == detail


@pytest.mark.parametrize(
    ("share", "shown"), [(0.5, "50%"), (0.7, "70%"), (0.004, "0.4%"), (0.123456789, "12.3456789%")]
)
def test_a_share_reason_shows_its_threshold_as_set(share, shown):
    fleet = profil(lot("old", 999, ("iPadOS", "12")), lot("new", 1, ("iPadOS", "17")))  # 1/1000 compatible
    e = evaluate(ressource(IPADOS_15), fleet, seuils=Seuils(min_compatible_share=share))
    [why, *_] = e.alerts["equipement-partiel"]
    assert why.detail.endswith(f"postes compatibles < {shown}"), why.detail


def test_ent_unreachable_only_when_needed_and_known():
    down = ConnectiviteProfil(bandwidth_mbps=100.0, ent=False)
    assert "ent-indisponible" in evaluate(ressource(needs_ent=True), profil(link=down)).alerts
    assert "ent-indisponible" not in evaluate(ressource(needs_ent=False), profil(link=down)).alerts
    assert "ent-indisponible" not in evaluate(ressource(needs_ent=True), profil()).alerts


def test_training_coverage_is_the_smallest_share():
    r = ressource(training=Formation(competences=[Competence(code="3.4", level=3)], tools=["TNI"]))
    couverture = CouvertureFormation(
        uai=UAI, version=1, enseignants=10, competences={"3.4": [8, 5, 2, 0, 0, 0, 0, 0]}, outils={"tni": 6}
    )
    e = evaluate(r, profil(lot("a", 1, ("Windows", "11"))), couverture)
    assert e.coverage == pytest.approx(0.2)
    assert [x.model_dump() for x in e.alerts["formation-insuffisante"]] == [
        {"code": "formation", "detail": "3.4 niveau 3: 2/10 enseignants"}
    ]


def test_a_tool_count_ahead_of_the_teacher_count_is_a_share_of_at_most_one():
    """The teacher count and a tool's count are two records, read one before the other: 3
    trained of 1 counted (two left) is a full share, not 3 (an alert's coverage is at most 1)."""
    r = ressource(training=Formation(tools=["TNI"]))
    e = evaluate(r, profil(), CouvertureFormation(uai=UAI, version=2, enseignants=1, outils={"tni": 3}))
    assert e.coverage == 1 and "formation-insuffisante" not in e.alerts


def test_no_teacher_counted_means_no_training_alert():
    r = ressource(training=Formation(tools=["TNI"]))
    e = evaluate(r, profil(), CouvertureFormation(uai=UAI, version=1, enseignants=0))
    assert "formation-insuffisante" not in e.alerts and e.coverage is None


LONG_BROWSERS = [(f"Navigateur {i:02d} ".ljust(64, "x"), "123456789.123456789.123456789.123456789") for i in range(32)]


def test_a_long_reason_detail_is_shortened_to_the_contract_bound():
    # 32 browsers of 64-character names: the lot's `have` list alone runs to thousands of characters.
    r = ressource([[browser_req("Firefox", "115")]])
    e = evaluate(
        r, profil(lot("L1", 30, ("Windows", "11"), LONG_BROWSERS), lot("L2", 30, ("Windows", "11"), LONG_BROWSERS))
    )
    full = "Firefox requis, tablette L1: " + ", ".join(f"{n} {v}" for n, v in LONG_BROWSERS)
    assert len(full) > 3000
    reasons = e.alerts["equipement-incompatible"]
    assert [x.code for x in reasons] == ["browser-absent", "browser-absent"]
    assert reasons[0].detail == full[: MAX_DETAIL - 1] + "…" and len(reasons[0].detail) == MAX_DETAIL == 256
    assert reasons[1].detail.startswith("Firefox requis, tablette L2: Navigateur 00 ")


def test_an_os_absent_detail_of_long_names_is_shortened_too():
    name, kind, lot_id = "S" * 64, "K" * 64, "L" * 256
    e = evaluate(ressource([[os_req("R" * 64, "1")]]), profil(lot(lot_id, 3, (name, "1.2.3.4"), kind=kind)))
    [reason] = e.alerts["equipement-incompatible"]
    assert reason.code == "os-absent"
    assert reason.detail == f"{'R' * 64} requis, {kind} {lot_id}: {name} 1.2.3.4"[: MAX_DETAIL - 1] + "…"


def test_a_detail_at_the_bound_is_kept_whole():
    lot_id = "L" * (MAX_DETAIL - len("Linux requis, tablette : Windows 11"))
    [reason] = evaluate(ressource([[os_req("Linux")]]), profil(lot(lot_id, 3, ("Windows", "11")))).alerts[
        "equipement-incompatible"
    ]
    assert reason.detail == f"Linux requis, tablette {lot_id}: Windows 11" and len(reason.detail) == MAX_DETAIL


def test_a_version_miss_names_the_first_declared_browser_of_that_name():
    r = ressource([[browser_req("Firefox", "100", "110")]])
    e = evaluate(
        r, profil(lot("a", 3, ("Windows", "11"), [("Chrome", "120"), ("Firefox", "120"), ("Mozilla Firefox", "90")]))
    )
    assert [x.model_dump() for x in e.alerts["equipement-incompatible"]] == [
        {"code": "browser-version", "detail": "Firefox 120 > 110"}
    ]


def test_lots_alike_give_their_shared_reason_once_and_each_names_itself_up_to_the_cap():
    r = ressource([[os_req("iPadOS", "15")], [browser_req("Chrome")]])
    lots = [lot(f"L{i}", 10, ("iPadOS", "12.5"), [("Safari", "12")]) for i in range(1, 7)]
    e = evaluate(r, profil(*lots))
    assert [(x.code, x.detail) for x in e.alerts["equipement-incompatible"]] == [
        ("os-version", "iPadOS 12.5 < 15"),
        ("browser-absent", "Chrome requis, tablette L1: Safari 12"),
        ("browser-absent", "Chrome requis, tablette L2: Safari 12"),
        ("browser-absent", "Chrome requis, tablette L3: Safari 12"),
        ("browser-absent", "Chrome requis, tablette L4: Safari 12"),
    ]
    assert (e.compatible, e.devices) == (0, 60)
