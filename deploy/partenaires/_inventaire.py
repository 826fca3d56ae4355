"""One GLPI native inventory file (glpi-project/inventory_format) read as one device: its kind,
OS and browsers in the contract's vocabulary, or the reason it cannot be declared.

Only what a lot needs is kept: no user name, serial number, host name or address leaves here;
the key under which two files are one device (`cle`) is a digest of the hardware's identifier,
never the identifier itself.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from contracts import Logiciel
from contracts._base import MAX_ITEMS
from contracts.vocabulary import EQUIPMENT_KINDS, display_name, fold_name

# Why a file gives no device (the summary counts them by these codes).
ILLISIBLE = "fichier-illisible"  # not JSON, or not a GLPI inventory (no content, no deviceid)
TYPE_NON_RETENU = "type-non-retenu"  # network equipment, printers
CHASSIS_INCONNU = "chassis-inconnu"  # no chassis type, or one this adapter does not know
CHASSIS_NON_RETENU = "chassis-non-retenu"  # servers, racks, docking stations: not pupils' equipment
SANS_OS = "sans-os"  # no operatingsystem section, or no name or version to read in it
OS_HORS_CONTRAT = "os-hors-contrat"  # an OS name or version a lot cannot carry (CONTRACTS.md, Limits)
INVENTAIRE_PARTIEL = "inventaire-partiel"  # a partial inventory (some sections only): never the device's latest
MACHINE_VIRTUELLE = "machine-virtuelle"  # hardware.vmsystem other than Physical: a VM or a container, not a seat


def _kind(name: str) -> str:
    if name not in EQUIPMENT_KINDS:
        raise AssertionError(f"{name!r} is not a kind of the vocabulary (contracts.vocabulary.EQUIPMENT_KINDS)")
    return name


PORTABLE, FIXE, TABLETTE, SMARTPHONE = map(_kind, ("ordinateur portable", "ordinateur", "tablette", "smartphone"))

# SMBIOS chassis types as the agents write them (dmidecode on Linux, Win32_SystemEnclosure on
# Windows), compared casefolded with spaces and hyphens removed.
_CHASSIS = {
    **dict.fromkeys(
        ("laptop", "notebook", "portable", "subnotebook", "convertible", "detachable", "handheld"), PORTABLE
    ),
    **dict.fromkeys(
        (
            "desktop",
            "lowprofiledesktop",
            "tower",
            "minitower",
            "pizzabox",
            "lunchbox",
            "allinone",
            "spacesaving",
            "minipc",
            "stickpc",
            "sealedcasepc",  # SMBIOS 0x18: thin clients, an all-in-one's kin (an embedded PC, 0x22, is
            # a kiosk's or a display's more than a seat: set aside, chassis-inconnu, as before)
        ),
        FIXE,
    ),
    "tablet": TABLETTE,
}
_NOT_RETAINED = {
    "server",
    "mainserverchassis",  # dmidecode's name of SMBIOS 0x11
    "mainsystemchassis",  # Win32_SystemEnclosure's, as glpi-agent writes it on Windows
    "rackmountchassis",
    "blade",
    "bladeenclosure",
    "dockingstation",
}
# glpi-agent writes no chassis type for a Mac: its MacOS/Hardware.pm sets the hardware's NAME and
# UUID only, and the modules that write CHASSIS_TYPE elsewhere (dmidecode's, Linux's sysfs,
# Win32_SystemEnclosure) do not run on macOS: every Mac was set aside. Its kind is in the model
# identifier MacOS/Bios.pm writes as bios.smodel (system_profiler's "Model Identifier", else
# "Machine Model", else ioreg's IOPlatformExpertDevice model: "MacBookAir10,1", "iMac21,1",
# "PowerMac11,2"), read here only for macOS, and only when the chassis does not say. Its family
# prefix says the kind; a marketing name another tool may write ("MacBook Air", "Mac Studio") is
# read the same way, spaces removed. Apple's identifiers since 2022 ("Mac14,2" a MacBook Air,
# "Mac14,3" a Mac mini, "Mac13,1" a Mac Studio) say no family: those stay unknown, not guessed;
# so does a virtual Mac ("VirtualMac2,1", "VMware7,1").
_MAC_MODELS = (
    (("macbook", "powerbook", "ibook"), PORTABLE),
    (("imac", "emac", "macmini", "macpro", "macstudio", "powermac"), FIXE),
    (("xserve", "rackmac"), CHASSIS_NON_RETENU),  # Apple's rack servers
)

# Browsers as agents name installed software, beyond the vocabulary's own spellings (which
# fold_name already reads): Windows uninstall entries, deb and rpm packages. Chromium is not
# Chrome: it stays a name of its own, as names outside the vocabulary do.
_BROWSER_SPELLINGS = {
    "firefox-esr": "Firefox",
    "google-chrome-stable": "Chrome",
    "chromium": "Chromium",
    "chromium-browser": "Chromium",
    "microsoft-edge-stable": "Edge",
    "opera stable": "Opera",
    "opera-stable": "Opera",  # Opera's own deb and rpm
    "mozillafirefox": "Firefox",  # openSUSE's rpm
}
_BROWSERS = {fold_name(name) for name in ("Firefox", "Chrome", "Safari", "Opera", "Edge", "Internet Explorer")}
# Versions are read in ASCII digits only (the contract's): Python's \d also takes Arabic-Indic
# or Devanagari digits, and a browser version so written ("١٢٠.0") failed the lot's validation,
# which stopped the whole run. A version written with such a digit is not read at all, as any
# unreadable version (its software skipped), rather than cut around the digit ("1٢0" -> "1").
_VERSION = re.compile(r"(?<![0-9.])[0-9]{1,9}(?:\.[0-9]{1,9}){0,3}(?![0-9])")
_OTHER_DIGIT = re.compile(r"(?![0-9])\d")
_EPOCH = re.compile(r"^[0-9]+:")  # Debian's "1:115.6.0esr-1"
_PARENTHESES = re.compile(r"\([^)]*\)")
# Ubuntu's deb packages that only install the snap: their version is not the browser's (the snap,
# which the agent lists on its own, has that). `firefox` since 22.04 ("1:1snap1-0ubuntu5"), and
# `chromium-browser` since 19.10: "77.0.3865.120-0ubuntu1~snap1", then on 20.04 and 22.04 the
# last deb's version under an epoch, "1:85.0.4183.83-0ubuntu0.20.04.3" (Launchpad bug 1892724),
# which read as Chromium 85 met a resource's "at most 90" on every such machine for good.
_TO_A_SNAP = re.compile(r"[0-9~]snap[0-9]|^[0-9]+:85\.0\.4183\.83-0ubuntu")
_VERSION_WORDS = re.compile(r"\b(?:v?[0-9][\w.]*|esr|x64|x86)\b", re.IGNORECASE | re.ASCII)
# An OS name that says the agent could not tell it: never a lot's OS.
_NO_NAME = {"n/a", "unknown", "none"}

# Windows and Android: the marketing name carries the release the requirements use ("Microsoft
# Windows 11 Éducation", "Q Android 10.0"), not the agent's `version` field (there glpi-agent
# writes Windows' DisplayVersion or ReleaseId, "22H2" or "1909", and the Android library the API
# level).
_WINDOWS = re.compile(r"\bwindows\b", re.I)
# Windows Server is not Windows by its version: "Server 2012 R2" read as Windows 2012 met every
# "Windows >= 10" requirement. A name of its own, as names outside the vocabulary are, with its
# year wherever the name has it ("Microsoft(R) Windows(R) Server 2003, Standard Edition",
# "Windows 2000 Server", "Windows Small Business Server 2011"); none in its name, not read.
_SERVER = re.compile(r"\bserver\b", re.I)
_SERVER_YEAR = re.compile(r"\b(20[0-9]{2})\b")
# A client's release, the first within a few words after "Windows": from 7 on its own number;
# before 7, a name or a year ("XP", "2000") that, read as a number, met "Windows >= 10". Those
# are read as their NT (or 9x) version, which keeps them below 7 and in the order they came:
# requirements compare numbers, and no catalogue asks for "Windows >= 5". A 4-digit number other
# than 2000 is no client release (a server's year, a ReleaseId): not read.
_WINDOWS_RELEASE = re.compile(
    r"\bwindows\b[^0-9]{0,24}?\b(95|98|me|millennium|2000|xp|vista|[0-9]{1,2}(?:\.[0-9]{1,2})?)\b", re.I | re.A
)
_WINDOWS_NAMED = {
    "95": "4.0",
    "98": "4.10",
    "me": "4.90",
    "millennium": "4.90",
    "2000": "5.0",
    "xp": "5.1",
    "vista": "6.0",
}
# Without a release in its name ("Microsoft Windows Embedded Standard"), the NT version glpi-agent
# writes as `kernel_version` (Win32_OperatingSystem.Version) says it; 10.0 from build 22000 is 11.
_NT = re.compile(r"\s*([0-9]{1,2})\.([0-9]{1,2})(?:\.([0-9]{1,6}))?\b")
_NT_RELEASES = {(5, 0): "5.0", (5, 1): "5.1", (5, 2): "5.1", (6, 0): "6.0", (6, 1): "7", (6, 2): "8", (6, 3): "8.1"}

_ANDROID = re.compile(r"\bandroid\b", re.I)
_ANDROID_RELEASE = re.compile(r"\bandroid\s+([0-9]{1,3}(?:\.[0-9]+){0,2})\b", re.I | re.A)
# glpi-project/android-inventory-library (OperatingSystem.java) writes name = codename +
# " Android " + release from its own table, full_name = name + " api " + API level, and version =
# API level. Its table ends at API 33: beyond, the name is "N/A" ("N/A api 34"). And 12L's name,
# "Snow Cone Android 12L", has no number to read. Then the API level says the release. 12L is
# read 12.1: a release between 12 and 13, as requirements compare numbers. Levels start at 21:
# below, they would read as releases (version "14" from another agent would be Android 4.0).
_ANDROID_API = re.compile(r"\bapi\s+([0-9]{1,3})\s*$", re.I | re.A)
_ANDROID_UNNAMED = re.compile(r"\s*n/a\s+api\s+[0-9]{1,3}\s*", re.I | re.A)
_ANDROID_RELEASES = {
    21: "5.0",
    22: "5.1",
    23: "6.0",
    24: "7.0",
    25: "7.1",
    26: "8.0",
    27: "8.1",
    28: "9",
    29: "10",
    30: "11",
    31: "12",
    32: "12.1",
    33: "13",
    34: "14",
    35: "15",
    36: "16",
}
# Other OS families, each with its display name; their `version` field is their release.
# glpi-agent's MacOS/OS.pm names macOS "MacOSX" (its full_name, "macOS" or "Mac OS X", is
# system_profiler's System Version without its number).
_MACOS = re.compile(r"\b(?:mac\s?os(?:\s?x)?|os\s?x)\b", re.I)
_OS_FAMILIES = (
    (_MACOS, "macOS"),
    (re.compile(r"\bipad\s?os\b", re.I), "iPadOS"),
    (re.compile(r"\b(?:ios|iphone\s?os)\b", re.I), "iOS"),
    (re.compile(r"\bchrome\s?os\b", re.I), "ChromeOS"),
)
# Linux distributions as os-release's NAME writes them, as DOMAIN.md names them (each its own name).
_DISTRIBUTIONS = {"debian gnu/linux": "Debian", "fedora linux": "Fedora", "ubuntu linux": "Ubuntu"}
LOCAL_TIME = ZoneInfo("Europe/Paris")  # an agent's logdate without the OS's offset
UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The key of a device is its hardware's, not its agent's: glpi-agent's standalone glpi-inventory
# makes a new deviceid (host name + time) at each run, so one machine's two exports were two
# devices; cloned school disk images share the agent's deviceid, so distinct machines were one.
# Values boards and makers leave unset are shared by many machines: not a key (GLPI's own
# defaults for its blacklist, src/Blacklist.php, and AMI's "Default string").
_UUID_PLACEHOLDERS = {
    "03000200-0400-0500-0006-000700080009",
    "6ab5b300-538d-1014-9fb5-b0684d007b53",
    "01010101-0101-0101-0101-010101010101",
}
_SERIAL_PLACEHOLDERS = {
    *("to be filled by o.e.m.", "default string", "system serial number", "systemserialnumb", "oem_serial"),
    *("none", "n/a", "(null string)", "invalid", "not specified", "unknown", "unknow", "empty", "eval", "iatpass"),
    *("0123456789", "12345", "123456", "1234567", "12345678", "123456789", "1234567890", "123456789000"),
    *("12345678901234567", "sys-1234567890", "sys-9876543210", "sn-12345", "sn-1234567890", "mb-1234567890"),
    *("serial number xxxxxx", "sn-123456fvgv3i0b8o5n6n7k", "tulip computers"),
}


@dataclass(frozen=True)
class Appareil:
    """One device as a lot counts it. `browsers`: (name, version), every version of each browser
    installed, sorted; `inventorie_le`: when the agent ran, if known."""

    fichier: Path
    deviceid: str
    tag: str | None
    kind: str
    os: tuple[str, str]
    browsers: tuple[tuple[str, str], ...]
    inventorie_le: datetime | None
    cle: str = field(repr=False)  # two files of one device share it (see _cle); never shown


@dataclass(frozen=True)
class Ecarte:
    """A file that gives no device, and why (one of the codes above); `deviceid` and `cle` when it
    is a device's (set aside), None for an unreadable or partial file."""

    fichier: Path
    raison: str
    deviceid: str | None = None
    inventorie_le: datetime | None = None
    cle: str | None = field(default=None, repr=False)  # None with deviceid: no device to count


