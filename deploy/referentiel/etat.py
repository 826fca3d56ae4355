"""What the référentiel holds from this loader (`load --etat FICHIER`): each établissement as it
was last published, so that one an export no longer lists is closed.

The annuaire's exports list the établissements that are open (`OUVERT`, `A FERMER`; the
geolocalisation's `A OUVRIR` too): one that closes, merges or is renumbered drops out of the
next export, and nothing said so to the platform, which kept it open for good, its pairs
evaluated and its alerts never resolved (audit s72 F1). With the state of the loads before, an
établissement published open, in the file's scope (a département and a type the file holds:
the collèges' national file closes no école) and on none of its lines (a row skipped for a bad
code still names its UAI) is published again with `ouvert: false`. A file cut short or of
another scope would close many: beyond `MAX_SHARE` of those in scope (and `MIN_REFUSED` at
least), or of one of its (département, type), the load stops unless confirmed. A state holds
one kind of export's loads (its format), is made by a first load told so, and is written only
once what it says was published.
"""

import json
import os
import tempfile
from collections import Counter
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from contracts import Etablissement

from .csv_formats import Loaded

MAX_SHARE = 0.05
MIN_REFUSED = 10


class _Etat(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    format: str
    etablissements: dict[str, Etablissement]


class EtatError(ValueError):
    """A state file that cannot be used: named, never overwritten."""


def lire(path: Path, fmt: str, nouveau: bool) -> dict[str, Etablissement]:
    """The établissements the loads of exports of format `fmt` published before, by UAI. A file
    that does not exist is an error unless `nouveau` (a first load: nothing to close): a path
    mistyped was a first load again, and what closed since the last never closed. A state of
    another format is refused: the collèges' national file and a département's annuaire differ
    in what they list and when (one of 2024 closed collèges a 2023 annuaire did not list yet)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if nouveau:
            return {}
        raise EtatError(f"{path}: no such state; --nouvel-etat to make it at this first load") from None
    if nouveau:
        raise EtatError(f"{path}: a state exists already; --nouvel-etat makes a new one only")
    try:
        held = _Etat.model_validate_json(data)
    except ValidationError as e:
        where = ".".join(str(part) for part in e.errors()[0]["loc"])
        raise EtatError(f"{path}: not a référentiel state: {where or 'the file'}: {e.errors()[0]['msg']}") from None
    if held.format != fmt:
        raise EtatError(f"{path}: the state of the loads of {held.format} exports, not {fmt}: one state per kind")
    return held.etablissements


def inscriptible(path: Path) -> None:
    """The state can be written where it is: checked before anything is published (found after,
    every load published and then failed, and none closed anything)."""
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as e:
        raise EtatError(f"{path}: the state cannot be written there ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(temporary)


def ecrire(path: Path, fmt: str, held: dict[str, Etablissement]) -> None:
    """The state after a load, written whole or not at all (a load stopped midway keeps the
    former one: its closures are found again)."""
    body = json.dumps(
        {"format": fmt, "etablissements": {uai: e.model_dump(mode="json") for uai, e in sorted(held.items())}},
        ensure_ascii=False,
        indent=1,
    )
    try:
        mode = path.stat().st_mode & 0o777  # the operator's, if they set one
    except FileNotFoundError:
        mode = 0o644  # public data, as the export it follows (mkstemp's is 0600)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def fermetures(
    held: dict[str, Etablissement], loaded: Loaded
) -> tuple[list[Etablissement], dict[tuple[str, str], int]]:
    """The établissements to close (published open before, in the file's scope, on none of its
    lines), as they were with `ouvert: false`; and how many are published open in each
    (département, type) of that scope."""
    scope = {(e.code_departement, e.type) for e in loaded.etablissements}
    listed = {e.uai for e in loaded.etablissements} | {s.uai for s in loaded.skipped if s.uai}
    in_scope = [e for e in held.values() if e.ouvert and (e.code_departement, e.type) in scope]
    closing = [e.model_copy(update={"ouvert": False}) for e in in_scope if e.uai not in listed]
    return sorted(closing, key=lambda e: e.uai), dict(Counter((e.code_departement, e.type) for e in in_scope))


def trop(closing: list[Etablissement], in_scope: dict[tuple[str, str], int]) -> str | None:
    """Where so many closures look like a file cut short or of another scope: beyond MAX_SHARE
    (and MIN_REFUSED) of those open in its scope, or of one of its (département, type) (a national
    file that lost most of a département's lines is 3 % of the whole); None when nowhere."""
    if len(closing) > max(MIN_REFUSED, MAX_SHARE * sum(in_scope.values())):
        return "its scope"
    for (departement, type_), count in sorted(Counter((e.code_departement, e.type) for e in closing).items()):
        if count > max(MIN_REFUSED, MAX_SHARE * in_scope[departement, type_]):
            return f"its {type_}s of {departement}"
    return None
