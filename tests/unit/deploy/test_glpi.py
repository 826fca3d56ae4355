"""The GLPI adapter on the real agent samples (../shared/data/glpi, read in place) and on a
generated inventory of a few thousand devices whose lots the test computes on its own, from
what it generated, not with the adapter's grouping."""

import base64
import fcntl
import json
import random
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

import contracts as c
from contracts.vocabulary import fold_name
from deploy.partenaires import _inventaire as inv
from deploy.partenaires import glpi
from deploy.partenaires.glpi import Correspondance, Etat, Inventaire, etat_apres, inventorier, main

DEPARTEMENT = "/collectivites/departements/035"
COLLEGE, LYCEE = "0350001" + c.uai_check_letter("0350001"), "0350002" + c.uai_check_letter("0350002")
PARIS_SUMMER = timezone(timedelta(hours=2))


def uai(n: int) -> str:
    digits = f"035{n:04d}"
    return digits + c.uai_check_letter(digits)


def dry_run(capsys, *argv: str) -> tuple[list[dict], str]:
    assert main([*argv, "--declarant", DEPARTEMENT, "--dry-run"]) == 0
    out, err = capsys.readouterr()
    return [json.loads(line) for line in out.splitlines()], err


def test_the_samples_give_one_lot_per_device_the_latest_inventory_of_each(shared_data, tmp_path, capsys):
    mapping = tmp_path / "correspondance.csv"
    mapping.write_text(f"critere;valeur;uai\ntag;000005;{COLLEGE}\ndossier;glpi;{LYCEE}\n")
    events, summary = dry_run(capsys, str(shared_data / "glpi"), "--correspondance", str(mapping))

    lots = {(e["data"]["uai"], e["data"]["os"]["version"]): e["data"] for e in events}
    assert sorted(lots) == [(COLLEGE, "25"), (COLLEGE, "31"), (LYCEE, "10.0")]
    # computer_3_updated replaces computer_3 (same deviceid, later logdate): its browsers, RPM versions cut
    assert lots[COLLEGE, "25"] | {"lot_id": "-"} == {
        "uai": COLLEGE,
        "lot_id": "-",
        "kind": "ordinateur portable",
        "quantity": 1,
        "os": {"name": "Fedora", "version": "25"},
        "browsers": [{"name": "Chromium", "version": "58.0.3029.110"}, {"name": "Firefox", "version": "53.0.3"}],
    }
    assert lots[COLLEGE, "31"]["os"] == {"name": "Fedora", "version": "31"} and lots[COLLEGE, "31"]["browsers"] == []
    # the phone: no tag, mapped by its folder; Android's version from its name, not the API level
    assert lots[LYCEE, "10.0"]["kind"] == "smartphone" and lots[LYCEE, "10.0"]["os"]["name"] == "Android"
    # Each établissement's latest inventory: the collège's computer_1, the lycée's phone.
    assert {(e["data"]["uai"], e["time"]) for e in events} == {
        (COLLEGE, "2020-06-12T14:19:54+02:00"),
        (LYCEE, "2019-12-18T14:30:16+10:00"),
    }
    assert all(e["source"] == DEPARTEMENT and e["subject"] == e["data"]["uai"] for e in events)
    for event in events:
        c.parse_event(json.dumps(event).encode())  # valid against the contract
    assert "fichier-illisible : 1 (inventory.schema.json)" in summary
    assert "inventaire-remplace : 1 (computer_3.json)" in summary
    assert "sans-os : 1 (computer_2.json)" in summary

    mapping.write_text(f"critere,valeur,uai\ntag,000005,{COLLEGE}\n")  # no folder: the phone has no UAI
    events, summary = dry_run(capsys, str(shared_data / "glpi"), "--correspondance", str(mapping))
    assert len(events) == 2 and "sans-correspondance : 1 (phone_1.json)" in summary


@pytest.mark.parametrize(
    "written, expected",
    [
        ("51.0.1-2.fc25", "51.0.1"),
        ("1:115.6.0esr-1~deb12u1", "115.6.0"),
        ("31 (Workstation Edition)", "31"),
        ("126.0.6478.127.1", "126.0.6478.127"),
        ("build 1234567890", None),  # 10 digits: not a contract version
        ("inconnue", None),
        (None, None),
    ],
)
def test_versions_are_cut_to_the_contract_form(written, expected):
    assert inv.version(written) == expected


@pytest.mark.parametrize(
    "software, browser",
    [
        ("Mozilla Firefox (x64 fr)", "Firefox"),
        ("Mozilla Firefox 115.13.0 ESR (x64 fr)", "Firefox"),
        ("firefox-esr", "Firefox"),
        ("Google Chrome", "Chrome"),
        ("google-chrome-stable", "Chrome"),
        ("Microsoft Edge", "Edge"),
        ("Opera Stable 111.0.5168.61", "Opera"),
        ("opera-stable", "Opera"),
        ("MozillaFirefox", "Firefox"),
        ("chromium-browser", "Chromium"),
        ("chromium-libs", None),
        ("fedora-user-agent-chrome", None),
        ("Microsoft Edge WebView2 Runtime", None),
    ],
)
def test_browsers_are_recognised_among_installed_software(software, browser):
    assert inv._browser(software) == browser


def test_a_device_with_two_versions_of_a_browser_declares_both_and_meets_a_bound_only_the_older_meets():
    """An ESR beside the current release: a resource asking Firefox up to 115.99 runs on the
    device. Declared with its highest version alone, the device was judged incompatible."""
    from contracts import RessourcePubliee
    from contracts.internal import LotProfil, ProfilEquipement
    from services.ressources.rules import evaluate

    softwares = [
        {"name": "Mozilla Firefox 115.13.0 ESR (x64 fr)", "version": "115.13.0"},
        {"name": "Mozilla Firefox (x64 fr)", "version": "128.0.3"},
        {"name": "Google Chrome", "version": "126.0.6478.127"},
        {"name": "Google Chrome", "version": "126.0.6478.127.0"},  # the same version, written longer
    ]
    browsers = inv._browsers(softwares)
    assert browsers == (("Chrome", "126.0.6478.127"), ("Firefox", "115.13.0"), ("Firefox", "128.0.3"))
    lot = LotProfil(
        lot_id="L",
        kind="ordinateur portable",
        quantity=1,
        os={"name": "Windows", "version": "11"},
        browsers=[{"name": n, "version": v} for n, v in browsers],
    )
    esr = RessourcePubliee.model_validate(
        {
            "resource_id": "ark:/67375/esr",
            "title": "Une ressource",
            "editor": "Éditeur",
            "requirements": [[{"type": "browser", "name": "Firefox", "min_version": "115", "max_version": "115.99"}]],
            "tools": [],
            "training": {"competences": [], "tools": []},
        }
    )
    evaluation = evaluate(esr, ProfilEquipement(uai=COLLEGE, lots=[lot]))
    assert evaluation.compatible == 1 and "equipement-incompatible" not in evaluation.alerts


def test_ubuntu_s_deb_package_that_installs_the_snap_gives_no_version():
    """Since 22.04, Ubuntu's `firefox` deb only installs the snap: its version, `1:1snap1-…`,
    read as Firefox 1, met no resource's bound. The snap, listed on its own, is the browser."""
    softwares = [
        {"name": "firefox", "version": "1:1snap1-0ubuntu5", "from": "deb"},
        {"name": "firefox", "version": "133.0.3-1", "from": "snap"},
    ]
    assert inv._browsers(softwares) == (("Firefox", "133.0.3"),)
    assert inv._browsers(softwares[:1]) == ()


@pytest.mark.parametrize(
    "transitional",
    ["1:85.0.4183.83-0ubuntu0.20.04.3", "1:85.0.4183.83-0ubuntu2.22.04.1", "77.0.3865.120-0ubuntu1~snap1"],
)
def test_ubuntu_s_chromium_browser_deb_that_installs_the_snap_gives_no_version(transitional):
    """Ubuntu's `chromium-browser` deb only installs the snap since 19.10; on 20.04 and 22.04 it
    carries the last deb's version under an epoch: read as Chromium 85, older than the machine's.
    18.04's real debs (no epoch) are read."""
    snap = {"name": "chromium", "version": "131.0.6778.85", "from": "snap"}
    assert inv._browsers([{"name": "chromium-browser", "version": transitional, "from": "deb"}, snap]) == (
        ("Chromium", "131.0.6778.85"),
    )
    bionic = {"name": "chromium-browser", "version": "85.0.4183.83-0ubuntu0.18.04.2", "from": "deb"}
    assert inv._browsers([bionic]) == (("Chromium", "85.0.4183.83"),)


