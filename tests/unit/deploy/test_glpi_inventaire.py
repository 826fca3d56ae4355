"""One GLPI inventory file read as one device (deploy/partenaires/_inventaire.py): the OS
release the rules compare, the versions read in ASCII digits only, and the key under which two
files are one device."""

import json
from pathlib import Path

import pytest

import contracts as c
from contracts import RessourcePubliee
from contracts.internal import LotProfil, ProfilEquipement
from deploy.partenaires import _inventaire as inv
from deploy.partenaires.glpi import Correspondance, inventorier
from services.ressources.rules import evaluate

DEPARTEMENT = "/collectivites/departements/035"
COLLEGE = "0350001" + c.uai_check_letter("0350001")


def _document(deviceid="pc-2026-09-01-08-00-00", os=None, softwares=(), uuid=None, ssn=None, **more) -> dict:
    hardware = {"name": "PC-12", "chassis_type": "Laptop"} | ({"uuid": uuid} if uuid is not None else {})
    content = {
        "hardware": hardware,
        "bios": {"ssn": ssn} if ssn is not None else {},
        "operatingsystem": os or {"name": "Windows", "full_name": "Microsoft Windows 11 Éducation", "version": "23H2"},
        "softwares": [{"name": n, "version": v} for n, v in softwares],
        "accesslog": {"logdate": "2026-09-01 08:00:00"},
    }
    return {"deviceid": deviceid, "itemtype": "Computer", "content": content} | more


def _read(tmp_path: Path, document: dict, name: str = "pc.json") -> inv.Appareil | inv.Ecarte:
    path = tmp_path / name
    path.write_text(json.dumps(document, ensure_ascii=False))
    return inv.lire(path)


def _meets(os: tuple[str, str], name: str, min_version: str) -> bool:
    """Whether a lot of this OS meets the requirement `name >= min_version`, as the rules judge it."""
    lot = LotProfil(lot_id="L", kind="ordinateur", quantity=1, os={"name": os[0], "version": os[1]}, browsers=[])
    ressource = RessourcePubliee.model_validate(
        {
            "resource_id": "ark:/67375/r",
            "title": "Une ressource",
            "editor": "Éditeur",
            "requirements": [[{"type": "os", "name": name, "min_version": min_version}]],
            "tools": [],
            "training": {"competences": [], "tools": []},
        }
    )
    return evaluate(ressource, ProfilEquipement(uai=COLLEGE, lots=[lot])).compatible == 1


# --- Android: the release, never the API level nor "N/A" -------------------------------------

# As glpi-project/android-inventory-library's OperatingSystem.java writes them: name = codename
# + " Android " + release from its table (up to API 33, else "N/A"), full_name = name + " api "
# + API level, version = API level.
ANDROID_LIBRARY = [
    ({"name": "Q Android 10.0", "full_name": "Q Android 10.0 api 29", "version": "29"}, ("Android", "10.0")),
    (
        {"name": "Tiramisu Android 13.0", "full_name": "Tiramisu Android 13.0 api 33", "version": "33"},
        ("Android", "13.0"),
    ),
    (
        {"name": "Snow Cone Android 12L", "full_name": "Snow Cone Android 12L api 32", "version": "32"},
        ("Android", "12.1"),
    ),
    ({"name": "N/A", "full_name": "N/A api 34", "version": "34"}, ("Android", "14")),
    ({"name": "N/A", "full_name": "N/A api 35", "version": "35"}, ("Android", "15")),
    ({"name": "N/A", "full_name": "N/A api 36", "version": "36"}, ("Android", "16")),
    ({"name": "N/A", "full_name": "N/A api 34"}, ("Android", "14")),  # no version field: the "api NN" text
]


@pytest.mark.parametrize(
    "section, expected", ANDROID_LIBRARY, ids=lambda v: v.get("full_name") if isinstance(v, dict) else None
)
def test_android_is_read_as_its_release_beyond_the_library_s_table_and_for_12l(section, expected):
    """Beyond API 33 the library names the OS "N/A": read as OS ("N/A", "34"), an Android 14
    phone met no "Android >= 11" requirement. 12L's name, "Snow Cone Android 12L", gave no
    release: its API level, 32, was read as Android 32."""
    assert inv._os(section) == expected


