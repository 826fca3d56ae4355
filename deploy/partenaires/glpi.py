"""A collectivité's GLPI inventory declared as `lot` events, through the passerelle.

    python -m deploy.partenaires.glpi INVENTAIRE... --correspondance FICHIER --declarant SOURCE
        (--etat FICHIER | --dry-run) [--passerelle URL]
        [--client-id CLIENT --token-url URL | --token JETON | --jeton-local [--data-dir DIR]]

Reads GLPI native inventory files (one JSON file per device, as the GLPI agent sends them;
directories are read recursively), finds each device's établissement with the mapping file,
and groups the devices of one établissement by kind, OS and browsers: one `lot` per group,
quantity = its devices. A device inventoried twice counts once, its latest inventory: the same
hardware (its SMBIOS UUID, else its BIOS serial, placeholders aside, else the agent's `deviceid`;
glpi-agent's standalone glpi-inventory makes a new deviceid at each run, and cloned disk images
share one).

- The mapping (CSV with the header `critere,valeur,uai`, `,` or `;`; or JSON `{"tag": {VALEUR:
  UAI}, "dossier": {...}}`): `tag` is the agent's TAG, the one GLPI's own rules read to place a
  device in its entity and location; `dossier` is the name of the folder holding the file, for
  inventories sorted one folder per entity or location. The tag is looked up first.
- `lot_id` names the group's kind and OS and its rank among their groups at the établissement
  (oldest versions first), so running the adapter again on a newer inventory replaces the same
  lots instead of adding lots, and a patch release declares the same lots with new versions.
- Each établissement's lots carry its latest inventory date among its devices (the agents'
  `accesslog.logdate`, never later than now), and never a time before the one last sent for
  it; when no device has one, that time (now on a first run). The same files sent again
  change nothing (same ids). An export older than the one sent for an établissement (its
  devices inventoried before, none after) sends nothing for it: the summary names it and the
  file, exit 1.
- --etat FICHIER (required to send) remembers the lots the platform holds from this adapter, per établissement,
  the latest time sent, and each lot's latest event: a lot that changes back to what an
  earlier event declared (a quantity 3, then 2, then 3 again with no newer inventory date, or
  a lot back as it was after its retirement) is declared by a new event, not that earlier one,
  which the platform would take for a repeat and drop (JSON; checked writable before anything
  is sent, written once the passerelle has answered; created by the first run). A lot of an établissement of this run
  that the inventory no longer has (its devices all moved to other lots, upgraded, or gone) is
  retired: a `lot` with quantity 0, right after that établissement's lots, at their time. An
  établissement with no
  device in this run keeps its lots (a partial export must not retire them): the summary counts
  those. A lot the passerelle refused stays as the platform has it; after an interrupted run,
  every lot it sent is kept and none removed. A run holds the state (FICHIER.verrou): another
  run on it meanwhile sends nothing.
- The tokens: --client-id (else PASSERELLE_CLIENT) and --token-url (else PASSERELLE_JETON_URL),
  the client's secret in PASSERELLE_SECRET: asked of the identity provider (client-credentials),
  the first before the files are read, another before each expires and when the passerelle
  refuses one. Else one given: --token, else the PASSERELLE_JETON environment variable (better: a
  command line is shown by `ps` to the machine's other users and kept in the shell's history),
  checked before the files are read (expired: refused; expiring within 15 minutes: said).
  --jeton-local mints them for --declarant with the local identity provider (`./dev up`'s;
  development only).

--dry-run prints the events, one JSON line each, and sends nothing. A summary (stderr) says how
many devices went into how many lots, which files were set aside and why (with their file
names, never a field of their content: no user name or serial number; glpi-agent names its
exports after the device id, which holds the host name, so the summary stays on the
operator's terminal), and the passerelle's answer: how many accepted, and each refused lot
(its établissement, lot_id and message) by code. A batch the passerelle is unavailable for is
posted again for a while (deploy/local/partenaires.py). Exit status: 0 when every lot was
accepted (or printed), 1 when the passerelle refused some or an établissement's export was
older than the one sent, 2 when nothing could be sent.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import csv
import fcntl
import hashlib
import json
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import contracts as c
from contracts.vocabulary import fold_kind, fold_name
from deploy.disque import durable
from deploy.identite import IdentiteLocale
from deploy.local.datadir import data_root
from deploy.local.partenaires import ClientCredentials, Partenaires, Sent
from deploy.partenaires import _inventaire as inv
from services.common.messaging.connection import KafkaAccess
from services.passerelle.settings import in_clear_beyond_this_machine

SANS_CORRESPONDANCE = "sans-correspondance"  # no mapping for the device's tag nor its folder
INVENTAIRE_REMPLACE = "inventaire-remplace"  # an older inventory of a device read again
CRITERES = ("tag", "dossier")
TOKEN_VARIABLE = "PASSERELLE_JETON"
CLIENT_VARIABLE, SECRET_VARIABLE, TOKEN_URL_VARIABLE = "PASSERELLE_CLIENT", "PASSERELLE_SECRET", "PASSERELLE_JETON_URL"
SHORT_LIVED_SECONDS = 900
"""A token given that expires sooner than this: said before the files are read (a large run
takes longer, and stops at the first batch refused)."""
SHOWN_FILES = 10  # file names listed per reason in the summary
PROGRESS_FILES = 1000  # a progress line every so many files read (about 15 s of a large export)


@dataclass(frozen=True)
class Correspondance:
    """GLPI tag or folder name -> UAI."""

    tag: dict[str, str]
    dossier: dict[str, str]

    @classmethod
    def lire(cls, path: Path) -> Correspondance:
        """ValueError naming the file, the line or key, and the rule, for a mapping that breaks one."""
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as error:  # a CSV saved by a spreadsheet in Windows-1252, say
            raise ValueError(f"{path}: pas de l'UTF-8 (octet 0x{error.object[error.start]:02x})") from None
        rows: list[tuple[str, str, str, str]] = []  # (where, critere, valeur, uai)
        if path.suffix.casefold() == ".json":
            try:
                document = json.loads(text, object_pairs_hook=_sans_doublon)
            except ValueError as error:
                raise ValueError(f"{path}: {error}") from None
            if not isinstance(document, dict) or not all(isinstance(v, dict) for v in document.values()):
                raise ValueError(f"{path}: attendu un objet {{critère: {{valeur: UAI}}}}")
            rows = [(f"{k}/{v}", k, v, u) for k, table in document.items() for v, u in table.items()]
        else:
            delimiter = ";" if ";" in text.partition("\n")[0] else ","
            reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
            if reader.fieldnames is None or set(reader.fieldnames) != {"critere", "valeur", "uai"}:
                raise ValueError(f"{path}: l'en-tête doit être critere{delimiter}valeur{delimiter}uai")
            rows = [(f"ligne {n}", r["critere"], r["valeur"], r["uai"]) for n, r in enumerate(reader, start=2)]
        tables: dict[str, dict[str, str]] = {critere: {} for critere in CRITERES}
        for where, critere, valeur, uai in rows:
            critere, valeur, uai = (str(x or "").strip() for x in (critere, valeur, uai))
            if critere not in tables:
                raise ValueError(f"{path} ({where}): critère « {critere} » inconnu (attendu : {', '.join(CRITERES)})")
            if not valeur:
                raise ValueError(f"{path} ({where}): valeur vide")
            if not c.is_valid_uai(uai):
                raise ValueError(f"{path} ({where}): uai « {uai} » invalide (7 chiffres et la lettre de contrôle)")
            if tables[critere].setdefault(valeur, uai) != uai:
                raise ValueError(f"{path} ({where}): {critere} « {valeur} » déjà associé à un autre uai")
        return cls(tag=tables["tag"], dossier=tables["dossier"])

    def uai(self, appareil: inv.Appareil) -> str | None:
        if appareil.tag is not None and appareil.tag in self.tag:
            return self.tag[appareil.tag]
        # The folder's name however the path was given (`.`, `fichier.json` from inside it).
        return self.dossier.get(appareil.fichier.absolute().parent.name)


def _sans_doublon(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are each given once (a mapping's value twice kept the last one)."""
    document = dict(pairs)
    if len(document) != len(pairs):
        repeated = next(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        raise ValueError(f"clé « {repeated} » répétée")
    return document


Lots = dict[str, dict[str, str]]
"""uai -> lot_id -> kind."""
Envois = dict[str, dict[str, list[str]]]
"""uai -> lot_id -> [the fingerprint of the latest event the platform took for it, its id]."""
Inventories = dict[str, dict[str, datetime]]
"""uai -> a device's key (a digest: _inventaire._cle) -> when it was inventoried, as last sent."""


@dataclass(frozen=True)
class Etat:
    """What the platform holds from this adapter (--etat): its lots, the latest time sent, and
    each lot's latest event (`envois`, retirements included). A lot's event is that one again
    when the lot is as it declared (the same files sent again: a repeat, which changes nothing),
    else a new one, whose id follows from the latest: a lot back to an earlier content at the
    same time (3 devices, then 2, then 3) was the earlier event again, which the platform took
    for a repeat for INBOX_RETENTION_DAYS, and the lot stayed at 2. Per établissement, the
    latest time sent (`dates`; a state from before them has `date` alone, the latest over all)
    and when each of its devices was inventoried (`inventaires`): an export is older than the
    one sent when one of its devices was inventoried before."""

    lots: Lots = field(default_factory=dict)
    date: datetime | None = None
    envois: Envois = field(default_factory=dict)
    dates: dict[str, datetime] = field(default_factory=dict)
    inventaires: Inventories = field(default_factory=dict)

    def date_de(self, uai: str) -> datetime | None:
        """The time last sent for `uai`; a state from before `dates`: its latest over all, for
        the établissements it sent (a new one's lots are at their own date)."""
        if uai in self.dates:
            return self.dates[uai]
        return self.date if uai in self.envois or uai in self.lots else None


@dataclass
class Inventaire:
    """What a run makes of the files: the lot events (each établissement's retirements after its lots),
    and what was set aside."""

    lots: list[c.CloudEvent]
    appareils: int
    fichiers: int
    ecartes: dict[str, list[str]] = field(default_factory=dict)  # reason -> file names
    retires: int = 0
    """Lots of the previous state that vanished from an établissement of this run (quantity 0)."""
    absents: list[str] = field(default_factory=list)
    """Établissements of the previous state absent from this run: their lots kept."""
    plus_anciens: list[str] = field(default_factory=list)
    """Établissements of which the previous state sent a newer export: nothing sent for them
    (each named with the files of its devices inventoried before)."""
    inventaires: Inventories = field(default_factory=dict)
    """When each device of the établissements sent was inventoried (Etat.inventaires)."""

    def resume(self) -> str:
        uais = {e.subject for e in self.lots}
        times = sorted({e.time for e in self.lots})  # per établissement
        quand = " à ".join(dict.fromkeys(t.isoformat() for t in times[:1] + times[-1:])) or "-"
        lines = [
            f"GLPI : {self.fichiers} fichiers lus, {self.appareils} appareils en {len(self.lots) - self.retires} lots "
            f"pour {len(uais)} établissements (date des lots : {quand})"
        ]
        if self.retires:
            lines.append(f"  lots retirés (disparus de l'inventaire depuis l'état précédent) : {self.retires}")
        if self.absents:  # named: to retire their lots by hand, if they are gone
            lines.append(
                f"  établissements de l'état précédent absents de cet inventaire : {len(self.absents)} (lots gardés : "
                f"{_listed(self.absents)})"
            )
        if self.plus_anciens:
            shown = _listed(self.plus_anciens)
            lines.append(
                f"  attention : export plus ancien que celui déjà envoyé pour {len(self.plus_anciens)} établissements "
                f"(des appareils inventoriés avant la date déjà envoyée, aucun après) : rien n'est envoyé pour eux "
                f"({shown})"
            )
        for raison, noms in sorted(self.ecartes.items()):
            lines.append(f"  écartés, {raison} : {len(noms)} ({_listed(noms)})")
        return "\n".join(lines)


def _listed(names: Sequence[str]) -> str:
    """The first SHOWN_FILES names, and how many more."""
    more = len(names) - SHOWN_FILES
    return ", ".join(names[:SHOWN_FILES]) + (f", … ({more} de plus)" if more > 0 else "")


def inventorier(
    chemins: Sequence[Path],
    correspondance: Correspondance,
    declarant: str,
    now: datetime | None = None,
    precedent: Etat = Etat(),
    progres: Callable[[str], None] = lambda _: None,
) -> Inventaire:
    """The lots `declarant` declares for the devices in `chemins` (files or directories), and
    the retirement of each lot of `precedent` that vanished from an établissement they cover.
    `progres` is told every PROGRESS_FILES files read."""
    names = dict(_fichiers(chemins))
    ecartes: dict[str, list[str]] = defaultdict(list)
    latest: dict[str, inv.Appareil | inv.Ecarte] = {}
    for n, path in enumerate(names, start=1):
        if n % PROGRESS_FILES == 0:
            progres(f"{n}/{len(names)} fichiers lus")
        read = inv.lire(path)
        if read.deviceid is None:  # unreadable, or partial: no device to count
            ecartes[read.raison if isinstance(read, inv.Ecarte) else inv.ILLISIBLE].append(names[path])
            continue
        same = read.cle or read.deviceid  # the hardware's, else the agent's (_inventaire._cle)
        kept = latest.setdefault(same, read)
        if kept is not read:
            newer, older = (read, kept) if _when(read) >= _when(kept) else (kept, read)
            latest[same] = newer
            ecartes[INVENTAIRE_REMPLACE].append(names[older.fichier])
    variants: dict[tuple[str, str], list[inv.Appareil]] = defaultdict(list)
    for read in latest.values():
        if isinstance(read, inv.Ecarte):
            ecartes[read.raison].append(names[read.fichier])
        elif (uai := correspondance.uai(read)) is None:
            ecartes[SANS_CORRESPONDANCE].append(names[read.fichier])
        else:
            variants[(uai, variante(read))].append(read)
    ids = _lot_ids(variants)
    groups = {(uai, ids[uai, v]): devices for (uai, v), devices in variants.items()}
    now = now or datetime.now(UTC)
    lots_at: dict[str, list[tuple[str, list[inv.Appareil]]]] = defaultdict(list)
    for (uai, lot), devices in sorted(groups.items()):
        lots_at[uai].append((lot, devices))
    times, inventaires, plus_anciens = _dates(lots_at, precedent, now)
    held = precedent.lots
    lots, vanished, appareils = [], 0, 0
    for uai in sorted(times):  # each établissement's retirements beside its lots (one batch, one group)
        envois = precedent.envois.get(uai, {})
        for lot, devices in lots_at[uai]:
            lots.append(_event(declarant, uai, lot, devices, times[uai], envois.get(lot)))
            appareils += len(devices)
        gone = [(lot, kind) for lot, kind in sorted(held.get(uai, {}).items()) if (uai, lot) not in groups]
        lots += [_retirement(declarant, uai, lot, kind, times[uai], envois.get(lot)) for lot, kind in gone]
        vanished += len(gone)
    return Inventaire(
        lots,
        appareils,
        len(names),
        {k: sorted(v) for k, v in ecartes.items()},
        retires=vanished,
        absents=sorted(held.keys() - lots_at.keys()),
        plus_anciens=sorted(plus_anciens),
        inventaires=inventaires,
    )


def _dates(
    lots_at: Mapping[str, list[tuple[str, list[inv.Appareil]]]], precedent: Etat, now: datetime
) -> tuple[dict[str, datetime], Inventories, list[str]]:
    """Each établissement's time, when each of its devices was inventoried, and those whose
    export is older than the one sent (devices inventoried before, none after: nothing is sent
    for them), each named with those devices' files.

    An établissement's lots carry its latest inventory date, never before the time it was last
    sent: the device gone may have been the newest (decommissioned, its file missing), and lots
    older than those the platform holds were stale, their retirements not. No device dated: that
    time too, so that the same files sent again are the same events; now on a first run. (A
    run's one date over all, the newest device anywhere, made a partial export, or one without
    that device, older than the state.)"""
    times: dict[str, datetime] = {}
    inventaires: Inventories = {}
    older: list[str] = []
    for uai, lots in lots_at.items():
        dated: dict[str, datetime] = {}
        files: dict[str, str] = {}
        for _, devices in lots:
            for d in devices:
                if d.inventorie_le is not None:
                    dated[d.cle], files[d.cle] = min(d.inventorie_le, now), d.fichier.name
        sent, last_sent = precedent.inventaires.get(uai, {}), precedent.date_de(uai)
        before = sorted(files[cle] for cle, when in dated.items() if cle in sent and when < sent[cle])
        since = last_sent is not None and any(when > sent.get(cle, last_sent) for cle, when in dated.items())
        if before and not since:
            # Its lots would replace newer ones. (One device gone back, others inventoried
            # since, or a new one: its clock, not the export; the établissement is sent.)
            older.append(f"{uai} ({', '.join(before)})")
            continue
        inventaires[uai] = dated
        newest = max(dated.values()) if dated else (last_sent or now)
        times[uai] = max(newest, last_sent) if last_sent else newest
    return times, inventaires, older


def variante(appareil: inv.Appareil) -> str:
    """What one lot holds: a kind, an OS version and a set of browser versions, whatever their
    spelling."""
    key = [
        fold_kind(appareil.kind),
        fold_name(appareil.os[0]),
        appareil.os[1],
        sorted([fold_name(name), release] for name, release in appareil.browsers),
    ]
    return json.dumps(key)


def _lot_ids(groups: Mapping[tuple[str, str], object]) -> dict[tuple[str, str], str]:
    """Each (uai, variante)'s lot_id: its family's (kind and OS name) and its rank among the
    family's variants at that établissement, oldest versions first. A patch release moves devices
    to a variant of the same family: the lot of that rank is declared anew (and the family's last
    rank retired when it has one variant fewer), where a lot_id derived from the versions made a
    new lot and retired the former at every patch, each kept for good by the platform."""
    families: dict[tuple[str, str], list[str]] = defaultdict(list)
    for uai, v in groups:
        kind, os_name, *_ = json.loads(v)
        families[uai, json.dumps([kind, os_name])].append(v)
    ids = {}
    for (uai, family), variants in families.items():
        prefix = "glpi-" + hashlib.sha256(family.encode()).hexdigest()[:20]
        for rank, v in enumerate(sorted(variants, key=_anciennete), start=1):
            ids[uai, v] = f"{prefix}-{rank}"
    return ids


def _anciennete(v: str) -> tuple:
    """A variant's place in its family: by OS version, then browsers' versions, as numbers."""
    _, _, os_version, browsers = json.loads(v)
    return (_parts(os_version), [(name, _parts(release)) for name, release in browsers], v)


def _parts(version: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdecimal() else -1 for p in version.split("."))


def _event(
    declarant: str, uai: str, lot: str, devices: list[inv.Appareil], time: datetime, latest: list[str] | None
) -> c.CloudEvent:
    first = devices[0]
    data = c.Lot(
        uai=uai,
        lot_id=lot,
        kind=first.kind,
        quantity=len(devices),
        os=c.Logiciel(name=first.os[0], version=first.os[1]),
        browsers=[c.Logiciel(name=name, version=release) for name, release in first.browsers],
    )
    return _identified(declarant, data, time, latest)


def _retirement(
    declarant: str, uai: str, lot: str, kind: str, time: datetime, latest: list[str] | None
) -> c.CloudEvent:
    return _identified(declarant, c.Lot(uai=uai, lot_id=lot, kind=kind, quantity=0), time, latest)


def _identified(declarant: str, data: c.Lot, time: datetime, latest: list[str] | None) -> c.CloudEvent:
    """The lot's latest event (`latest`: [fingerprint, id], Etat.envois) when it declared the
    same, a repeat that changes nothing; else a new event, its id derived from the latest's, so
    that no content the lot had before, sent again, takes the id of the event that first sent it."""
    same = _empreinte(declarant, data, time)
    if latest is not None and latest[0] == same:
        event_id = latest[1]
    else:
        after = json.dumps([same, latest[1] if latest else None])
        event_id = "glpi-" + hashlib.sha256(after.encode()).hexdigest()[:32]
    return c.make_event(c.LOT, data, source=declarant, id=event_id, time=time)


def _empreinte(declarant: str, data: c.Lot, time: datetime) -> str:
    """What a lot's event declares: its declarant, its data and its time."""
    content = json.dumps([declarant, data.model_dump(mode="json"), time.isoformat()], sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest()[:32]


def _when(read: inv.Appareil | inv.Ecarte) -> datetime:
    return read.inventorie_le or datetime.min.replace(tzinfo=UTC)


def _fichiers(chemins: Iterable[Path]) -> Iterable[tuple[Path, str]]:
    """Each file to read, with the name the summary gives it (relative to the directory given)."""
    for chemin in chemins:
        if chemin.is_dir():
            for path in sorted(p for p in chemin.rglob("*") if p.suffix.casefold() == ".json" and p.is_file()):
                yield path, str(path.relative_to(chemin))
        elif chemin.exists():
            yield chemin, chemin.name
        else:
            raise FileNotFoundError(f"{chemin}: ni fichier ni dossier")


@dataclass(frozen=True)
class Jetons:
    """Where a run's tokens come from: one given (`jeton`), or a provider's (`refuse` then tells
    it one the passerelle refused)."""

    jeton: Callable[[str], str | Awaitable[str]]
    refuse: Callable[[str], None] | None = None


async def publier(inventaire: Inventaire, passerelle: str, jetons: Jetons) -> Sent:
    """The lots posted in batches as the token's declarant; nothing refused is posted again."""

    def kafka(principal: str) -> KafkaAccess:
        raise AssertionError(f"GLPI lots go over HTTP, never to Kafka as {principal}")

    partenaires = Partenaires(
        passerelle,
        jeton=jetons.jeton,
        kafka=kafka,
        settle_seconds=0,
        said=lambda line: _dit(line),
        jeton_refuse=jetons.refuse,
    )
    return await partenaires.send((c.EQUIPEMENT, e.subject or "", e.to_bytes()) for e in inventaire.lots)


def lire_etat(path: Path, declarant: str) -> Etat:
    """The state a previous run wrote (empty when there is none yet); ValueError naming the file
    and the rule for one that is not such a state, or another declarant's."""
    if not path.exists():
        return Etat()
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        # A state written before `envois` has `retires` instead: its lots' next events are new ones.
        lots, date, envois = document["lots"], document["date"], document.get("envois", {})
        if not all(isinstance(v, str) for held in lots.values() for v in held.values()):
            raise TypeError
        if not all(
            isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v)
            for sent in envois.values()
            for v in sent.values()
        ):
            raise TypeError
        when = _instant(date) if date is not None else None
        # A state from before them has neither: its date is each établissement's.
        dates = {uai: _instant(v) for uai, v in document.get("dates", {}).items()}
        inventaires = {
            uai: {cle: _instant(v) for cle, v in devices.items()}
            for uai, devices in document.get("inventaires", {}).items()
        }
    except ValueError as error:
        raise ValueError(f"{path}: état illisible : {error}") from None
    except (KeyError, TypeError, AttributeError):
        raise ValueError(
            f"{path}: attendu un état {{declarant, date, lots: {{uai: {{lot_id: kind}}}}, "
            "envois: {{uai: {{lot_id: [empreinte, id]}}}}}}"
        ) from None
    if document.get("declarant") != declarant:
        raise ValueError(f"{path}: état d'un autre déclarant que {declarant} : un fichier d'état par collectivité")
    return Etat(lots, when, envois, dates, inventaires)


def _instant(text: object) -> datetime:
    if not isinstance(text, str):
        raise TypeError
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise ValueError(f"date {text} sans fuseau horaire")
    return when


def etat_apres(precedent: Etat, inventaire: Inventaire, refused_ids: set[str] | None) -> Etat:
    """What the platform holds once the passerelle answered: each accepted lot as sent (retired
    at quantity 0), each refused one as it was. `refused_ids` None: the run was interrupted, and
    any lot may have been accepted or not: every one it sent is kept, none removed (retiring
    later a lot the platform never had changes nothing)."""
    lots = {uai: dict(held) for uai, held in precedent.lots.items()}
    envois = {uai: dict(sent) for uai, sent in precedent.envois.items()}
    date, dates, taken = precedent.date, dict(precedent.dates), set()
    for event in inventaire.lots:
        if refused_ids is not None and event.id in refused_ids:
            continue
        # Interrupted, the event may have been taken or not: sent again next time as it is (the
        # same id), a repeat if it was.
        envois.setdefault(event.data.uai, {})[event.data.lot_id] = [
            _empreinte(event.source, event.data, event.time),
            event.id,
        ]
        held = lots.setdefault(event.data.uai, {})
        if event.data.quantity:
            held[event.data.lot_id] = event.data.kind
        elif refused_ids is not None:
            held.pop(event.data.lot_id, None)
        date = max(date, event.time) if date else event.time
        uai = event.data.uai
        dates[uai] = max(dates[uai], event.time) if uai in dates else event.time
        if uai in inventaire.inventaires:  # its devices' dates, once one of its events may have been taken
            taken.add(uai)
    return Etat(
        {uai: held for uai, held in sorted(lots.items()) if held},
        date,
        {uai: sent for uai, sent in sorted(envois.items()) if sent},
        dict(sorted(dates.items())),
        dict(sorted((precedent.inventaires | {u: inventaire.inventaires[u] for u in taken}).items())),
    )


def ecrire_etat(path: Path, declarant: str, etat: Etat) -> None:
    """Written whole or not at all, and on the disk when this returns: a new file, forced to
    the disk, renamed over the former, then the rename forced too (its directory). Without
    them, the machine stopping soon after could leave the former state, or an empty file,
    behind a run whose lots the platform holds."""
    document = {
        "declarant": declarant,
        "date": etat.date and etat.date.isoformat(),
        "lots": etat.lots,
        "envois": etat.envois,
        "dates": {uai: when.isoformat() for uai, when in etat.dates.items()},
        "inventaires": {
            uai: {cle: when.isoformat() for cle, when in sorted(devices.items())}
            for uai, devices in etat.inventaires.items()
        },
    }
    written = path.with_name(path.name + ".nouveau")
    written.write_text(json.dumps(document, ensure_ascii=False, indent=1), "utf-8")
    durable(written)
    written.replace(path)
    durable(path.parent)


SHOWN_REFUSALS = 20  # refused lots listed per code in the summary


def bilan(sent: Sent, inventaire: Inventaire) -> str:
    """The passerelle's answer: lots accepted and refused, and each refused one (its
    établissement, lot and the passerelle's message), SHOWN_REFUSALS at most per code."""
    lots = {e.id: e.data for e in inventaire.lots}
    by_code: dict[str, list[str]] = defaultdict(list)
    for _, event_id, code, message in sent.refused:
        lot = lots.get(event_id)
        what = f"{lot.uai} {lot.lot_id} ({'retrait' if lot.quantity == 0 else lot.kind})" if lot else event_id
        by_code[code].append(f"    {what} : {message}")
    lines = [f"passerelle : {sent.accepted} lots acceptés, {len(sent.refused)} refusés"]
    for code, refused in sorted(by_code.items()):
        more = len(refused) - SHOWN_REFUSALS
        lines += [f"  refusés, {code} : {len(refused)}", *refused[:SHOWN_REFUSALS]]
        lines += [f"    … ({more} de plus)"] if more > 0 else []
    return "\n".join(lines)


def _dit(line: str) -> None:
    print(f"glpi: {line}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.partenaires.glpi",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inventaires", nargs="+", type=Path, metavar="INVENTAIRE", help="files or directories")
    parser.add_argument("--correspondance", type=Path, required=True, metavar="FICHIER", help="tag/dossier -> UAI")
    parser.add_argument("--declarant", required=True, help="the collectivité, e.g. /collectivites/departements/035")
    parser.add_argument(
        "--etat", type=Path, metavar="FICHIER", help="the lots sent before: retire those gone (required to send)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the lots (JSON lines), send nothing")
    parser.add_argument("--passerelle", default="http://127.0.0.1:8003", help="its URL (default: %(default)s)")
    parser.add_argument(
        "--token",
        help=f"the bearer token (default: ${TOKEN_VARIABLE}, which is better: a command line is shown by ps "
        "to the machine's other users and kept in the shell's history)",
    )
    parser.add_argument(
        "--client-id",
        help=f"the partner system's client at the identity provider (default: ${CLIENT_VARIABLE}): its tokens asked "
        f"with the client-credentials flow at --token-url, with its secret from ${SECRET_VARIABLE}, and asked again "
        "as they expire (a run that reads many files outlives one token)",
    )
    parser.add_argument("--token-url", help=f"the provider's token endpoint (default: ${TOKEN_URL_VARIABLE})")
    parser.add_argument("--jeton-local", action="store_true", help="mint one with the local identity provider")
    parser.add_argument("--data-dir", type=Path, default=data_root() / "platform", help="for --jeton-local")
    args = parser.parse_args(argv)
    if args.dry_run:
        return _run(args)
    if args.etat is None:
        # Without it, a lot whose devices all moved to another (a browser updated on them) stayed
        # counted beside it, never retired: the fleet grew with every run.
        print(
            "glpi: --etat FICHIER est requis pour envoyer : sans l'état des lots déjà envoyés, un lot dont les "
            "appareils sont tous passés à un autre (un navigateur mis à jour) resterait compté à côté, jamais retiré "
            "(--dry-run n'envoie rien)",
            file=sys.stderr,
        )
        return 2
    try:
        verrou = _verrou(args.etat)
    except BlockingIOError:
        print(f"glpi: {args.etat} est pris par une autre exécution : rien n'est envoyé", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"glpi: {args.etat} ne peut pas être écrit ({error}) : rien n'est envoyé", file=sys.stderr)
        return 2
    with verrou:
        return _run(args)


def _verrou(etat: Path) -> IO[str]:
    """The state's lock, held until the returned file is closed (BlockingIOError: another run
    holds it). Two runs on one state would each write theirs from the same former one, and the
    lots one of them sent be forgotten."""
    verrou = open(etat.with_name(etat.name + ".verrou"), "a", encoding="utf-8")  # noqa: SIM115 (closed by the caller)
    try:
        fcntl.flock(verrou, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        verrou.close()
        raise
    return verrou


def _aucun_fichier() -> int:
    """No file read: a folder of another format (XML exports) or the wrong one, not a success."""
    print("glpi: aucun fichier d'inventaire (.json) dans ce qui est donné : rien à envoyer", file=sys.stderr)
    return 2


def _jetons(args: argparse.Namespace) -> Jetons:
    """The run's tokens, checked before its files are read (a région's take minutes): none
    given, one expired, a client the provider refuses are ValueError or RuntimeError, saying why."""
    if args.jeton_local:
        identite = IdentiteLocale(args.data_dir / "identite")
        identite.jeton(args.declarant, subject="glpi")  # the declarant checked now; then one per batch
        return Jetons(lambda _: identite.jeton(args.declarant, subject="glpi"))
    # An explicit --token wins over a client the environment names (left from another run).
    client = args.client_id or ("" if args.token else os.environ.get(CLIENT_VARIABLE, ""))
    if client:
        url, secret = args.token_url or os.environ.get(TOKEN_URL_VARIABLE, ""), os.environ.get(SECRET_VARIABLE, "")
        if not url:
            raise ValueError(f"--client-id sans --token-url ni ${TOKEN_URL_VARIABLE} : où demander ses jetons ?")
        if not secret:
            raise ValueError(f"--client-id sans ${SECRET_VARIABLE} : le secret du client manque")
        _never_in_clear("--token-url", url, "le secret")
        provider = ClientCredentials(url, client, secret)
        asyncio.run(provider.jeton())
        return Jetons(provider.jeton, provider.refused)
    if not (given := args.token or os.environ.get(TOKEN_VARIABLE, "")):
        raise ValueError(
            f"aucun jeton : --client-id (son secret dans ${SECRET_VARIABLE}), --token, ${TOKEN_VARIABLE}, "
            "ou --jeton-local en développement"
        )
    left = _lifetime_left(given)
    if left is not None and left <= 0:
        raise ValueError(f"le jeton donné a expiré il y a {-left:.0f} s : en demander un autre, ou --client-id")
    if left is not None and left < SHORT_LIVED_SECONDS:
        print(
            f"glpi: le jeton donné expire dans {left:.0f} s : un envoi plus long s'arrêtera au premier lot refusé "
            "(401) ; --client-id en demande d'autres à mesure",
            file=sys.stderr,
        )
    return Jetons(lambda _: given)


def _never_in_clear(option: str, url: str, carried: str) -> None:
    """ValueError when `url` would carry `carried` across the network in clear."""
    if in_clear_beyond_this_machine(url):
        raise ValueError(
            f"{option} {url} : https:// attendu (http:// seulement sur cette machine) : "
            f"{carried} irait en clair sur le réseau"
        )


def _lifetime_left(token: str) -> float | None:
    """Seconds until the JWT `token` expires (its `exp`, read without checking its signature:
    the passerelle checks it), None when it does not say or is not a JWT."""
    try:
        payload = token.split(".")[1]
        exp = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))).get("exp")
    except (IndexError, ValueError, binascii.Error, AttributeError):
        return None
    return exp - time.time() if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def _run(args: argparse.Namespace) -> int:
    jetons: Jetons | None = None
    if not args.dry_run:
        try:
            _never_in_clear("--passerelle", args.passerelle, "le jeton")
            jetons = _jetons(args)
        except (ValueError, RuntimeError) as error:
            print(f"glpi: {error}", file=sys.stderr)
            return 2
    try:
        c.parse_source(args.declarant)
        precedent = lire_etat(args.etat, args.declarant) if args.etat else Etat()
        correspondance = Correspondance.lire(args.correspondance)
        inventaire = inventorier(args.inventaires, correspondance, args.declarant, precedent=precedent, progres=_dit)
    except (OSError, ValueError) as error:
        print(f"glpi: {error}", file=sys.stderr)
        return 2
    print(inventaire.resume(), file=sys.stderr)
    if args.dry_run:
        if not inventaire.fichiers:
            return _aucun_fichier()
        for event in inventaire.lots:
            print(event.to_bytes().decode())
        return 0
    assert jetons is not None, "asked before the files were read"
    if not inventaire.fichiers:
        return _aucun_fichier()
    if args.etat:
        # Before sending, that of a run interrupted: a state that cannot be written is found out
        # now, and a run killed while it sends (SIGTERM, SIGKILL, the machine stopping) leaves
        # every lot it may have sent in the state, which the next run retires if gone (the
        # former state left them at the platform for good).
        try:
            ecrire_etat(args.etat, args.declarant, etat_apres(precedent, inventaire, None))
        except OSError as error:
            print(f"glpi: {args.etat} ne peut pas être écrit ({error}) : rien n'est envoyé", file=sys.stderr)
            return 2
    try:
        sent = asyncio.run(publier(inventaire, args.passerelle, jetons))
    except (Exception, KeyboardInterrupt) as error:
        # The batches before this one may be accepted already: sending again is harmless (same
        # ids), and the state holds every lot of the run (none retired), whatever stopped it:
        # the passerelle away, an answer not understood, Ctrl-C. Else a lot the platform took
        # would be unknown to the next run, which could never retire it.
        why = "Ctrl-C" if isinstance(error, KeyboardInterrupt) else str(error) or type(error).__name__
        print(f"glpi: {args.passerelle} : envoi interrompu : {why}", file=sys.stderr)
        if args.etat:
            ecrire_etat(args.etat, args.declarant, etat_apres(precedent, inventaire, None))
        return 2
    print(bilan(sent, inventaire), file=sys.stderr)
    if args.etat:
        refused = {event_id for _, event_id, _, _ in sent.refused}
        ecrire_etat(args.etat, args.declarant, etat_apres(precedent, inventaire, refused))
    return 1 if sent.refused or inventaire.plus_anciens else 0


if __name__ == "__main__":
    sys.exit(main())