def lire(fichier: Path) -> Appareil | Ecarte:
    try:
        document = json.loads(fichier.read_bytes())
    except (OSError, ValueError, RecursionError):  # (arrays nested past the parser's depth: one file, not the run)
        return Ecarte(fichier, ILLISIBLE)
    content = document.get("content") if isinstance(document, dict) else None
    deviceid = document.get("deviceid") if isinstance(document, dict) else None
    if not isinstance(content, dict) or not isinstance(deviceid, str) or not deviceid:
        return Ecarte(fichier, ILLISIBLE)
    if document.get("partial") is True:  # not the device as it is, nor newer than its full inventory
        return Ecarte(fichier, INVENTAIRE_PARTIEL)
    quand = _date(content)
    hardware = _section(content, "hardware")
    cle = _cle(hardware, _section(content, "bios"), deviceid)
    system = _section(content, "operatingsystem")
    names = " ".join(v for v in (system.get("name"), system.get("full_name")) if isinstance(v, str))
    mac_model = _section(content, "bios").get("smodel") if _MACOS.search(names) else None
    kind = _kind_of(document.get("itemtype"), hardware.get("chassis_type"), mac_model)
    if kind not in EQUIPMENT_KINDS:
        return Ecarte(fichier, kind, deviceid, quand, cle)
    vm = hardware.get("vmsystem")
    if isinstance(vm, str) and vm.strip() and vm.strip().casefold() != "physical":
        # A Hyper-V or VMware guest reports the chassis its hypervisor makes up ("Desktop"):
        # counted, it was one more computer, on top of the one it runs on.
        return Ecarte(fichier, MACHINE_VIRTUELLE, deviceid, quand, cle)
    os = _os(system)
    if os is None:
        return Ecarte(fichier, SANS_OS, deviceid, quand, cle)
    try:
        Logiciel(name=os[0], version=os[1])
    except ValidationError:  # a name over 64 characters, a version part over 9 digits
        return Ecarte(fichier, OS_HORS_CONTRAT, deviceid, quand, cle)
    tag = document.get("tag")
    softwares = content.get("softwares")
    return Appareil(
        fichier=fichier,
        deviceid=deviceid,
        tag=tag if isinstance(tag, str) and tag.strip() else None,
        kind=kind,
        os=os,
        browsers=_browsers(softwares if isinstance(softwares, list) else []),
        inventorie_le=quand,
        cle=cle,
    )