def test_an_android_14_phone_meets_android_11_and_android_12l_does_not_meet_13(tmp_path):
    phone = _document(os={"name": "N/A", "full_name": "N/A api 34", "version": "34"}, itemtype="Phone")
    read = _read(tmp_path, phone)
    assert isinstance(read, inv.Appareil) and read.os == ("Android", "14")
    assert _meets(read.os, "Android", "11")
    twelve_l = inv._os({"name": "Snow Cone Android 12L", "full_name": "Snow Cone Android 12L api 32", "version": "32"})
    assert twelve_l is not None and _meets(twelve_l, "Android", "12") and not _meets(twelve_l, "Android", "13")


@pytest.mark.parametrize(
    "section",
    [
        {"name": "N/A", "full_name": "N/A api 40", "version": "40"},  # an API level not known yet
        {"name": "N/A", "full_name": "N/A", "version": "5"},
        {"name": "N/A", "version": "2"},
        {"name": "Android", "full_name": "Android", "version": "40"},  # an API level not known yet
    ],
)
def test_an_os_named_n_a_or_an_android_without_a_known_release_is_not_read(section):
    assert inv._os(section) is None


@pytest.mark.parametrize(
    "written, expected",
    [("13.0", "13.0"), ("14", "14"), ("12.1", "12.1"), ("33", "13")],
)
def test_another_agent_s_android_version_is_its_release_unless_it_is_an_api_level(written, expected):
    """Not the GLPI library's name: a `version` written as a release ("13.0", or "14": as an API
    level, Android 4.0, which no agent inventories now) is read so; an API level from 21 is read
    as its release."""
    assert inv._os({"name": "Android", "full_name": "Android", "version": written}) == ("Android", expected)


# --- Windows: an old release never read as a newer one ----------------------------------------


@pytest.mark.parametrize(
    "section, expected",
    [
        # inventory_format's own example, and the older servers' captions
        (
            {
                "name": "Windows",
                "full_name": "Microsoft(R) Windows(R) Server 2003, Standard Edition",
                "version": "2003",
            },
            ("Windows Server", "2003"),
        ),
        (
            {"name": "Windows", "full_name": "Microsoft(R) Windows(R) Server 2003, Enterprise Edition x64"},
            ("Windows Server", "2003"),
        ),
        (
            {"name": "Windows", "full_name": "Microsoft Windows Small Business Server 2011 Standard"},
            ("Windows Server", "2011"),
        ),
        ({"name": "Windows", "full_name": "Microsoft Windows 2000 Server"}, ("Windows Server", "2000")),
        (
            {"name": "Windows", "full_name": "Microsoft Windows Server 2022 Standard", "version": "21H2"},
            ("Windows Server", "2022"),
        ),
        # clients before 7: their NT version, below 7 as they came before it
        (
            {"name": "Windows", "full_name": "Microsoft Windows 2000 Professional", "version": "5.0.2195"},
            ("Windows", "5.0"),
        ),
        ({"name": "Windows", "full_name": "Microsoft Windows XP Professionnel"}, ("Windows", "5.1")),
        ({"name": "Windows", "full_name": "Microsoft Windows Vista Business"}, ("Windows", "6.0")),
        ({"name": "Windows", "full_name": "Microsoft Windows Millennium Edition"}, ("Windows", "4.90")),
        ({"name": "Windows", "full_name": "Microsoft Windows 98"}, ("Windows", "4.10")),
        ({"name": "Windows", "full_name": "Microsoft Windows 95"}, ("Windows", "4.0")),
        # from 7 on, the release the name carries, as before
        (
            {"name": "Windows", "full_name": "Microsoft Windows 7 Professionnel", "kernel_version": "6.1.7601"},
            ("Windows", "7"),
        ),
        ({"name": "Windows", "full_name": "Microsoft Windows 8.1 Pro"}, ("Windows", "8.1")),
        ({"name": "Windows", "full_name": "Microsoft Windows 10 Professionnel", "version": "22H2"}, ("Windows", "10")),
        ({"name": "Windows", "full_name": "Microsoft Windows 11 Éducation", "version": "1909"}, ("Windows", "11")),
        ({"name": "Windows", "full_name": "Microsoft Windows Embedded Standard 7"}, ("Windows", "7")),
        ({"name": "Windows", "full_name": "Microsoft Windows 10 Entreprise LTSC 2019"}, ("Windows", "10")),
        ({"name": "Windows", "full_name": "Microsoft Hyper-V Server 2019"}, ("Windows Server", "2019")),
    ],
    ids=lambda v: v.get("full_name") if isinstance(v, dict) else None,
)
def test_windows_is_read_as_its_release_and_a_server_as_windows_server(section, expected):
    assert inv._os(section) == expected


