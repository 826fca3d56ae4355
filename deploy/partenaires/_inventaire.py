"""One GLPI native inventory file (glpi-project/inventory_format) read as one device: its kind,
OS and browsers in the contract's vocabulary, or the reason it cannot be declared.

Only what a lot needs is kept: no user name, serial number, host name or address leaves here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
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
        ),
        FIXE,
    ),
    "tablet": TABLETTE,
}
_NOT_RETAINED = {"server", "mainserverchassis", "rackmountchassis", "blade", "bladeenclosure", "dockingstation"}

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
}
_BROWSERS = {fold_name(name) for name in ("Firefox", "Chrome", "Safari", "Opera", "Edge", "Internet Explorer")}
_VERSION = re.compile(r"(?<![\d.])\d{1,9}(?:\.\d{1,9}){0,3}(?!\d)")
_EPOCH = re.compile(r"^\d+:")  # Debian's "1:115.6.0esr-1"
_PARENTHESES = re.compile(r"\([^)]*\)")
# Ubuntu's deb package that only installs the snap ("1:1snap1-0ubuntu5"): its version is not the
# browser's (the snap, which the agent lists on its own, has that).
_TO_A_SNAP = re.compile(r"\dsnap\d")
_VERSION_WORDS = re.compile(r"\b(?:v?\d[\w.]*|esr|x64|x86)\b", re.IGNORECASE)
# OS families whose marketing name carries the version the requirements use ("Microsoft
# Windows 11 Éducation", "Q Android 10.0"), rather than the agent's `version` field (a build or
# an API level there).
_OS_FAMILIES = (
    # Windows Server is not Windows by its version: "Server 2012 R2" read as Windows 2012 met
    # every "Windows >= 10" requirement. A name of its own, as names outside the vocabulary are.
    (re.compile(r"\bwindows\s+server\b", re.I), "Windows Server", re.compile(r"server\D{0,12}?(\d{4})\b", re.I)),
    (re.compile(r"\bwindows\b", re.I), "Windows", re.compile(r"windows\D{0,12}?(\d{1,4}(?:\.\d+)?)\b", re.I)),
    (re.compile(r"\bandroid\b", re.I), "Android", re.compile(r"android\s+(\d{1,3}(?:\.\d+){0,2})\b", re.I)),
    (re.compile(r"\b(?:mac\s?os|os\s?x)\b", re.I), "macOS", None),
    (re.compile(r"\bipad\s?os\b", re.I), "iPadOS", None),
    (re.compile(r"\b(?:ios|iphone\s?os)\b", re.I), "iOS", None),
    (re.compile(r"\bchrome\s?os\b", re.I), "ChromeOS", None),
)
# Linux distributions as os-release's NAME writes them, as DOMAIN.md names them (each its own name).
_DISTRIBUTIONS = {"debian gnu/linux": "Debian", "fedora linux": "Fedora", "ubuntu linux": "Ubuntu"}
LOCAL_TIME = ZoneInfo("Europe/Paris")  # an agent's logdate without the OS's offset


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


@dataclass(frozen=True)
class Ecarte:
    """A file that gives no device, and why (one of the codes above)."""

    fichier: Path
    raison: str
    deviceid: str | None = None
    inventorie_le: datetime | None = None


def lire(fichier: Path) -> Appareil | Ecarte:
    try:
        document = json.loads(fichier.read_bytes())
    except (OSError, ValueError):
        return Ecarte(fichier, ILLISIBLE)
    content = document.get("content") if isinstance(document, dict) else None
    deviceid = document.get("deviceid") if isinstance(document, dict) else None
    if not isinstance(content, dict) or not isinstance(deviceid, str) or not deviceid:
        return Ecarte(fichier, ILLISIBLE)
    if document.get("partial") is True:  # not the device as it is, nor newer than its full inventory
        return Ecarte(fichier, INVENTAIRE_PARTIEL)
    quand = _date(content)
    hardware = _section(content, "hardware")
    kind = _kind_of(document.get("itemtype"), hardware.get("chassis_type"))
    if kind not in EQUIPMENT_KINDS:
        return Ecarte(fichier, kind, deviceid, quand)
    vm = hardware.get("vmsystem")
    if isinstance(vm, str) and vm.strip() and vm.strip().casefold() != "physical":
        # A Hyper-V or VMware guest reports the chassis its hypervisor makes up ("Desktop"):
        # counted, it was one more computer, on top of the one it runs on.
        return Ecarte(fichier, MACHINE_VIRTUELLE, deviceid, quand)
    os = _os(_section(content, "operatingsystem"))
    if os is None:
        return Ecarte(fichier, SANS_OS, deviceid, quand)
    try:
        Logiciel(name=os[0], version=os[1])
    except ValidationError:  # a name over 64 characters, a version part over 9 digits
        return Ecarte(fichier, OS_HORS_CONTRAT, deviceid, quand)
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
    )


def version(text: object) -> str | None:
    """The contract's form of a version an agent wrote: `51.0.1-2.fc25` -> `51.0.1`,
    `1:115.6.0esr-1` -> `115.6.0`, `31 (Workstation Edition)` -> `31`; None without one."""
    if not isinstance(text, str):
        return None
    found = _VERSION.search(_EPOCH.sub("", text.strip()))
    return found.group() if found else None


def _section(content: dict, name: str) -> dict:
    section = content.get(name)
    return section if isinstance(section, dict) else {}


def _kind_of(itemtype: object, chassis: object) -> str:
    """The equipment kind, or the code of the reason there is none."""
    if itemtype == "Phone":
        return SMARTPHONE
    if itemtype not in (None, "Computer", "Unmanaged"):
        return TYPE_NON_RETENU
    key = re.sub(r"[\s-]", "", chassis).casefold() if isinstance(chassis, str) else ""
    if key in _NOT_RETAINED:
        return CHASSIS_NON_RETENU
    return _CHASSIS.get(key, CHASSIS_INCONNU)


def _os(section: dict) -> tuple[str, str] | None:
    name, full = (value if isinstance(value := section.get(k), str) else "" for k in ("name", "full_name"))
    text = f"{name} {full}"
    for family, display, in_text in _OS_FAMILIES:
        if family.search(text):
            found = in_text.search(text) if in_text else None
            release = found.group(1) if found else version(section.get("version"))
            return (display, release) if release else None
    if not name.strip():
        return None
    release = version(section.get("version")) or version(full)
    name = _DISTRIBUTIONS.get(" ".join(name.split()).casefold(), name)
    return (display_name(name), release) if release else None


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
    offset = _section(_section(content, "operatingsystem"), "timezone").get("offset")
    if isinstance(offset, str) and re.fullmatch(r"[+-]\d{4}", offset):
        sign = -1 if offset[0] == "-" else 1
        delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
        if delta < timedelta(hours=24):
            return local.replace(tzinfo=timezone(sign * delta))
    return local.replace(tzinfo=LOCAL_TIME)