def version(text: object) -> str | None:
    """The contract's form of a version an agent wrote: `51.0.1-2.fc25` -> `51.0.1`,
    `1:115.6.0esr-1` -> `115.6.0`, `31 (Workstation Edition)` -> `31`; None without one, or
    with a digit other than ASCII's."""
    if not isinstance(text, str) or _OTHER_DIGIT.search(text):
        return None
    found = _VERSION.search(_EPOCH.sub("", text.strip()))
    return found.group() if found else None


def _section(content: dict, name: str) -> dict:
    section = content.get(name)
    return section if isinstance(section, dict) else {}


def _kind_of(itemtype: object, chassis: object, mac_model: object = None) -> str:
    """The equipment kind, or the code of the reason there is none. `mac_model`: a Mac's model
    identifier (bios.smodel, see _MAC_MODELS), read only when the chassis does not say."""
    if itemtype == "Phone":
        return SMARTPHONE
    if itemtype not in (None, "Computer", "Unmanaged"):
        return TYPE_NON_RETENU
    key = re.sub(r"[\s-]", "", chassis).casefold() if isinstance(chassis, str) else ""
    if key in _NOT_RETAINED:
        return CHASSIS_NON_RETENU
    if key in _CHASSIS:
        return _CHASSIS[key]
    model = re.sub(r"\s", "", mac_model).casefold() if isinstance(mac_model, str) else ""
    for prefixes, kind in _MAC_MODELS:
        if model.startswith(prefixes):
            return kind
    return CHASSIS_INCONNU