@pytest.mark.parametrize(
    "section, expected",
    [
        # glpi-agent's `version` is DisplayVersion or ReleaseId ("22H2", "1909"), never the release:
        # without one in the name, the NT version (`kernel_version`) says it, or nothing does.
        ({"name": "Windows", "version": "1909"}, None),
        ({"name": "Windows", "full_name": "Microsoft Windows", "version": "22H2"}, None),
        ({"name": "Windows", "version": "1909", "kernel_version": "10.0.18363"}, ("Windows", "10")),
        ({"name": "Windows", "version": "23H2", "kernel_version": "10.0.22631"}, ("Windows", "11")),
        (
            {"name": "Windows", "full_name": "Microsoft Windows Embedded Standard", "kernel_version": "6.1.7601"},
            ("Windows", "7"),
        ),
        ({"name": "Windows", "full_name": "Microsoft Windows 2003", "version": "2003"}, None),
        ({"name": "Windows", "full_name": "Microsoft Windows Server Datacenter", "version": "1809"}, None),
    ],
)
def test_a_four_digit_version_is_never_read_as_a_windows_release(section, expected):
    assert inv._os(section) == expected


@pytest.mark.parametrize(
    "full_name",
    [
        "Microsoft(R) Windows(R) Server 2003, Standard Edition",
        "Microsoft Windows 2000 Professional",
        "Microsoft Windows XP Professional",
        "Microsoft Windows 98",
    ],
)
def test_an_old_windows_does_not_meet_windows_10(tmp_path, full_name):
    """Read as Windows 2003, 2000 or 98, these met every "Windows >= 10" requirement."""
    read = _read(tmp_path, _document(os={"name": "Windows", "full_name": full_name, "version": "2003"}))
    assert isinstance(read, inv.Appareil)
    assert not _meets(read.os, "Windows", "10") and not _meets(read.os, "Windows", "7")


# --- Versions in ASCII digits only ------------------------------------------------------------


@pytest.mark.parametrize("written", ["١٢٠.0.1", "١٢٠", "1٢0.0", "۱۲۸.0", "१२८.0.3"])
def test_a_version_in_other_digits_than_ascii_is_not_read(written):
    assert inv.version(written) is None


def test_a_browser_whose_version_is_in_other_digits_is_skipped_and_the_run_goes_on(tmp_path):
    """Arabic-Indic digits are digits to Python's \\d: the browser's version "١٢٠.0" passed, and
    the lot, whose contract wants ASCII digits, failed validation and stopped the whole run."""
    softwares = [("Mozilla Firefox (x64 fr)", "١٢٠.0"), ("Google Chrome", "126.0.6478.127")]
    folder = tmp_path / "ecole"
    folder.mkdir()
    _read(folder, _document(softwares=softwares))
    run = inventorier([folder], Correspondance(tag={}, dossier={"ecole": COLLEGE}), DEPARTEMENT)
    [lot] = run.lots
    assert [(b.name, b.version) for b in lot.data.browsers] == [("Chrome", "126.0.6478.127")]
    assert inv._browsers([{"name": n, "version": v} for n, v in softwares]) == (("Chrome", "126.0.6478.127"),)


def test_an_os_version_in_other_digits_is_not_read():
    assert inv._os({"name": "Ubuntu", "full_name": "Ubuntu ٢٢.04 LTS", "version": "٢٢.04"}) is None
    assert inv._os({"name": "Windows", "full_name": "Microsoft Windows ١١ Éducation"}) is None


# --- The key of a device: its hardware, not the agent's run -----------------------------------

UUID = "4C4C4544-0034-3010-8048-B6C04F503732"


def test_two_exports_of_one_machine_share_their_key_and_cloned_images_do_not(tmp_path):
    """glpi-inventory makes a new deviceid (host name + time) at each run: one machine's two
    exports were two devices. Cloned disk images carry one agent's deviceid: distinct machines
    were one."""
    first = _read(tmp_path, _document("PC-12-2026-09-01-08-00-00", uuid=UUID, ssn="5CG1234XYZ"), "a.json")
    second = _read(tmp_path, _document("PC-12-2026-09-08-08-00-00", uuid=UUID.lower(), ssn="5CG1234XYZ"), "b.json")
    assert first.cle is not None and first.cle == second.cle
    clone = _read(
        tmp_path, _document("PC-12-2026-09-01-08-00-00", uuid="4C4C4544-0034-3010-8048-B6C04F503733"), "c.json"
    )
    assert clone.deviceid == first.deviceid and clone.cle != first.cle


