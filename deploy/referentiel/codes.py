"""The annuaire's values: code forms, type / statut / état vocabularies, and the real
département → académie → région table.

The contract compares codes by equality in the annuaire's own forms (département "035",
"02A"; académie "14"; région "53"; commune "35016"), so every code read from a file is put in
that form first. Spreadsheets are the usual culprits: "35" for "035", "14.0" for "14",
"1053" for "01053", "2a" for "2A".
"""

import re
import unicodedata

_FLOAT = re.compile(r"([0-9]+)\.0*")


def _clean(raw: str) -> str:
    s = raw.strip().upper()
    whole = _FLOAT.fullmatch(s)
    return whole[1] if whole else s


def departement(raw: str) -> str | None:
    s = _clean(raw)
    if re.fullmatch(r"0?2[AB]", s):
        return "02" + s[-1]
    return s.zfill(3) if re.fullmatch(r"[0-9]{1,3}", s) and int(s) > 0 else None


def academie(raw: str) -> str | None:
    s = _clean(raw)
    return s.zfill(2) if re.fullmatch(r"[0-9]{1,2}", s) else None


def region(raw: str) -> str | None:
    """Two digits; "00" is what the annuaire gives the collectivités d'outre-mer (983, 987...)."""
    return academie(raw)


def commune(raw: str) -> str | None:
    s = _clean(raw)
    if re.fullmatch(r"[0-9]{4,5}", s):
        return s.zfill(5)
    return s if re.fullmatch(r"2[AB][0-9]{3}", s) else None


def fold(label: str) -> str:
    """`Collège ` -> `COLLEGE`: the exports spell one label with or without accents ("École")."""
    ascii_ = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode()
    return " ".join(ascii_.upper().split())


# Type_etablissement (fr-en-annuaire-education). Everything else (Médico-social, Information et
# orientation, Service Administratif, Autre, empty for STS/CPGE schools) is "autre".
ANNUAIRE_TYPES = {"ECOLE": "ecole", "COLLEGE": "college", "LYCEE": "lycee", "EREA": "erea"}
# nature_uai_libe (BCE nomenclature), by prefix, first match wins; the grouping is the one the
# annuaire itself uses for Type_etablissement (e.g. the SEP of a lycée counts as a lycée).
NATURE_PREFIXES = (
    ("ETAB REGIONAL/LYCEE ENSEIGNEMENT ADAPTE", "erea"),
    ("ETABLISSEMENT REGIONAL D'ENSEIGNT ADAPTE", "erea"),
    ("COLLEGE", "college"),
    ("LYCEE", "lycee"),
    ("SECTION D ENSEIGNEMENT PROFESSIONNEL", "lycee"),
    ("SECTION ENSEIGT GENERAL ET TECHNOLOGIQUE", "lycee"),
    ("ECOLE MATERNELLE", "ecole"),
    ("ECOLE ELEMENTAIRE", "ecole"),
    ("ECOLE DE NIVEAU ELEMENTAIRE", "ecole"),
    ("ECOLE PRIMAIRE", "ecole"),
    ("ECOLE DE PLEIN AIR", "ecole"),
    ("ECOLE AUTONOME DE PERFECTIONNEMENT", "ecole"),
    ("ECOLE REGIONALE DU PREMIER DEGRE", "ecole"),
    ("ECOLE SANS EFFECTIFS PERMANENTS", "ecole"),
)
STATUTS = {"PUBLIC": "public", "PRIVE": "prive"}
# "A FERMER" is still open (it closes at a known date); "A OUVRIR" is not open yet.
ETATS = {"OUVERT": True, "A FERMER": True, "A OUVRIR": False, "FERME": False}


def annuaire_type(label: str) -> str:
    return ANNUAIRE_TYPES.get(fold(label), "autre")


def nature_type(label: str) -> str:
    folded = fold(label)
    return next((t for prefix, t in NATURE_PREFIXES if folded.startswith(prefix)), "autre")


# académie: (région académique, départements). Source: the annuaire de l'éducation's own
# Code_academie / Code_region / Code_departement columns (data.education.gouv.fr, 2024 export;
# académie → région as in DOMAIN.md); the unit tests check it against every collège of
# colleges-france-geolocalisation-2024.csv. Metropolitan France and the five DROM only: the
# collectivités d'outre-mer (975, 977, 978, 986-988) are not part of the generator's France.
ACADEMIES: dict[str, tuple[str, str]] = {
    "01": ("11", "075"),
    "02": ("93", "004 005 013 084"),
    "03": ("27", "025 039 070 090"),
    "04": ("75", "024 033 040 047 064"),
    "06": ("84", "003 015 043 063"),
    "07": ("27", "021 058 071 089"),
    "08": ("84", "007 026 038 073 074"),
    "09": ("32", "059 062"),
    "10": ("84", "001 042 069"),
    "11": ("76", "011 030 034 048 066"),
    "12": ("44", "054 055 057 088"),
    "13": ("75", "016 017 079 086"),
    "14": ("53", "022 029 035 056"),
    "15": ("44", "067 068"),
    "16": ("76", "009 012 031 032 046 065 081 082"),
    "17": ("52", "044 049 053 072 085"),
    "18": ("24", "018 028 036 037 041 045"),
    "19": ("44", "008 010 051 052"),
    "20": ("32", "002 060 080"),
    "22": ("75", "019 023 087"),
    "23": ("93", "006 083"),
    "24": ("11", "077 093 094"),
    "25": ("11", "078 091 092 095"),
    "27": ("94", "02A 02B"),
    "28": ("04", "974"),
    "31": ("02", "972"),
    "32": ("01", "971"),
    "33": ("03", "973"),
    "43": ("06", "976"),
    "70": ("28", "014 027 050 061 076"),
}
# département -> (académie, région)
DEPARTEMENTS: dict[str, tuple[str, str]] = {
    dep: (academie_, region_) for academie_, (region_, deps) in ACADEMIES.items() for dep in deps.split()
}


def uai_prefix(departement_: str) -> str:
    """The three digits a UAI starts with: the département, except Corsica's 620 / 720."""
    return {"02A": "620", "02B": "720"}.get(departement_, departement_)


def commune_prefix(departement_: str) -> str:
    """The INSEE commune code's département part: "35", "2A", or the three digits overseas."""
    return departement_ if departement_.startswith("97") else departement_[1:]