def _os(section: dict) -> tuple[str, str] | None:
    name, full = (value if isinstance(value := section.get(k), str) else "" for k in ("name", "full_name"))
    text = f"{name} {full}"
    if _WINDOWS.search(text):
        return _windows(text, section.get("kernel_version"))
    if _ANDROID.search(text) or _ANDROID_UNNAMED.fullmatch(full):
        return _android(text, full, section.get("version"))
    for family, display in _OS_FAMILIES:
        if family.search(text):
            release = version(section.get("version"))
            return (display, release) if release else None
    if not name.strip() or " ".join(name.split()).casefold() in _NO_NAME:
        return None
    release = version(section.get("version")) or version(full)
    name = _DISTRIBUTIONS.get(" ".join(name.split()).casefold(), name)
    return (display_name(" ".join(name.split())), release) if release else None


def _windows(text: str, kernel_version: object) -> tuple[str, str] | None:
    """Windows Server and its year, or Windows and its client release (see _WINDOWS_RELEASE)."""
    if _SERVER.search(text):
        year = _SERVER_YEAR.search(text)
        return ("Windows Server", year.group(1)) if year else None
    found = _WINDOWS_RELEASE.search(text)
    if found:
        release = found.group(1).casefold()
        return ("Windows", _WINDOWS_NAMED.get(release, release))
    nt = _NT.match(kernel_version) if isinstance(kernel_version, str) else None
    if nt is None:
        return None
    major, minor, build = int(nt.group(1)), int(nt.group(2)), nt.group(3)
    if (major, minor) == (10, 0):
        return ("Windows", "11" if int(build) >= 22000 else "10") if build else None
    release = _NT_RELEASES.get((major, minor))
    return ("Windows", release) if release else None