@pytest.mark.parametrize(
    "uuid",
    [
        "00000000-0000-0000-0000-000000000000",
        "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
        "03000200-0400-0500-0006-000700080009",
        "",
        None,
    ],
)
def test_a_placeholder_uuid_gives_way_to_the_serial(tmp_path, uuid):
    """Boards whose maker left the UUID unset all report the same one: keyed by it, a room of
    them was one device."""
    a = _read(tmp_path, _document("a-2026", uuid=uuid, ssn="SERIAL-A"), "a.json")
    b = _read(tmp_path, _document("b-2026", uuid=uuid, ssn="SERIAL-B"), "b.json")
    again = _read(tmp_path, _document("a-2027", uuid=uuid, ssn="SERIAL-A"), "c.json")
    assert a.cle != b.cle and a.cle == again.cle


@pytest.mark.parametrize(
    "ssn",
    [
        *("To be filled by O.E.M.", "To Be Filled By O.E.M.", "Default string", "System Serial Number"),
        *("0123456789", "None", "N/A", "", "   ", "0000000", "Not Specified", None),
    ],
)
def test_a_placeholder_serial_gives_way_to_the_deviceid(tmp_path, ssn):
    zeros = "00000000-0000-0000-0000-000000000000"
    a = _read(tmp_path, _document("a-2026", uuid=zeros, ssn=ssn), "a.json")
    b = _read(tmp_path, _document("b-2026", uuid=zeros, ssn=ssn), "b.json")
    again = _read(tmp_path, _document("a-2026", uuid=zeros, ssn=ssn), "c.json")
    assert a.cle is not None and a.cle != b.cle and a.cle == again.cle


def test_the_key_s_kind_is_part_of_it(tmp_path):
    """A serial written as another machine's UUID is not that machine."""
    by_uuid = _read(tmp_path, _document("a-2026", uuid=UUID), "a.json")
    by_serial = _read(tmp_path, _document("b-2026", uuid="", ssn=UUID), "b.json")
    by_deviceid = _read(tmp_path, _document(UUID), "c.json")
    assert len({by_uuid.cle, by_serial.cle, by_deviceid.cle}) == 3


def test_the_key_is_never_shown(tmp_path):
    """Serials and UUIDs identify a machine: the key is a digest, and no repr shows it."""
    secrets = (UUID, "5CG1234XYZ")
    for document in (_document(uuid=UUID, ssn="5CG1234XYZ"), _document(uuid="", ssn="5CG1234XYZ")):
        for read in (_read(tmp_path, document), _read(tmp_path, document | {"itemtype": "Printer"})):
            shown = repr(read)
            assert read.cle is not None and read.cle not in shown
            assert not any(s.casefold() in text.casefold() for s in secrets for text in (shown, read.cle))


def test_a_set_aside_device_has_its_key_and_an_unreadable_or_partial_file_none(tmp_path):
    vm = _document(uuid=UUID)
    vm["content"]["hardware"]["vmsystem"] = "Hyper-V"
    read = _read(tmp_path, vm)
    assert isinstance(read, inv.Ecarte) and read.raison == inv.MACHINE_VIRTUELLE
    assert read.cle == _read(tmp_path, _document(uuid=UUID)).cle
    partial = _read(tmp_path, _document(uuid=UUID, partial=True))
    assert isinstance(partial, inv.Ecarte) and partial.cle is None and partial.deviceid is None
    (tmp_path / "cut.json").write_text('{"deviceid": "x", "content": {')
    assert inv.lire(tmp_path / "cut.json").cle is None


def test_the_samples_keys(shared_data):
    """computer_3_updated is computer_3 again (same UUID); the other samples are machines of their own."""
    folder = shared_data / "glpi"
    reads = {p.stem: inv.lire(p) for p in sorted(folder.glob("*.json")) if p.name != "inventory.schema.json"}
    assert reads["computer_3"].cle == reads["computer_3_updated"].cle
    keys = {reads[n].cle for n in ("computer_1", "computer_2", "computer_3", "phone_1")}
    assert len(keys) == 4 and None not in keys


