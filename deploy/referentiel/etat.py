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
least), the load stops unless confirmed.
"""

import json
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from contracts import Etablissement

from .csv_formats import Loaded

MAX_SHARE = 0.05
MIN_REFUSED = 10


class _Etat(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    etablissements: dict[str, Etablissement]


class EtatError(ValueError):
    """A state file that cannot be read as one: named, never overwritten."""


def lire(path: Path) -> dict[str, Etablissement]:
    """The établissements published before, by UAI; none when the file does not exist yet (a
    first load)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        return _Etat.model_validate_json(data).etablissements
    except ValidationError as e:
        where = ".".join(str(part) for part in e.errors()[0]["loc"])
        raise EtatError(f"{path}: not a référentiel state: {where or 'the file'}: {e.errors()[0]['msg']}") from None


def ecrire(path: Path, held: dict[str, Etablissement]) -> None:
    """The state after a load, written whole or not at all (a load stopped midway keeps the
    former one: its closures are found again)."""
    body = json.dumps(
        {"etablissements": {uai: e.model_dump(mode="json") for uai, e in sorted(held.items())}},
        ensure_ascii=False,
        indent=1,
    )
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def fermetures(held: dict[str, Etablissement], loaded: Loaded) -> tuple[list[Etablissement], int]:
    """The établissements to close (published open before, in the file's scope, on none of its
    lines), as they were with `ouvert: false`; and how many published open are in that scope."""
    scope = {(e.code_departement, e.type) for e in loaded.etablissements}
    listed = {e.uai for e in loaded.etablissements} | {s.uai for s in loaded.skipped if s.uai}
    in_scope = [e for e in held.values() if e.ouvert and (e.code_departement, e.type) in scope]
    closing = [e.model_copy(update={"ouvert": False}) for e in in_scope if e.uai not in listed]
    return sorted(closing, key=lambda e: e.uai), len(in_scope)


def trop(closing: int, in_scope: int) -> bool:
    """Whether that many closures look like a file cut short or of another scope."""
    return closing > max(MIN_REFUSED, MAX_SHARE * in_scope)