def _android(text: str, full: str, written: object) -> tuple[str, str] | None:
    """Android and the release its name carries, else the one its API level is (see _ANDROID_API)."""
    found = _ANDROID_RELEASE.search(text)
    if found:
        return ("Android", found.group(1))
    level = written.strip() if isinstance(written, str) and re.fullmatch(r"\s*[0-9]{1,3}\s*", written) else None
    if level is None and (api := _ANDROID_API.search(full)):
        level = api.group(1)
    if level is not None and int(level) in _ANDROID_RELEASES:
        return ("Android", _ANDROID_RELEASES[int(level)])
    # Another agent's `version` ("13.0", "14"): a release as written (an API level below 21 is
    # Android 4.4 or older, which no agent inventories now).
    release = version(written) if level is None or int(level) < min(_ANDROID_RELEASES) else None
    return ("Android", release) if release else None


def _cle(hardware: dict, bios: dict, deviceid: str) -> str:
    """The key two files of one device share: its SMBIOS UUID, else its serial number, else the
    agent's deviceid (see _UUID_PLACEHOLDERS), each with its kind (a serial is not the machine
    whose UUID it spells). A digest of it: serials and UUIDs identify a machine, and neither is
    ever shown."""
    uuid, ssn = (
        " ".join(v.split()).casefold() if isinstance(v, str) else "" for v in (hardware.get("uuid"), bios.get("ssn"))
    )
    if uuid and uuid not in _UUID_PLACEHOLDERS and uuid not in _SERIAL_PLACEHOLDERS and len(set(uuid) - {"-"}) > 1:
        key = f"uuid:{uuid}"  # not one digit repeated: all zeros, all F
    elif ssn and ssn not in _SERIAL_PLACEHOLDERS and len(set(ssn)) > 1:
        key = f"ssn:{ssn}"  # not one character repeated: 0000000, xxxxxxxxxxx
    else:
        key = f"deviceid:{deviceid}"
    # surrogatepass: a lone surrogate in a deviceid (`\udc80` escaped in its JSON) stopped the run.
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _browsers(softwares: list) -> tuple[tuple[str, str], ...]:
    """Every version of each browser installed (an ESR beside the current release: a resource
    whose bounds only the older meets runs on the device; CONTRACTS.md, a browser entry matches
    one of its browsers), sorted. Beyond the contract's MAX_ITEMS, the highest of each browser
    first, then the next highest of each, and so on."""
    found: dict[str, dict[tuple[int, ...], tuple[str, str]]] = {}
    for software in softwares:
        if not isinstance(software, dict) or not isinstance(software.get("name"), str):
            continue
        name, written = _browser(software["name"]), software.get("version")
        release = None if isinstance(written, str) and _TO_A_SNAP.search(written) else version(written)
        if name is None or release is None:
            continue
        rank = tuple(int(part) for part in release.split("."))
        while len(rank) > 1 and rank[-1] == 0:  # 17.1.0 is 17.1, as the rules compare them
            rank = rank[:-1]
        found.setdefault(fold_name(name), {}).setdefault(rank, (name, release))
    ranked = [[found[key][rank] for rank in sorted(found[key], reverse=True)] for key in sorted(found)]
    kept = [
        versions[depth]
        for depth in range(max(map(len, ranked), default=0))
        for versions in ranked
        if depth < len(versions)
    ]
    return tuple(sorted(kept[:MAX_ITEMS]))