# --- A Mac's kind: its model identifier, glpi-agent writing no chassis ------------------------

# As glpi-agent's MacOS modules write them: OS.pm name "MacOSX", full_name and version from
# system_profiler's "System Version: macOS 11.2.3 (20D91)"; Hardware.pm NAME and UUID only (no
# CHASSIS_TYPE); Bios.pm SMODEL = "Model Identifier" (else "Machine Model", else ioreg's model).
MACOS = {"name": "MacOSX", "full_name": "macOS", "version": "11.2.3 (20D91)"}


def _mac(smodel, chassis=None, os=MACOS, itemtype="Computer") -> dict:
    document = _document(os=os, itemtype=itemtype, uuid="2B05150B-FA33-45BD-90F0-3369BF908E3E")
    document["content"]["hardware"] = {"name": "Mac OS X", "uuid": "2B05150B-FA33-45BD-90F0-3369BF908E3E"} | (
        {"chassis_type": chassis} if chassis is not None else {}
    )
    document["content"]["bios"] = {"smanufacturer": "Apple Inc."} | ({"smodel": smodel} if smodel is not None else {})
    return document


@pytest.mark.parametrize(
    "smodel, kind",
    [
        # glpi-agent's own sample (resources/macos/system_profiler/11.0-apple-M1)
        ("MacBookAir10,1", "ordinateur portable"),
        ("MacBookPro18,1", "ordinateur portable"),
        ("MacBook2,1", "ordinateur portable"),
        ("MacBook Air", "ordinateur portable"),  # a marketing name, spaces and all
        ("iMac21,1", "ordinateur"),
        ("iMacPro1,1", "ordinateur"),
        ("Macmini9,1", "ordinateur"),
        ("MacPro7,1", "ordinateur"),
        ("PowerMac11,2", "ordinateur"),  # "Machine Model" on Mac OS X 10.4
        ("Mac Studio", "ordinateur"),
        ("Mac mini", "ordinateur"),
        ("iMac", "ordinateur"),
    ],
)
def test_a_mac_without_a_chassis_is_of_the_kind_its_model_identifier_says(tmp_path, smodel, kind):
    """glpi-agent's macOS modules write no hardware.chassis_type: every Mac was set aside
    chassis-inconnu, a collège's MacBooks and iMacs counted nowhere."""
    read = _read(tmp_path, _mac(smodel))
    assert isinstance(read, inv.Appareil), read
    assert (read.kind, read.os) == (kind, ("macOS", "11.2.3"))


@pytest.mark.parametrize("smodel", ["Mac14,2", "Mac13,1", "Mac15,3", "VirtualMac2,1", "VMware7,1", "", None])
def test_a_mac_whose_identifier_says_no_family_stays_set_aside(tmp_path, smodel):
    """Apple's identifiers since 2022 say no family ("Mac14,2" is a MacBook Air, "Mac13,1" a Mac
    Studio): not guessed."""
    read = _read(tmp_path, _mac(smodel))
    assert isinstance(read, inv.Ecarte) and read.raison == inv.CHASSIS_INCONNU


def test_an_xserve_is_a_server_set_aside(tmp_path):
    read = _read(tmp_path, _mac("Xserve3,1"))
    assert isinstance(read, inv.Ecarte) and read.raison == inv.CHASSIS_NON_RETENU


def test_a_mac_s_chassis_when_written_wins_and_an_identifier_is_read_for_macos_only(tmp_path):
    """The chassis, when an agent writes one, says the kind; the model is read for macOS only
    (another OS's smodel is its maker's own name, read by no rule here)."""
    desktop = _read(tmp_path, _mac("MacBookPro18,1", chassis="Desktop"), "desktop.json")
    assert isinstance(desktop, inv.Appareil) and desktop.kind == "ordinateur"
    windows = {"name": "Windows", "full_name": "Microsoft Windows 11 Éducation", "version": "23H2"}
    other = _read(tmp_path, _mac("MacBookPro18,1", os=windows), "windows.json")
    assert isinstance(other, inv.Ecarte) and other.raison == inv.CHASSIS_INCONNU
    phone = _read(tmp_path, _mac("iMac21,1", itemtype="Phone"), "phone.json")
    assert isinstance(phone, inv.Appareil) and phone.kind == "smartphone"


