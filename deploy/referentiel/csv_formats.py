"""The ministry's two CSV exports of établissements, read into `Etablissement`s (and one written).

The annuaire de l'éducation comes in two shapes: `fr-en-annuaire-education` (one row per
établissement, `Type_etablissement` says école / collège / lycée...) and
`fr-en-adresse-et-geolocalisation-etablissements-premier-et-second-degre` (`nature_uai_libe`
gives the BCE nature, e.g. "COLLEGE SPECIALISE"). Both are `;`-separated UTF-8 with a BOM.

A row that cannot become an `Etablissement` is skipped with a reason: one bad line of a
66,000-line export must not hold back the others. A file that is not such an export at all,
holds no data row, or was cut short (a partial download) raises `CsvFormatError`: loading
nothing, or a truncated référentiel, quietly would look like a complete one.
"""

import csv
import io
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from contracts import Etablissement, is_valid_uai
from contracts._base import MAX_TEXT

from . import codes
from .codes import ETATS, STATUTS, annuaire_type, fold, nature_type


class CsvFormatError(ValueError):
    """The file is not one of the annuaire's CSV exports; says which file and why."""

    def __init__(self, source: str, problem: str):
        super().__init__(f"{source}: {problem}")


@dataclass(frozen=True)
class Skipped:
    line: int
    uai: str
    reason: str  # a stable code, e.g. "uai-invalide", so that a summary can count them
    detail: str


@dataclass
class Loaded:
    source: str
    format: str
    rows: int = 0
    etablissements: list[Etablissement] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def by_type(self) -> Counter[str]:
        return Counter(e.type for e in self.etablissements)

    def skipped_by_reason(self) -> Counter[str]:
        return Counter(s.reason for s in self.skipped)


@dataclass(frozen=True)
class CsvFormat:
    name: str
    uai: str
    noms: tuple[str, ...]  # tried in order: the first non-empty one names the établissement
    type: str
    type_of: Callable[[str], str]
    statut: str
    commune: str
    departement: str
    academie: str
    region: str
    etat: str

    @property
    def required(self) -> tuple[str, ...]:
        columns = (
            self.uai,
            *self.noms,
            self.type,
            self.statut,
            self.commune,
            self.departement,
            self.academie,
            self.region,
            self.etat,
        )
        return tuple(dict.fromkeys(columns))  # nature_uai_libe both names and types


ANNUAIRE = CsvFormat(
    "fr-en-annuaire-education",
    "Identifiant_de_l_etablissement",
    ("Nom_etablissement",),
    "Type_etablissement",
    annuaire_type,
    "Statut_public_prive",
    "Code_commune",
    "Code_departement",
    "Code_academie",
    "Code_region",
    "etat",
)
GEOLOCALISATION = CsvFormat(
    "fr-en-adresse-et-geolocalisation",
    "numero_uai",
    ("appellation_officielle", "denomination_principale", "nature_uai_libe"),
    "nature_uai_libe",
    nature_type,
    "secteur_public_prive_libe",
    "code_commune",
    "code_departement",
    "code_academie",
    "code_region",
    "etat_etablissement_libe",
)
FORMATS = (ANNUAIRE, GEOLOCALISATION)


def load(path: str | Path) -> Loaded:
    """Read one export; CsvFormatError if it is not UTF-8 or not one of the two formats."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CsvFormatError(
            str(path), f"not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); the annuaire exports are UTF-8"
        ) from None
    return parse(text, str(path))


def parse(text: str, source: str = "<csv>") -> Loaded:
    lines = io.StringIO(text.removeprefix("\ufeff"), newline="")
    # strict: a quote left open near the end took the rest of the file as one field, those rows
    # gone without a word (audit s64 GLPI #6); now a CsvFormatError naming the line.
    reader = csv.reader(lines, delimiter=";", strict=True)
    header = [h.strip() for h in next(reader, [])]
    if not any(header):
        raise CsvFormatError(source, "empty file, expected a header row")
    fmt = _detect(header, source)
    loaded = Loaded(source, fmt.name)
    seen: dict[str, tuple[int, int]] = {}  # UAI -> its line, and its place among the établissements
    last_columns = 0
    try:
        for row in reader:
            last_columns = len(row)
            if not any(row):
                continue
            loaded.rows += 1
            result = _map_row(fmt, header, row, reader.line_num)
            if isinstance(result, Etablissement) and result.uai in seen:
                # One UAI on several lines (établissement_multi_lignes: an annex's): one is kept,
                # since two states of one entity with no order would race; the first, unless it
                # is an annex's and this one is not (its name and commune were the annex's).
                line, at = seen[result.uai]
                if _annexe(kept := loaded.etablissements[at]) and not _annexe(result):
                    loaded.etablissements[at], seen[result.uai] = result, (reader.line_num, at)
                    result = Skipped(line, kept.uai, "uai-en-double", f"une annexe de la ligne {reader.line_num}")
                else:
                    result = Skipped(reader.line_num, result.uai, "uai-en-double", f"déjà lu ligne {line}")
            if isinstance(result, Skipped):
                loaded.skipped.append(result)
            else:
                seen[result.uai] = (reader.line_num, len(loaded.etablissements))
                loaded.etablissements.append(result)
    except csv.Error as e:
        raise CsvFormatError(source, f"line {reader.line_num}: not a valid CSV ({e})") from None
    if not loaded.rows:
        raise CsvFormatError(source, "no data row, only the header")
    # The exports end every line with a line break: a file that does not was cut, and its
    # last row may be shorter or hold a partial value.
    if not text.endswith(("\n", "\r")):
        line = reader.line_num
        if last_columns < len(header):
            raise CsvFormatError(
                source, f"line {line} is cut short: {last_columns} of {len(header)} columns; the file looks truncated"
            )
        raise CsvFormatError(source, f"line {line} ends without a line break; the file looks truncated")
    return loaded


def _annexe(etab: Etablissement) -> bool:
    """Whether the line is an annex's (its name says so: "Collège Saint-Paul (annexe du collège
    Saint-Joseph, Bruz)", "Lycée J-M de la Mennais - annexe Assomption"; the national file names
    annexes "Annexe …" too), not the établissement's own."""
    return "annexe" in etab.nom.casefold()