def test_beyond_the_contract_s_bound_the_highest_version_of_each_browser_is_kept_first():
    softwares = [{"name": "Mozilla Firefox", "version": f"{v}.0"} for v in range(100, 140)]
    softwares.append({"name": "Google Chrome", "version": "120.0"})
    browsers = inv._browsers(softwares)
    assert len(browsers) == 32 and ("Chrome", "120.0") in browsers and ("Firefox", "139.0") in browsers
    assert ("Firefox", "109.0") in browsers and ("Firefox", "108.0") not in browsers  # the 31 highest Firefox


def test_the_mapping_file_is_checked_naming_the_line_and_the_rule(tmp_path):
    path = tmp_path / "m.csv"
    cases = {
        f"critere,valeur,uai\ntag,A,{COLLEGE}\ntag,B,0350001A\n": "ligne 3): uai « 0350001A » invalide",
        f"critere,valeur,uai\nentite,A,{COLLEGE}\n": "critère « entite » inconnu",
        f"critere,valeur,uai\ntag,A,{COLLEGE}\ntag,A,{LYCEE}\n": "ligne 3): tag « A » déjà associé",
        f"tag,valeur,uai\ntag,A,{COLLEGE}\n": "l'en-tête doit être critere,valeur,uai",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(ValueError) as refused:
            Correspondance.lire(path)
        assert message in str(refused.value)
    as_json = tmp_path / "m.json"
    as_json.write_text(json.dumps({"tag": {"A": COLLEGE}, "dossier": {"salle-12": LYCEE}}))
    assert Correspondance.lire(as_json) == Correspondance(tag={"A": COLLEGE}, dossier={"salle-12": LYCEE})


def test_the_time_of_the_lots_is_never_later_than_now(tmp_path):
    folder = tmp_path / "ecole"
    folder.mkdir()
    late = datetime.now(UTC) + timedelta(days=3)
    (folder / "a.json").write_text(json.dumps(_device("a", "Laptop", WINDOWS[0][0], [], late, tag=None)))
    now = datetime.now(UTC)
    lots = inventorier([folder], Correspondance(tag={}, dossier={"ecole": COLLEGE}), DEPARTEMENT, now=now).lots
    assert [e.time for e in lots] == [now]


# The generated inventory: each choice with what the lots must say of it.
WINDOWS = [
    ({"name": "Windows", "full_name": "Microsoft Windows 10 Professionnel", "version": "22H2"}, ("Windows", "10")),
    ({"name": "Windows", "full_name": "Microsoft Windows 11 Éducation", "version": "23H2"}, ("Windows", "11")),
]
LINUX = [
    ({"name": "Ubuntu", "full_name": "Ubuntu 22.04.4 LTS", "version": "22.04.4 LTS (Jammy)"}, ("Ubuntu", "22.04.4")),
    ({"name": "Debian", "full_name": "Debian GNU/Linux 12 (bookworm)", "version": "12.5"}, ("Debian", "12.5")),
]
MAC = [({"name": "macOS", "full_name": "macOS Sonoma", "version": "14.4.1"}, ("macOS", "14.4.1"))]
ANDROID = [({"name": "Android 14", "full_name": "U Android 14 api 34", "version": "34"}, ("Android", "14"))]
# (spellings an agent writes, name in the lot, versions as written -> as in the lot)
WINDOWS_BROWSERS = [
    (["Mozilla Firefox (x64 fr)", "Mozilla Firefox 128.0.3 (x64 fr)"], "Firefox", {"128.0.3": "128.0.3"}),
    (["Google Chrome"], "Chrome", {"126.0.6478.127": "126.0.6478.127", "125.0.6422.142": "125.0.6422.142"}),
    (["Microsoft Edge"], "Edge", {"126.0.2592.87": "126.0.2592.87"}),
]
LINUX_BROWSERS = [
    (["firefox-esr", "firefox"], "Firefox", {"1:115.12.0esr-1~deb12u1": "115.12.0", "127.0.2-1": "127.0.2"}),
    (["chromium", "chromium-browser"], "Chromium", {"126.0.6478.126-1~deb12u1": "126.0.6478.126"}),
]
MAC_BROWSERS = [(["Safari"], "Safari", {"17.4.1": "17.4.1"}), (["Google Chrome"], "Chrome", {"126.0.1": "126.0.1"})]
NOISE = [("chromium-common", "126.0.6478.126-1"), ("LibreOffice 24.2", "24.2.4"), ("7-Zip 23.01 (x64)", "23.01")]
CHASSIS = {"Laptop": "ordinateur portable", "Notebook": "ordinateur portable", "Desktop": "ordinateur"}
CHASSIS |= {"Tower": "ordinateur", "All in One": "ordinateur", "Tablet": "tablette"}
PERSONAL = ("prenom.nom", "SN-4X7Q")  # a logged-in user, a serial number: never in any output


def _device(deviceid, chassis, os, softwares, when, tag, itemtype="Computer", rng=None):
    content = {
        "hardware": {"name": f"PC-{deviceid}", "lastloggeduser": f"{PERSONAL[0]}{deviceid}"},
        "bios": {"ssn": f"{PERSONAL[1]}{deviceid}"},
        "softwares": [{"name": n, "version": v, "publisher": "x"} for n, v in softwares],
        "accesslog": {"logdate": when.astimezone(PARIS_SUMMER).strftime("%Y-%m-%d %H:%M:%S")},
    }
    if chassis is not None:
        content["hardware"]["chassis_type"] = chassis
    if os is not None:
        content["operatingsystem"] = {**os, "timezone": {"name": "CEST", "offset": "+0200"}}
    document = {"deviceid": deviceid, "itemtype": itemtype, "action": "inventory", "content": content}
    return document | ({"tag": tag} if tag else {})


def generate(root: Path, devices: int, seed: int = 11):
    """Files under root, the mapping, and what the adapter must make of them: Counter of lots
    (uai, kind, os, browsers) -> quantity, Counter of set-aside reasons, the lots' time, and
    where each counted device is: deviceid -> (its lot's key, tag, folder)."""
    rng = random.Random(seed)
    tags = {f"CLG-{n:02d}": uai(n) for n in range(1, 26)}
    folders = {f"salle-{n:02d}": uai(100 + n) for n in range(1, 6)}
    expected: Counter = Counter()
    reasons: Counter = Counter()
    placed = {}
    latest = datetime(2024, 9, 2, tzinfo=UTC)
    start = datetime(2024, 9, 2, 8, tzinfo=UTC)
    for n in range(devices):
        deviceid = f"dev{n:05d}-2024-09-01-08-00-00"
        when = start + timedelta(minutes=rng.randrange(60 * 24 * 40))
        where = rng.random()
        if where < 0.8:
            tag, folder = rng.choice(list(tags)), rng.choice(["", *folders])  # the tag first, wherever the file
            target = tags[tag]
        elif where < 0.95:
            tag, folder = None, rng.choice(list(folders))
            target = folders[folder]
        else:
            tag, folder, target = "CLG-INCONNU", "", None
        kinds = [*CHASSIS, "Server", "Other", None]
        itemtype, chassis = "Computer", rng.choices(kinds, weights=[30, 10, 25, 10, 5, 10, 3, 3, 2])[0]
        family = rng.choice(["windows"] * 5 + ["linux"] * 2 + ["mac", "none"])
        if rng.random() < 0.05:
            itemtype, chassis, family = "Phone", None, "android"
        families: dict[str, tuple[list, list]] = {
            "windows": (WINDOWS, WINDOWS_BROWSERS),
            "linux": (LINUX, LINUX_BROWSERS),
            "mac": (MAC, MAC_BROWSERS),
            "android": (ANDROID, []),
            "none": ([(None, None)], []),
        }
        oses, browsers = families[family]
        os, os_expected = rng.choice(oses)
        softwares, found = list(rng.sample(NOISE, rng.randrange(len(NOISE) + 1))), set()
        for spellings, name, versions in browsers:
            if rng.random() < 0.85:
                written = rng.choice(list(versions))
                softwares.append((rng.choice(spellings), written))
                found.add((name, versions[written]))
        rng.shuffle(softwares)
        if rng.random() < 0.03:  # inventoried twice: an older file with other browsers, set aside
            old = _device(deviceid, chassis, os, [("Google Chrome", "99.0")], when - timedelta(days=30), tag, itemtype)
            _write(root / folder / f"{deviceid}-ancien.json", old)
            reasons["inventaire-remplace"] += 1
        _write(root / folder / f"{deviceid}.json", _device(deviceid, chassis, os, softwares, when, tag, itemtype))
        kind = "smartphone" if itemtype == "Phone" else CHASSIS.get(chassis or "")
        if kind is None:
            reasons["chassis-non-retenu" if chassis == "Server" else "chassis-inconnu"] += 1
        elif os is None:
            reasons["sans-os"] += 1
        elif target is None:
            reasons["sans-correspondance"] += 1
        else:
            expected[(target, kind, os_expected, frozenset(found))] += 1
            placed[deviceid] = ((target, kind, os_expected, frozenset(found)), tag, folder)
            latest = max(latest, when.replace(microsecond=0))
    for n in range(7):
        (root / f"coupe-{n}.json").write_text('{"deviceid": "x", "content": {"hardware": ')  # cut while copied
        reasons["fichier-illisible"] += 1
    mapping = root.parent / "correspondance.json"
    mapping.write_text(json.dumps({"tag": tags, "dossier": folders}))
    return mapping, expected, reasons, latest, placed


def _write(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


def test_a_generated_inventory_of_thousands_of_devices_gives_the_lots_counted_independently(tmp_path, capsys):
    root = tmp_path / "inventaire"
    mapping, expected, reasons, latest, placed = generate(root, 3000)
    events, summary = dry_run(capsys, str(root), "--correspondance", str(mapping))

    assert quantities(events) == expected
    assert len({(e["data"]["uai"], e["data"]["lot_id"]) for e in events}) == len(events)
    at: dict[str, set[datetime]] = defaultdict(set)  # each établissement's lots at its latest inventory
    for e in events:
        at[e["data"]["uai"]].add(datetime.fromisoformat(e["time"]))
    assert all(len(times) == 1 for times in at.values()) and max(max(t) for t in at.values()) == latest
    for reason, count in reasons.items():
        assert f"{reason} : {count} (" in summary, reason
    assert f"{sum(expected.values())} appareils en {len(expected)} lots" in summary
    assert not any(secret in text for secret in PERSONAL for text in (summary, json.dumps(events)))

    again, _ = dry_run(capsys, str(root), "--correspondance", str(mapping))
    assert [e["id"] for e in again] == [e["id"] for e in events]  # the same files: the same events

    # A newer inventory of one device, now a Debian desktop without a browser: one unit moves
    # from its lot to another; every other lot keeps its lot_id, its établissement's at the newer
    # time, the others' at theirs.
    deviceid, (key, tag, folder) = next((d, p) for d, p in placed.items() if expected[p[0]] > 1)
    newer = latest + timedelta(hours=1)
    _write(root / folder / f"{deviceid}-nouveau.json", _device(deviceid, "Desktop", LINUX[1][0], [], newer, tag))
    expected[key] -= 1
    expected[(key[0], "ordinateur", ("Debian", "12.5"), frozenset())] += 1
    replaced, summary = dry_run(capsys, str(root), "--correspondance", str(mapping))
    assert quantities(replaced) == +expected
    assert f"inventaire-remplace : {reasons['inventaire-remplace'] + 1} (" in summary
    lot_ids = {_key(e["data"]): e["data"]["lot_id"] for e in events}
    assert all(lot_ids.get(_key(e["data"]), e["data"]["lot_id"]) == e["data"]["lot_id"] for e in replaced)
    before = {e["data"]["uai"]: datetime.fromisoformat(e["time"]) for e in events}
    after = {e["data"]["uai"]: datetime.fromisoformat(e["time"]) for e in replaced}
    assert after == before | {key[0]: newer}


def quantities(events: list[dict]) -> Counter:
    got: Counter = Counter()
    for event in events:
        key = _key(event["data"])
        assert key not in got, f"two lots for one group: {key}"
        got[key] = event["data"]["quantity"]
    return got


def _key(lot: dict) -> tuple:
    browsers = frozenset((b["name"], b["version"]) for b in lot["browsers"])
    return (lot["uai"], lot["kind"], (lot["os"]["name"], lot["os"]["version"]), browsers)


def test_a_partial_inventory_never_stands_for_the_device(tmp_path):
    """The format's `partial`: an agent sending some sections only (here its OS and the time).
    Newer than the device's full inventory, it replaced it: the device was set aside (no
    chassis), or counted without its browsers."""
    folder, when = tmp_path / "ecole", datetime(2026, 11, 2, 9, tzinfo=UTC)
    folder.mkdir()
    firefox = [("Mozilla Firefox 128.0.3 (x64 fr)", "128.0.3")]
    _write(folder / "full.json", _device("pc-1", "Laptop", WINDOWS[1][0], firefox, when, tag=None))
    partial = _device("pc-1", None, WINDOWS[1][0], [], when + timedelta(days=1), tag=None)
    partial["partial"] = True
    del partial["content"]["softwares"]
    _write(folder / "partial.json", partial)
    run = inventorier([folder], Correspondance(tag={}, dossier={"ecole": COLLEGE}), DEPARTEMENT)
    assert [(e.data.quantity, e.data.os.name, [b.name for b in e.data.browsers]) for e in run.lots] == [
        (1, "Windows", ["Firefox"])
    ]
    assert run.ecartes == {inv.INVENTAIRE_PARTIEL: ["partial.json"]}


@pytest.mark.parametrize(
    ("name", "lot_os"),
    [("Debian GNU/Linux", "Debian"), ("Fedora Linux", "Fedora"), ("Ubuntu", "Ubuntu"), ("Linux Mint", "Linux Mint")],
)
def test_a_distribution_takes_its_domain_name(name, lot_os):
    assert inv._os({"name": name, "full_name": f"{name} 12 (bookworm)", "version": "12.5"}) == (lot_os, "12.5")


def test_a_virtual_machine_is_set_aside_not_counted_as_a_computer(tmp_path):
    """A Hyper-V or VMware guest reports the chassis its hypervisor makes up ("Desktop"):
    counted, it was one more computer beside the one it runs on."""
    folder = tmp_path / "ecole"
    folder.mkdir()
    when = datetime(2026, 9, 1, tzinfo=UTC)
    for name, vm in (("physical", "Physical"), ("guest", "Hyper-V"), ("container", "Docker"), ("unsaid", None)):
        device = _device(name, "Desktop", WINDOWS[0][0], [], when, tag=None)
        if vm is not None:
            device["content"]["hardware"]["vmsystem"] = vm
        _write(folder / f"{name}.json", device)
    run = inventorier([folder], Correspondance(tag={}, dossier={"ecole": COLLEGE}), DEPARTEMENT)
    assert [e.data.quantity for e in run.lots] == [2], "the physical one and the one that does not say"
    assert run.ecartes == {inv.MACHINE_VIRTUELLE: ["container.json", "guest.json"]}


@pytest.mark.parametrize(
    "full_name, release",
    [("Microsoft Windows Server 2012 R2 Standard", "2012"), ("Microsoft Windows Server 2019 Datacenter", "2019")],
)
def test_windows_server_is_not_windows_of_that_version(full_name, release):
    """Read as Windows 2012, a server met every "Windows >= 10" requirement: compatible."""
    assert inv._os({"name": "Windows", "full_name": full_name, "version": "10.0.17763"}) == ("Windows Server", release)
    assert fold_name("Windows Server") != fold_name("Windows")


def test_a_device_whose_os_a_lot_cannot_carry_is_set_aside_alone(tmp_path):
    """An OS name over the contract's 64 characters stopped the whole run (a ValidationError
    in the lot), with the name in the message: that device alone is set aside now."""
    folder, when = tmp_path / "ecole", datetime(2026, 11, 2, 9, tzinfo=UTC)
    folder.mkdir()
    odd = {"name": "Some Vendor Embedded Linux " + "x" * 60, "full_name": "", "version": "4.2"}
    _write(folder / "odd.json", _device("odd", "Desktop", odd, [], when, tag=None))
    _write(folder / "pc.json", _device("pc", "Desktop", WINDOWS[0][0], [], when, tag=None))
    run = inventorier([folder], Correspondance(tag={}, dossier={"ecole": COLLEGE}), DEPARTEMENT)
    assert [(e.data.quantity, e.data.os.name) for e in run.lots] == [(1, "Windows")]
    assert run.ecartes == {inv.OS_HORS_CONTRAT: ["odd.json"]}


def test_with_a_state_a_lot_gone_from_a_covered_etablissement_is_retired_and_an_absent_one_kept(
    shared_data, tmp_path, capsys
):
    """The collège's laptops moved from Fedora 25 to 31 since the state was written, and the
    lycée is not in this export: the collège's former lot is retired (quantity 0, its kind, the
    run's time), the lycée's lot is not, and the summary counts both."""
    mapping = tmp_path / "correspondance.csv"
    mapping.write_text(f"critere,valeur,uai\ntag,000005,{COLLEGE}\n")
    events, _ = dry_run(capsys, str(shared_data / "glpi"), "--correspondance", str(mapping))
    state = tmp_path / "etat.json"
    former = {COLLEGE: {e["data"]["lot_id"]: e["data"]["kind"] for e in events} | {"glpi-fedora-24": "ordinateur"}}
    lots = former | {LYCEE: {"glpi-android": "smartphone"}}
    state.write_text(json.dumps({"declarant": DEPARTEMENT, "date": "2020-06-01T00:00:00+02:00", "lots": lots}))

    again, summary = dry_run(capsys, str(shared_data / "glpi"), "--correspondance", str(mapping), "--etat", str(state))
    assert again[:2] == events, "the inventory's own lots, as without a state"
    [retired] = again[2:]
    assert retired["data"] == {
        "uai": COLLEGE,
        "lot_id": "glpi-fedora-24",
        "kind": "ordinateur",
        "quantity": 0,
        "os": None,
        "browsers": [],
    }
    assert retired["time"] == events[0]["time"] and retired["source"] == DEPARTEMENT
    c.parse_event(json.dumps(retired).encode())
    assert "lots retirés (disparus de l'inventaire depuis l'état précédent) : 1" in summary
    assert f"établissements de l'état précédent absents de cet inventaire : 1 (lots gardés : {LYCEE})" in summary
    assert "attention" not in summary
    assert json.loads(state.read_text())["lots"] == lots, "a dry run writes no state"

    # A state whose latest date is later than this export's, and which holds no device's date
    # (written before them): nothing tells this export older, its lots are dated as the state,
    # not before it (stale, where its retirements were not).
    state.write_text(json.dumps({"declarant": DEPARTEMENT, "date": "2021-01-01T00:00:00+00:00", "lots": lots}))
    again, summary = dry_run(capsys, str(shared_data / "glpi"), "--correspondance", str(mapping), "--etat", str(state))
    assert {e["time"] for e in again} == {"2021-01-01T00:00:00Z"} and "attention" not in summary


def test_the_state_after_a_run_holds_what_was_accepted_and_what_a_refusal_left(tmp_path):
    folder = tmp_path / "ecole"
    folder.mkdir()
    when = datetime(2026, 9, 1, tzinfo=UTC)
    for n, os in enumerate((WINDOWS[0][0], LINUX[0][0])):
        (folder / f"{n}.json").write_text(json.dumps(_device(f"d{n}", "Laptop", os, [], when, tag=None)))
    held = {COLLEGE: {"glpi-gone": "tablette", "glpi-refused-retirement": "tablette"}, LYCEE: {"glpi-x": "tni"}}
    precedent = Etat(held, when - timedelta(days=1))
    inventaire = inventorier(
        [folder], Correspondance(tag={}, dossier={"ecole": COLLEGE}), DEPARTEMENT, now=when, precedent=precedent
    )
    new, refused_new = inventaire.lots[0], inventaire.lots[1]
    retirements = {e.data.lot_id: e for e in inventaire.lots[2:]}
    assert set(retirements) == {"glpi-gone", "glpi-refused-retirement"}
    refused = {refused_new.id, retirements["glpi-refused-retirement"].id}
    accepted = (new, retirements["glpi-gone"])
    assert etat_apres(precedent, inventaire, refused) == Etat(
        {
            COLLEGE: {new.data.lot_id: "ordinateur portable", "glpi-refused-retirement": "tablette"},
            LYCEE: {"glpi-x": "tni"},
        },
        when,
        {COLLEGE: {e.data.lot_id: [glpi._empreinte(DEPARTEMENT, e.data, e.time), e.id] for e in accepted}},
        {COLLEGE: when},
        inventaire.inventaires,
    )
    assert etat_apres(precedent, inventaire, {e.id for e in inventaire.lots}) == precedent, "all refused"


@pytest.mark.parametrize(
    "content, rule",
    [
        ('{"declarant": "/collectivites/departements/056", "date": null, "lots": {}}', "état d'un autre déclarant"),
        ('{"declarant": "/collectivites/departements/035", "date": null, "lots": []}', "attendu un état"),
        ('{"declarant": "/collectivites/departements/035", "lots": {}}', "attendu un état"),
        ('{"declarant": "/collectivites/departements/035", "date": "hier", "lots": {}}', "état illisible"),
        ("[1, 2", "état illisible"),
        ('{"declarant": "/collectivites/departements/035", "date": "2026-09-01T08:00:00", "lots": {}}', "fuseau"),
    ],
)
def test_a_state_that_is_not_this_declarant_s_is_refused_naming_the_rule(tmp_path, capsys, content, rule):
    state, mapping = tmp_path / "etat.json", tmp_path / "correspondance.csv"
    state.write_text(content)
    mapping.write_text(f"critere,valeur,uai\ntag,000005,{COLLEGE}\n")
    argv = [str(tmp_path), "--correspondance", str(mapping), "--etat", str(state), "--declarant", DEPARTEMENT]
    assert main([*argv, "--dry-run"]) == 2
    assert rule in capsys.readouterr().err


def test_a_retirement_is_dated_no_earlier_than_the_state_and_follows_its_etablissement_s_lots(tmp_path):
    """The device gone was the newest of the previous export: this export's date is older than
    the state's, and lots or retirements at that date would be stale. They are dated as the
    state. And each établissement's retirements come right after its own lots (one batch, one
    group)."""
    before, older = datetime(2026, 9, 10, tzinfo=UTC), datetime(2026, 9, 1, tzinfo=UTC)
    for school in ("a", "b"):
        folder = tmp_path / school
        folder.mkdir()
        device = _device(f"d-{school}", "Laptop", WINDOWS[0][0], [], older, tag=None)
        (folder / "0.json").write_text(json.dumps(device))
    precedent = Etat({COLLEGE: {"glpi-gone": "tablette"}, LYCEE: {"glpi-gone-too": "tni"}}, before)
    inventaire = inventorier(
        [tmp_path / "a", tmp_path / "b"],
        Correspondance(tag={}, dossier={"a": COLLEGE, "b": LYCEE}),
        DEPARTEMENT,
        now=datetime(2026, 9, 20, tzinfo=UTC),
        precedent=precedent,
    )
    assert [(e.data.uai, e.data.quantity, e.time) for e in inventaire.lots] == [
        (COLLEGE, 1, before),
        (COLLEGE, 0, before),
        (LYCEE, 1, before),
        (LYCEE, 0, before),
    ]


def test_a_lot_retired_then_back_is_a_new_event_and_sent_again_unchanged_the_same(tmp_path):
    """Back with the same devices at the same inventory date, the lot's event was the very one
    that first brought it: the same id, which the platform took for a repeat, and the lot
    stayed retired (quantity 0) though the passerelle answered accepted."""
    when = datetime(2026, 9, 1, tzinfo=UTC)
    laptop, tablet = tmp_path / "laptop.json", tmp_path / "tablet.json"
    laptop.write_text(json.dumps(_device("d0", "Laptop", WINDOWS[0][0], [], when, tag=None)))
    tablet.write_text(json.dumps(_device("d1", "Laptop", LINUX[0][0], [], when, tag=None)))
    mapping = Correspondance(tag={}, dossier={tmp_path.name: COLLEGE})

    def run(files: list[Path], precedent: Etat) -> tuple[Inventaire, Etat]:
        made = inventorier(files, mapping, DEPARTEMENT, now=when + timedelta(days=1), precedent=precedent)
        return made, etat_apres(precedent, made, set())  # every event accepted

    first, etat = run([laptop, tablet], Etat())
    second, etat = run([laptop], etat)  # the Linux laptop gone: its lot retired
    [brought] = [e for e in first.lots if e.data.os and e.data.os.name != "Windows"]
    [retired] = [e for e in second.lots if e.data.quantity == 0]
    assert retired.data.lot_id == brought.data.lot_id
    third, etat = run([laptop, tablet], etat)  # back, as it was
    [back] = [e for e in third.lots if e.data.lot_id == brought.data.lot_id]
    assert back.data == brought.data and back.time == brought.time
    assert back.id != brought.id, "not the event that first brought it"
    assert brought.data.lot_id in etat.lots[COLLEGE]
    again, _ = run([laptop, tablet], etat)  # the same files once more: nothing new
    assert [e.id for e in again.lots] == [e.id for e in third.lots]
    [kept] = [e for e in first.lots if e.data.lot_id != brought.data.lot_id]
    assert kept.id in {e.id for e in again.lots}, "the lot that never changed: its first event all along"


def test_a_lot_back_to_an_earlier_quantity_at_the_same_time_is_a_new_event(tmp_path):
    """Three laptops, then two (one file missing from the export), then three again, with no
    newer inventory date: the third run's event was the first's (same declarant, data and
    time: the same id), which the platform took for a repeat, and the lot stayed at two."""
    when = datetime(2026, 9, 1, tzinfo=UTC)
    files = []
    for n in range(3):
        files.append(tmp_path / f"{n}.json")
        files[-1].write_text(json.dumps(_device(f"d{n}", "Laptop", WINDOWS[0][0], [], when, tag=None)))
    mapping = Correspondance(tag={}, dossier={tmp_path.name: COLLEGE})

    def run(paths: list[Path], precedent: Etat, answer: str = "accepted") -> tuple[c.CloudEvent, Etat]:
        made = inventorier(paths, mapping, DEPARTEMENT, now=when + timedelta(days=1), precedent=precedent)
        [lot] = made.lots
        refused = {"accepted": set(), "refused": {lot.id}, "interrupted": None}[answer]
        return lot, etat_apres(precedent, made, refused)

    three, etat = run(files, Etat())
    two, etat = run(files[:2], etat)
    again, etat = run(files, etat)
    assert (three.data.quantity, two.data.quantity, again.data.quantity) == (3, 2, 3)
    assert three.time == two.time == again.time
    assert len({three.id, two.id, again.id}) == 3, "each change a new event"
    same, etat = run(files, etat)
    assert same.id == again.id, "the same files sent again: the same event, a repeat"
    refused, after_refusal = run(files[:2], etat, "refused")
    assert refused.id != two.id and after_refusal == etat, "refused: the platform holds what it held"
    assert run(files[:2], after_refusal)[0].id == refused.id, "sent again as it was"
    interrupted, kept = run(files[:2], etat, "interrupted")
    assert kept.envois[COLLEGE][interrupted.data.lot_id][1] == interrupted.id
    assert run(files[:2], kept)[0].id == interrupted.id, "taken or not, sent again as it was"


def test_a_state_written_before_envois_is_read_and_its_lots_sent_as_new_events(tmp_path):
    """A state of the former version (`retires`, no `envois`) is still a state: read, its lots
    kept, and each lot's next event a new one (no former event's id taken again)."""
    state = tmp_path / "etat.json"
    state.write_text(
        json.dumps(
            {
                "declarant": DEPARTEMENT,
                "date": "2026-09-01T00:00:00+00:00",
                "lots": {COLLEGE: {"glpi-a": "tablette"}},
                "retires": {COLLEGE: {"glpi-b": "2026-08-01T00:00:00+00:00"}},
            }
        )
    )
    etat = glpi.lire_etat(state, DEPARTEMENT)
    assert etat == Etat({COLLEGE: {"glpi-a": "tablette"}}, datetime(2026, 9, 1, tzinfo=UTC), {})


def test_an_interrupted_run_keeps_every_lot_it_sent_and_removes_none(tmp_path):
    folder = tmp_path / "ecole"
    folder.mkdir()
    when = datetime(2026, 9, 1, tzinfo=UTC)
    (folder / "0.json").write_text(json.dumps(_device("d0", "Laptop", WINDOWS[0][0], [], when, tag=None)))
    precedent = Etat({COLLEGE: {"glpi-gone": "tablette"}}, when - timedelta(days=1))
    inventaire = inventorier(
        [folder], Correspondance(tag={}, dossier={"ecole": COLLEGE}), DEPARTEMENT, now=when, precedent=precedent
    )
    [new, retirement] = inventaire.lots
    assert etat_apres(precedent, inventaire, None) == Etat(
        {COLLEGE: {"glpi-gone": "tablette", new.data.lot_id: "ordinateur portable"}},
        when,
        {COLLEGE: {e.data.lot_id: [glpi._empreinte(DEPARTEMENT, e.data, e.time), e.id] for e in (new, retirement)}},
        {COLLEGE: when},
        inventaire.inventaires,
    )


def test_a_state_that_cannot_be_written_is_found_out_before_anything_is_sent(tmp_path, capsys):
    mapping = tmp_path / "correspondance.csv"
    mapping.write_text(f"critere,valeur,uai\ntag,000005,{COLLEGE}\n")
    state = tmp_path / "absent" / "etat.json"  # its folder does not exist
    argv = [str(tmp_path), "--correspondance", str(mapping), "--etat", str(state), "--declarant", DEPARTEMENT]
    # the passerelle's URL is not listening: reaching it would be another error (envoi interrompu)
    assert main([*argv, "--token", "t", "--passerelle", "http://127.0.0.1:9"]) == 2
    assert "ne peut pas être écrit" in capsys.readouterr().err


def test_a_state_another_run_holds_sends_nothing(tmp_path, capsys):
    """Two runs on one state would each write theirs from the same former one, and the lots one
    of them sent be forgotten: the second is refused while the first holds the state's lock."""
    mapping, state = tmp_path / "correspondance.csv", tmp_path / "etat.json"
    mapping.write_text(f"critere,valeur,uai\ntag,000005,{COLLEGE}\n")
    argv = [str(tmp_path), "--correspondance", str(mapping), "--etat", str(state), "--declarant", DEPARTEMENT]
    with open(tmp_path / "etat.json.verrou", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert main([*argv, "--token", "t", "--passerelle", "http://127.0.0.1:9"]) == 2
        assert "pris par une autre exécution" in capsys.readouterr().err
        assert not state.exists(), "nothing read, nothing written"
    # the lock released, the run goes on: to find no inventory here
    assert main([*argv, "--token", "t", "--passerelle", "http://127.0.0.1:9"]) == 2
    assert "aucun fichier d'inventaire" in capsys.readouterr().err


def test_the_state_is_on_the_disk_before_it_replaces_the_former_and_the_rename_after(tmp_path, monkeypatch):
    """fsync of the new file before the rename, of its directory after: a machine stopping
    right after a run keeps this run's state, never an empty file or the former one."""
    import os

    from deploy.partenaires import glpi

    path = tmp_path / "etat.json"
    path.write_text("former")
    steps: list[str] = []
    real_fsync, real_replace = os.fsync, Path.replace

    def fsync(fd: int) -> None:
        opened = f"/proc/self/fd/{fd}"
        steps.append("fsync dir" if os.path.isdir(opened) else f"fsync {os.readlink(opened)}")
        real_fsync(fd)

    def replace(self: Path, target: Path) -> Path:
        steps.append(f"rename {self} -> {target}")
        return real_replace(self, target)

    monkeypatch.setattr(glpi.os, "fsync", fsync)
    monkeypatch.setattr(Path, "replace", replace)
    when = datetime(2026, 9, 1, tzinfo=UTC)
    glpi.ecrire_etat(path, DEPARTEMENT, Etat({COLLEGE: {"glpi-1": "tablette"}}, when))
    new = f"{path}.nouveau"
    assert steps == [f"fsync {new}", f"rename {new} -> {path}", "fsync dir"]
    assert json.loads(path.read_text())["lots"] == {COLLEGE: {"glpi-1": "tablette"}}


@pytest.mark.parametrize(
    "stop",
    [KeyboardInterrupt(), ValueError("réponse illisible"), SystemExit(137)],
    ids=["ctrl-c", "unexpected", "killed"],
)
def test_whatever_interrupts_the_sending_the_state_keeps_every_lot_of_the_run(tmp_path, capsys, monkeypatch, stop):
    """Some batches may be accepted when Ctrl-C or an answer not understood stops the run: the
    state holds every lot of the run (a lot the platform took and the state forgot could never
    be retired), exit 2 and one line, no traceback. Killed while it sends (SIGKILL, the machine
    stopping: nothing after runs), the run left the former state (audit s64 GLPI #3): the state
    written before sending is already that of an interrupted run."""
    from deploy.partenaires import glpi

    folder = tmp_path / "ecole"
    folder.mkdir()
    when = datetime(2026, 9, 1, tzinfo=UTC)
    (folder / "0.json").write_text(json.dumps(_device("d0", "Laptop", WINDOWS[0][0], [], when, tag="000005")))
    mapping, state = tmp_path / "correspondance.csv", tmp_path / "etat.json"
    mapping.write_text(f"critere,valeur,uai\ntag,000005,{COLLEGE}\n")

    held_while_sending = []

    async def interrupted(*_args):
        held_while_sending.append(json.loads(state.read_text()))
        raise stop

    monkeypatch.setattr(glpi, "publier", interrupted)
    argv = [str(folder), "--correspondance", str(mapping), "--etat", str(state), "--declarant", DEPARTEMENT]
    if isinstance(stop, SystemExit):
        with pytest.raises(SystemExit):
            main([*argv, "--token", "t", "--passerelle", "http://127.0.0.1:9"])
    else:
        assert main([*argv, "--token", "t", "--passerelle", "http://127.0.0.1:9"]) == 2
        assert "envoi interrompu" in capsys.readouterr().err
    [held] = held_while_sending
    assert list(held["lots"]) == [COLLEGE] == list(json.loads(state.read_text())["lots"])


def test_a_passerelle_in_clear_beyond_this_machine_is_refused_before_anything_is_sent(tmp_path, capsys):
    """The bearer token would cross the network in clear: https, or http on this machine only."""
    mapping = tmp_path / "correspondance.csv"
    mapping.write_text(f"critere,valeur,uai\ntag,000005,{COLLEGE}\n")
    argv = [str(tmp_path), "--correspondance", str(mapping), "--declarant", DEPARTEMENT, "--token", "t"]
    argv += ["--etat", str(tmp_path / "etat.json")]
    assert main([*argv, "--passerelle", "http://passerelle.example.fr"]) == 2
    assert "le jeton irait en clair" in capsys.readouterr().err
    assert main([*argv, "--passerelle", "http://127.0.0.1:9"]) == 2, "on this machine: past that check"
    assert "aucun fichier d'inventaire" in capsys.readouterr().err


def test_nothing_is_sent_without_a_state(shared_data, tmp_path, capsys):
    """Without one, a lot whose devices all moved to another (a browser updated on them) stayed
    counted beside it, never retired: every run added the fleet's updated devices."""
    mapping = tmp_path / "correspondance.csv"
    mapping.write_text(f"critere,valeur,uai\ntag,000005,{COLLEGE}\n")
    argv = [str(shared_data / "glpi"), "--correspondance", str(mapping), "--declarant", DEPARTEMENT, "--token", "t"]
    assert main([*argv, "--passerelle", "http://127.0.0.1:9"]) == 2
    assert "--etat FICHIER est requis pour envoyer" in capsys.readouterr().err
    assert main([*argv, "--dry-run"]) == 0, "a dry run sends nothing: no state needed"


def test_one_machine_is_one_device_whatever_its_deviceid_and_clones_are_each_one(tmp_path):
    """glpi-agent's standalone glpi-inventory makes a new deviceid at each run: one machine's two
    exports counted two devices. Cloned disk images share the agent's deviceid: three machines
    counted one. The hardware says which machine a file is (its UUID, else its serial)."""
    when = datetime(2026, 9, 1, tzinfo=UTC)

    def write(name: str, deviceid: str, uuid: str, ssn: str, minutes: int) -> None:
        device = _device(deviceid, "Laptop", WINDOWS[0][0], [], when + timedelta(minutes=minutes), tag=None)
        device["content"]["hardware"]["uuid"] = uuid
        device["content"]["bios"]["ssn"] = ssn
        (tmp_path / name).write_text(json.dumps(device))

    write("run-1.json", "pc-2026-09-01-08-00-00", "4c4c4544-0042-3510-8052-b4c04f4d3232", "5CG1234XYZ", 0)
    write("run-2.json", "pc-2026-09-02-08-00-00", "4C4C4544-0042-3510-8052-B4C04F4D3232", "5CG1234XYZ", 60)
    for n in range(3):  # one image, three machines
        write(f"clone-{n}.json", "image-salle-info", f"4c4c4544-0042-3510-8052-00000000000{n}", f"5CG00{n}", n)
    write("no-uuid.json", "pc-b", "00000000-0000-0000-0000-000000000000", "To be filled by O.E.M.", 0)
    made = inventorier([tmp_path], Correspondance(tag={}, dossier={tmp_path.name: COLLEGE}), DEPARTEMENT)
    [lot] = made.lots
    assert lot.data.quantity == 5, "the machine of two runs once, each clone, the one without identifiers"
    assert made.ecartes == {glpi.INVENTAIRE_REMPLACE: ["run-1.json"]}


def test_the_folder_is_read_however_the_path_was_given_and_progress_is_told(tmp_path, monkeypatch):
    """`.` or a file's name from inside the folder: its name was empty, every device
    `sans-correspondance`, the établissement not covered, nothing retired. And a long read says
    how far it has gone."""
    folder = tmp_path / "lycee-descartes"
    folder.mkdir()
    when = datetime(2026, 9, 1, tzinfo=UTC)
    for n in range(5):
        (folder / f"{n}.json").write_text(json.dumps(_device(f"d{n}", "Laptop", WINDOWS[0][0], [], when, tag=None)))
    mapping = Correspondance(tag={}, dossier={"lycee-descartes": LYCEE})
    monkeypatch.chdir(folder)
    monkeypatch.setattr(glpi, "PROGRESS_FILES", 2)
    told: list[str] = []
    for given in ([Path(".")], [Path("0.json"), Path("1.json"), Path("2.json"), Path("3.json"), Path("4.json")]):
        made = inventorier(given, mapping, DEPARTEMENT, progres=told.append)
        assert [(e.data.uai, e.data.quantity) for e in made.lots] == [(LYCEE, 5)] and not made.ecartes, given
    assert told == ["2/5 fichiers lus", "4/5 fichiers lus"] * 2


def test_the_summary_names_each_refused_lot_by_its_etablissement_and_lot(tmp_path):
    """One count and the first message per code was all: which lots, which établissements,
    the operator could not tell."""
    when = datetime(2026, 9, 1, tzinfo=UTC)
    for n, school in enumerate(("a", "b")):
        (tmp_path / school).mkdir()
        device = _device(f"d{n}", "Laptop", WINDOWS[0][0], [], when, tag=None)
        (tmp_path / school / "0.json").write_text(json.dumps(device))
    made = inventorier(
        [tmp_path / "a", tmp_path / "b"], Correspondance(tag={}, dossier={"a": COLLEGE, "b": LYCEE}), DEPARTEMENT
    )
    _, lycee = made.lots
    refused = [(DEPARTEMENT, lycee.id, "hors-competence", "un lycée relève de la région")]
    summary = glpi.bilan(glpi.Sent(accepted=1, refused=refused), made)
    assert summary.splitlines() == [
        "passerelle : 1 lots acceptés, 1 refusés",
        "  refusés, hors-competence : 1",
        f"    {LYCEE} {lycee.data.lot_id} (ordinateur portable) : un lycée relève de la région",
    ]


def test_the_same_undated_files_sent_again_are_the_same_events(tmp_path):
    """No device with an inventory date: each run's lots were dated now, new events each time
    (the README said the same files sent again are the same events). The state's latest time
    dates them after a first run."""
    device = _device("d0", "Laptop", WINDOWS[0][0], [], datetime(2026, 9, 1, tzinfo=UTC), tag=None)
    del device["content"]["accesslog"]
    (tmp_path / "0.json").write_text(json.dumps(device))
    mapping = Correspondance(tag={}, dossier={tmp_path.name: COLLEGE})
    first = inventorier([tmp_path], mapping, DEPARTEMENT, now=datetime(2026, 9, 2, tzinfo=UTC))
    etat = etat_apres(Etat(), first, set())
    again = inventorier([tmp_path], mapping, DEPARTEMENT, now=datetime(2026, 9, 3, tzinfo=UTC), precedent=etat)
    assert [e.id for e in again.lots] == [e.id for e in first.lots]
    assert again.lots[0].time == datetime(2026, 9, 2, tzinfo=UTC)


def test_a_patch_release_declares_the_lots_again_and_leaves_none_behind(tmp_path):
    """Four laptops move from Firefox 128 to 129 (half, then all), then half of them to 130: the
    lots of their kind and OS keep their lot_ids, declared anew, the one a variant fewer leaves
    retired and brought back with the next. A lot_id per version set made a new lot at each
    patch and retired the former, which the platform keeps for good: a hundred retired lots an
    établissement a year at a patch a month."""
    mapping = Correspondance(tag={}, dossier={tmp_path.name: COLLEGE})
    start, etat, seen = datetime(2026, 9, 1, tzinfo=UTC), Etat(), set()

    def run(day: int, firefox: list[str]) -> dict[str, tuple[int, str | None]]:
        nonlocal etat
        when = start + timedelta(days=day)
        for n, version in enumerate(firefox):
            softwares = [(f"Mozilla Firefox {version} (x64 fr)", version)]
            device = _device(f"d{n}", "Laptop", WINDOWS[1][0], softwares, when, tag=None)
            (tmp_path / f"d{n}.json").write_text(json.dumps(device))
        made = inventorier([tmp_path], mapping, DEPARTEMENT, now=when + timedelta(hours=1), precedent=etat)
        etat = etat_apres(etat, made, set())  # every event accepted
        seen.update(e.data.lot_id for e in made.lots)
        return {
            e.data.lot_id: (e.data.quantity, e.data.browsers[0].version if e.data.browsers else None) for e in made.lots
        }

    [first] = run(0, ["128.0.3"] * 4)
    assert run(0, ["128.0.3"] * 4) == {first: (4, "128.0.3")}
    rolling = run(1, ["128.0.3", "129.0", "128.0.3", "129.0"])
    assert rolling.pop(first) == (2, "128.0.3")
    [(second, declared)] = rolling.items()
    assert declared == (2, "129.0")
    assert run(2, ["129.0"] * 4) == {first: (4, "129.0"), second: (0, None)}  # one variant fewer
    assert run(3, ["129.0", "130.0", "129.0", "130.0"]) == {first: (2, "129.0"), second: (2, "130.0")}
    assert seen == {first, second}


def test_an_os_upgrade_declares_its_lot_again_rather_than_retiring_it(tmp_path):
    mapping = Correspondance(tag={}, dossier={tmp_path.name: COLLEGE})
    when = datetime(2026, 9, 1, tzinfo=UTC)
    before, after = WINDOWS  # Windows 10, then 11
    (tmp_path / "d.json").write_text(json.dumps(_device("d", "Laptop", before[0], [], when, tag=None)))
    first = inventorier([tmp_path], mapping, DEPARTEMENT, now=when + timedelta(hours=1))
    later = when + timedelta(days=30)
    (tmp_path / "d.json").write_text(json.dumps(_device("d", "Laptop", after[0], [], later, tag=None)))
    etat = etat_apres(Etat(), first, set())
    second = inventorier([tmp_path], mapping, DEPARTEMENT, now=later + timedelta(hours=1), precedent=etat)

    [brought], [upgraded] = first.lots, second.lots
    assert upgraded.data.lot_id == brought.data.lot_id and second.retires == 0
    assert (upgraded.data.os.version, upgraded.data.quantity) == ("11", 1)


def test_the_next_export_without_the_newest_device_is_applied_not_stale(shared_data, tmp_path):
    """The real samples, then the next export: the XPS (computer_1, the newest inventory) gone,
    LF014 inventoried again (computer_3_updated: Firefox 51 → 53). The run's one date, the
    newest device's anywhere, fell before the state's: LF014's new lot went out older than the
    one the platform held (stale, ignored) and the XPS's retirement, dated as the state, was
    applied: the platform kept Firefox 51 (audit s64 GLPI #1). Now dated no earlier than the
    établissement's last."""
    samples = shared_data / "glpi"
    mapping = Correspondance(tag={}, dossier={"glpi": COLLEGE})
    now = datetime(2026, 12, 1, tzinfo=UTC)

    def run(names: list[str], precedent: Etat) -> tuple[Inventaire, Etat]:
        made = inventorier([samples / n for n in names], mapping, DEPARTEMENT, now=now, precedent=precedent)
        return made, etat_apres(precedent, made, set())

    first, etat = run(["computer_1.json", "computer_3.json", "phone_1.json"], Etat())
    second, _ = run(["computer_3_updated.json", "phone_1.json"], etat)
    [fedora] = [e for e in second.lots if e.data.quantity and e.data.os and e.data.os.version == "25"]
    assert {b.name: b.version for b in fedora.data.browsers} == {"Chromium": "58.0.3029.110", "Firefox": "53.0.3"}
    sent = max(e.time for e in first.lots)
    assert {e.time for e in second.lots} == {sent}, "its lots and the XPS's retirement, at the time last sent"
    assert [e.data.quantity for e in second.lots if e.data.os and e.data.os.version == "31"] == []
    assert not second.plus_anciens


def test_an_export_older_than_the_one_sent_sends_nothing_for_its_etablissement(tmp_path):
    """An older export run again (a device inventoried before the date already sent): its lots
    went out stale and its retirements applied, the platform left with a mix of both exports.
    Now nothing is sent for that établissement, and the summary names it; the other one, whose
    own export is newer (a partial export the day before covered it alone), is sent, at its own
    date, not the other's."""
    t1, t2, t3 = (datetime(2026, 9, d, tzinfo=UTC) for d in (1, 5, 10))
    mapping = Correspondance(tag={}, dossier={"a": COLLEGE, "b": LYCEE})

    def files(*devices: tuple[str, str, datetime]) -> list[Path]:
        for folder, deviceid, when in devices:
            _write(tmp_path / folder / f"{deviceid}.json", _device(deviceid, "Laptop", WINDOWS[0][0], [], when, None))
        return [tmp_path / folder / f"{deviceid}.json" for folder, deviceid, _ in devices]

    first = inventorier(files(("a", "pc-a", t3), ("b", "pc-b", t1)), mapping, DEPARTEMENT, now=t3)
    etat = etat_apres(Etat(), first, set())
    second = inventorier(
        files(("a", "pc-a", t2), ("a", "pc-a2", t2), ("b", "pc-b", t2)), mapping, DEPARTEMENT, now=t3, precedent=etat
    )
    assert [(e.data.uai, e.data.quantity, e.time) for e in second.lots] == [(LYCEE, 1, t2)]
    assert second.plus_anciens == [f"{COLLEGE} (pc-a.json)"], "named with the file that went back"
    assert "export plus ancien que celui déjà envoyé pour 1 établissements" in second.resume()
    assert etat_apres(etat, second, set()).inventaires[COLLEGE] == etat.inventaires[COLLEGE], "kept as sent"

    # One device's date gone back (its clock battery dead) while another was inventoried since:
    # its clock, not the export (review s64 M1: the établissement was withheld at every run).
    third = inventorier(
        files(("a", "pc-a", datetime(2000, 1, 1, tzinfo=UTC)), ("a", "pc-a3", t3 + timedelta(days=1))),
        mapping,
        DEPARTEMENT,
        now=t3 + timedelta(days=2),
        precedent=etat_apres(etat, second, set()),
    )
    assert {(e.data.uai, e.time) for e in third.lots} == {(COLLEGE, t3 + timedelta(days=1))}
    assert not third.plus_anciens


def test_files_that_stopped_the_whole_run_are_set_aside_alone(tmp_path, capsys):
    """Arrays nested 200,000 deep (RecursionError: a traceback, exit 1, no établissement sent)
    and a lone surrogate in a deviceid (the key's encoding failed: exit 2, no file named) stopped
    every other file's lots (audit s64 GLPI #4, #5). `.JSON` is read too."""
    folder = tmp_path / "ecole"
    folder.mkdir()
    when = datetime(2026, 9, 1, tzinfo=UTC)
    (folder / "deep.json").write_text('{"deviceid": "x", "content": ' + "[" * 200_000 + "]" * 200_000 + "}")
    odd = json.dumps(_device("pc-\udc80-2024", "Laptop", WINDOWS[0][0], [], when, tag=None))
    (folder / "odd.json").write_text(odd)  # json.dumps writes it escaped, as JSON allows
    (folder / "PC.JSON").write_text(json.dumps(_device("pc", "Laptop", WINDOWS[0][0], [], when, tag=None)))
    mapping = tmp_path / "correspondance.csv"
    mapping.write_text(f"critere,valeur,uai\ndossier,ecole,{COLLEGE}\n")
    events, summary = dry_run(capsys, str(folder), "--correspondance", str(mapping))
    assert [e["data"]["quantity"] for e in events] == [2]
    assert "fichier-illisible : 1 (deep.json)" in summary


def test_no_inventory_file_is_not_a_success(tmp_path, capsys):
    """A folder of XML exports, or the wrong folder: 0 files read, exit 0, each night (#8)."""
    (tmp_path / "pc.xml").write_text("<REQUEST/>")
    mapping = tmp_path / "correspondance.csv"
    mapping.write_text(f"critere,valeur,uai\ntag,000005,{COLLEGE}\n")
    argv = [str(tmp_path), "--correspondance", str(mapping), "--declarant", DEPARTEMENT, "--dry-run"]
    assert main(argv) == 2
    assert "aucun fichier d'inventaire (.json)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "content", "said"),
    [
        ("correspondance.csv", "critere,valeur,uai\ndossier,coll\xe8ge,0350001L\n".encode("cp1252"), "pas de l'UTF-8"),
        ("correspondance.json", b'{"tag": {"A": "0350001L", "A": "0350002M"}}', "clé « A » répétée"),
        ("correspondance.json", b'{"tag": {"A": }', "correspondance.json: Expecting value"),
    ],
)
def test_a_mapping_that_cannot_be_read_is_named_with_its_rule(tmp_path, capsys, name, content, said):
    """The error did not name the file, and a JSON mapping's key given twice kept the last (#9)."""
    mapping = tmp_path / name
    mapping.write_bytes(content)
    assert main([str(tmp_path), "--correspondance", str(mapping), "--declarant", DEPARTEMENT, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert said in err and str(mapping) in err, err


def test_an_etablissement_new_to_the_state_is_sent_at_its_own_date(tmp_path):
    """A state with per-établissement dates: an établissement it never sent took its latest time
    over all, another school's (review s64 L4); a state from before them still floors those it
    sent at its one date."""
    early, late = datetime(2026, 11, 5, tzinfo=UTC), datetime(2026, 11, 20, tzinfo=UTC)
    _write(tmp_path / "b" / "pc.json", _device("pc-b", "Laptop", WINDOWS[0][0], [], early, None))
    mapping = Correspondance(tag={}, dossier={"b": LYCEE})
    new_format = Etat({COLLEGE: {"glpi-x": "tablette"}}, late, {}, {COLLEGE: late})
    [lot] = inventorier([tmp_path / "b"], mapping, DEPARTEMENT, now=late, precedent=new_format).lots
    assert lot.time == early
    former = Etat({LYCEE: {"glpi-x": "tablette"}}, late)  # (its lot retired at that date too)
    assert {e.time for e in inventorier([tmp_path / "b"], mapping, DEPARTEMENT, now=late, precedent=former).lots} == {
        late
    }


def _one_school(tmp_path: Path) -> list[str]:
    """A folder of one device mapped to COLLEGE: the arguments of a run that sends it."""
    folder = tmp_path / "ecole"
    folder.mkdir()
    when = datetime(2026, 9, 1, tzinfo=UTC)
    (folder / "0.json").write_text(json.dumps(_device("d0", "Laptop", WINDOWS[0][0], [], when, tag="000005")))
    mapping = tmp_path / "correspondance.csv"
    mapping.write_text(f"critere,valeur,uai\ntag,000005,{COLLEGE}\n")
    state = tmp_path / "etat.json"
    return [str(folder), "--correspondance", str(mapping), "--etat", str(state), "--declarant", DEPARTEMENT]


def _jwt(**claims) -> str:
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(claims)}.signature"


def _files_unread(monkeypatch) -> None:
    def inventorier(*_args, **_kw):
        raise AssertionError("the files read before the tokens were checked")

    monkeypatch.setattr(glpi, "inventorier", inventorier)


def test_an_expired_token_is_refused_before_the_files_are_read_and_a_short_lived_one_said(
    tmp_path, capsys, monkeypatch
):
    """A région's files take minutes to read: the run then failed at its first batch (401)."""
    argv = [*_one_school(tmp_path), "--passerelle", "http://127.0.0.1:9"]
    with monkeypatch.context() as unread:
        _files_unread(unread)
        assert main([*argv, "--token", _jwt(exp=int(time.time()) - 30)]) == 2
    assert "le jeton donné a expiré il y a" in capsys.readouterr().err

    monkeypatch.setattr(glpi, "publier", _accepting_all)
    assert main([*argv, "--token", _jwt(exp=int(time.time()) + 120)]) == 0
    assert "le jeton donné expire dans" in capsys.readouterr().err
    assert main([*argv, "--token", _jwt(exp=int(time.time()) + 3600)]) == 0
    assert "expire" not in capsys.readouterr().err


async def _accepting_all(inventaire, _passerelle, _jetons):
    from deploy.local.partenaires import Sent

    return Sent(accepted=len(inventaire.lots))


def test_a_client_s_tokens_are_asked_of_its_provider_and_one_refused_is_replaced(tmp_path, capsys, monkeypatch):
    """--client-id: the run asks the provider (client-credentials) for its tokens, the first before
    the files are read, another when the passerelle refuses one (expired during the run)."""
    from deploy.local import partenaires

    tokens, posted = iter(["a", "b"]), []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "idp.example.fr":
            return httpx.Response(200, json={"access_token": next(tokens), "expires_in": 300})
        posted.append(request.headers["authorization"])
        if len(posted) == 1:
            return httpx.Response(401, text="jeton expiré")
        count = len(json.loads(request.content))
        return httpx.Response(202, json={"resultats": [{"index": i, "statut": "accepted"} for i in range(count)]})

    real = httpx.AsyncClient
    monkeypatch.setattr(
        partenaires.httpx, "AsyncClient", lambda **kw: real(transport=httpx.MockTransport(answer), **kw)
    )
    monkeypatch.setenv(glpi.SECRET_VARIABLE, "s3cret")
    argv = [*_one_school(tmp_path), "--passerelle", "http://127.0.0.1:9", "--client-id", "glpi-035"]
    assert main([*argv, "--token-url", "https://idp.example.fr/token"]) == 0, capsys.readouterr().err
    assert posted == ["Bearer a", "Bearer b"]

    assert main([*argv, "--token-url", "http://idp.example.fr/token"]) == 2
    assert "le secret irait en clair" in capsys.readouterr().err
    # A client the environment names, left from another run, never overrides a token given.
    monkeypatch.setenv(glpi.CLIENT_VARIABLE, "glpi-035")
    monkeypatch.setattr(glpi, "publier", _accepting_all)
    without_client = [a for a in argv if a not in ("--client-id", "glpi-035")]
    assert main([*without_client, "--token", _jwt(exp=int(time.time()) + 3600)]) == 0, capsys.readouterr().err
    monkeypatch.delenv(glpi.CLIENT_VARIABLE)
    monkeypatch.delenv(glpi.SECRET_VARIABLE)
    assert main([*argv, "--token-url", "https://idp.example.fr/token"]) == 2
    assert f"sans ${glpi.SECRET_VARIABLE}" in capsys.readouterr().err


def test_a_client_its_provider_refuses_is_said_before_the_files_are_read(tmp_path, capsys, monkeypatch):
    from deploy.local import partenaires

    def refusing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "unauthorized_client", "error_description": "Invalid client secret"})

    real = httpx.AsyncClient
    monkeypatch.setattr(
        partenaires.httpx, "AsyncClient", lambda **kw: real(transport=httpx.MockTransport(refusing), **kw)
    )
    monkeypatch.setenv(glpi.SECRET_VARIABLE, "s3cret")
    _files_unread(monkeypatch)
    argv = [*_one_school(tmp_path), "--passerelle", "http://127.0.0.1:9", "--client-id", "glpi-035"]
    assert main([*argv, "--token-url", "https://idp.example.fr/token"]) == 2
    err = capsys.readouterr().err
    assert "a refusé le client glpi-035" in err and "Invalid client secret" in err and "s3cret" not in err