def _browser(software: str) -> str | None:
    """The browser an installed software is, as a lot names it (`Mozilla Firefox 115.6.0 ESR (x64 fr)`
    -> `Firefox`), or None."""
    name = _PARENTHESES.sub(" ", software)
    for plain in (" ".join(name.split()).casefold(), " ".join(_VERSION_WORDS.sub(" ", name).split()).casefold()):
        if plain in _BROWSER_SPELLINGS:
            return _BROWSER_SPELLINGS[plain]
        if fold_name(plain) in _BROWSERS:
            return display_name(plain)
    return None


def _date(content: dict) -> datetime | None:
    """When the agent ran: accesslog.logdate, in the OS's time zone offset (else Paris time)."""
    logdate = _section(content, "accesslog").get("logdate")
    try:
        local = datetime.strptime(logdate, "%Y-%m-%d %H:%M:%S") if isinstance(logdate, str) else None
    except ValueError:
        return None
    if local is None:
        return None
    zone: tzinfo = LOCAL_TIME
    offset = _section(_section(content, "operatingsystem"), "timezone").get("offset")
    if isinstance(offset, str) and re.fullmatch(r"[+-][0-9]{4}", offset):
        sign = -1 if offset[0] == "-" else 1
        delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
        if delta < timedelta(hours=24):
            zone = timezone(sign * delta)
    # Before 1970: a clock never set (a flat battery, 1970-01-01 00:00 in UTC read as Paris
    # time). No event may be dated so (CONTRACTS.md, Limits): the device counts undated, as one
    # without accesslog; its établissement's lot, dated by it, failed the whole run (audit s67
    # ingestion F2). Year 1 in a zone east of UTC is not even an instant.
    try:
        dated = local.replace(tzinfo=zone)
        return dated if dated >= UNIX_EPOCH else None
    except OverflowError:
        return None