def _detect(header: list[str], source: str) -> CsvFormat:
    if len(header) == 1:
        other = next((sep for sep in ",\t|" if sep in header[0]), None)
        found = f" (it uses {other!r})" if other else ""
        raise CsvFormatError(source, f"not a ';'-separated CSV{found}: the header has a single column")
    for fmt in FORMATS:
        if set(fmt.required) <= set(header):
            return fmt
    missing = "; ".join(f"{fmt.name} lacks {', '.join(c for c in fmt.required if c not in header)}" for fmt in FORMATS)
    raise CsvFormatError(source, f"unknown header, not an annuaire export ({missing})")


def _map_row(fmt: CsvFormat, header: list[str], cells: list[str], line: int) -> Etablissement | Skipped:
    row = dict(zip(header, cells, strict=False))

    def value(column: str) -> str:
        return (row.get(column) or "").strip()

    uai = value(fmt.uai).upper()
    if len(cells) < len(header):
        return Skipped(line, uai, "colonnes-manquantes", f"{len(cells)} colonnes sur {len(header)}")
    if not is_valid_uai(uai):
        return Skipped(line, uai, "uai-invalide", f"UAI {uai!r} (7 chiffres et la lettre de contrôle)")
    statut = STATUTS.get(fold(value(fmt.statut)))
    if statut is None and not value(fmt.statut) and fold(value(fmt.type)) == "SERVICE ADMINISTRATIF":
        statut = "public"  # rectorat, DSDEN, circonscriptions: State services left without a secteur
    ouvert = ETATS.get(fold(value(fmt.etat)))
    fields = {
        "commune": codes.commune(value(fmt.commune)),
        "departement": codes.departement(value(fmt.departement)),
        "academie": codes.academie(value(fmt.academie)),
        "region": codes.region(value(fmt.region)),
        "statut": statut,
        "etat": ouvert,
    }
    for name, normalised in fields.items():
        if normalised is None:
            column = getattr(fmt, name)
            return Skipped(line, uai, f"{name}-invalide", f"{column} = {value(column)!r}")
    nom = next((value(c) for c in fmt.noms if value(c)), "")
    if len(nom) > MAX_TEXT:  # the contract refuses it, never cut (two rows merged by a stray quote, say)
        return Skipped(line, uai, "nom-trop-long", f"{len(nom)} caractères, {MAX_TEXT} au plus")
    if "\x00" in nom:  # the contract refuses it in any text (no text column stores it): said here, not at the DLQ
        return Skipped(line, uai, "nom-invalide", "caractère NUL (\\u0000) interdit dans un texte")
    # The checks above give exactly the forms the contract requires, so this cannot raise.
    return Etablissement.model_validate(
        dict(
            uai=uai,
            nom=nom,
            type=fmt.type_of(value(fmt.type)),
            statut=statut,
            code_commune=fields["commune"],
            code_departement=fields["departement"],
            code_academie=fields["academie"],
            code_region=fields["region"],
            ouvert=ouvert,
        )
    )


ANNUAIRE_LABELS = {"ecole": "Ecole", "college": "Collège", "lycee": "Lycée", "erea": "EREA", "autre": "Autre"}


def write_annuaire(etablissements: Iterable[Etablissement], path: str | Path) -> int:
    """Write a fr-en-annuaire-education CSV (`;`, UTF-8 with BOM); returns the rows written.

    Only the columns `load` needs, under the annuaire's own names and labels, so that generated
    établissements go through the same loader as real ones.
    """
    with open(path, "w", encoding="utf-8-sig", newline="") as out:
        writer = csv.writer(out, delimiter=";", lineterminator="\n")
        writer.writerow(ANNUAIRE.required)
        count = 0
        for e in etablissements:
            writer.writerow(
                (
                    e.uai,
                    e.nom,
                    ANNUAIRE_LABELS[e.type],
                    "Public" if e.statut == "public" else "Privé",
                    e.code_commune,
                    e.code_departement,
                    e.code_academie,
                    e.code_region,
                    "OUVERT" if e.ouvert else "FERME",
                )
            )
            count += 1
    return count