def test_macos_named_macosx_alone_is_macos(tmp_path):
    """glpi-agent names it "MacOSX", which the family's pattern did not read without a full_name
    beside it: its model went unread, and its OS was read as an OS named "MacOSX"."""
    read = _read(tmp_path, _mac("MacBookAir10,1", os={"name": "MacOSX", "version": "14.5"}))
    assert isinstance(read, inv.Appareil) and (read.kind, read.os) == ("ordinateur portable", ("macOS", "14.5"))


# --- Android: nothing in the GLPI library's inventory tells a tablet from a phone --------------


@pytest.mark.parametrize("smodel", ["SM-X200", "Mi 9T Pro"])  # a Galaxy Tab A8, a phone
def test_an_android_device_s_kind_is_its_itemtype_only(tmp_path, smodel):
    """android-inventory-library writes no chassis type nor any screen size (Hardware.java: name,
    OS, arch, uuid, user, memory; Videos.java: the resolution in pixels), and the agent's itemtype
    is the user's pick, Computer or Phone: a Phone is a smartphone, a Computer without a chassis
    set aside, the model not guessed from."""
    android = {"name": "Q Android 10.0", "full_name": "Q Android 10.0 api 29", "version": "29"}
    phone = _document(os=android, itemtype="Phone")
    phone["content"]["hardware"] = {"name": "tablette-12"}
    phone["content"]["bios"] = {"smodel": smodel}
    read = _read(tmp_path, phone, "phone.json")
    assert isinstance(read, inv.Appareil) and read.kind == "smartphone"
    computer = phone | {"itemtype": "Computer"}
    read = _read(tmp_path, computer, "computer.json")
    assert isinstance(read, inv.Ecarte) and read.raison == inv.CHASSIS_INCONNU


@pytest.mark.parametrize(
    ("logdate", "offset", "dated"),
    [
        ("1970-01-01 00:00:12", None, False),  # UTC's clock never set, read as Paris time: 1969
        ("1970-01-01 01:00:12", None, True),  # Paris time, 00:00:12 in UTC
        ("0001-01-01 00:00:00", "+0100", False),  # not an instant at all
        ("1969-12-31 23:59:59", "+0000", False),
    ],
)
def test_a_device_dated_before_1970_counts_undated_and_its_run_goes_on(tmp_path, capsys, logdate, offset, dated):
    """A device whose clock was never set (a flat battery): dated so, it made its établissement's
    lot an event before 1970, which the contract refuses, and the whole run stopped, exit 2, every
    other établissement's lots unsent (audit s67 ingestion F2)."""
    from deploy.partenaires.glpi import main

    os = {"name": "Windows", "full_name": "Microsoft Windows 11 Éducation", "version": "23H2"}
    document = _document(os=os if offset is None else {**os, "timezone": {"offset": offset}}, tag="000005")
    document["content"]["accesslog"]["logdate"] = logdate
    device = _read(tmp_path, document)
    assert isinstance(device, inv.Appareil) and (device.inventorie_le is not None) == dated
    mapping = tmp_path / "correspondance.csv"
    mapping.write_text(f"critere,valeur,uai\ntag,000005,{COLLEGE}\n")
    argv = [str(tmp_path / "pc.json"), "--correspondance", str(mapping), "--declarant", DEPARTEMENT, "--dry-run"]
    assert main(argv) == 0, capsys.readouterr().err
    [lot] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lot["time"] >= "1970-01-01T00:00:00"


@pytest.mark.parametrize(
    ("chassis", "kind"),
    [("Sealed-Case PC", "ordinateur"), ("Main System Chassis", inv.CHASSIS_NON_RETENU), ("Embedded PC", None)],
)
def test_chassis_names_agents_write_are_read(tmp_path, chassis, kind):
    """A thin client's sealed case is a seat; Windows' name of a server's chassis is a server's
    (it was counted unknown); an embedded PC, a kiosk's or a display's, stays set aside unknown."""
    document = _document()
    document["content"]["hardware"]["chassis_type"] = chassis
    read = _read(tmp_path, document)
    if kind == "ordinateur":
        assert isinstance(read, inv.Appareil) and read.kind == kind
    else:
        assert isinstance(read, inv.Ecarte) and read.raison == (kind or inv.CHASSIS_INCONNU)
