"""The académies' names the dashboard shows (api_tableau.NOMS_ACADEMIES), checked against the
ministry's own: the annuaire's collèges, every académie of it with its `libelle_academie`."""

import csv

from services.ressources.api_tableau import NOMS_ACADEMIES


def _folded(name: str) -> str:
    """The annuaire writes `Nouvelle Calédonie`, `Polynésie Française`: the official names have
    hyphens and a lower-case adjective."""
    return name.replace("-", " ").casefold()


def test_every_academie_of_the_annuaire_has_its_name(shared_data):
    with open(shared_data / "colleges-france-geolocalisation-2024.csv", encoding="utf-8-sig", newline="") as f:
        annuaire = {(r["code_academie"], r["libelle_academie"]) for r in csv.DictReader(f, delimiter=";")}
    assert len({code for code, _ in annuaire}) == len(annuaire) > 30, "one name per code, most académies"
    for code, libelle in sorted(annuaire):
        assert code in NOMS_ACADEMIES, f"académie {code} ({libelle}) has no name"
        assert _folded(NOMS_ACADEMIES[code]) == _folded(libelle), code
    assert set(NOMS_ACADEMIES) == {code for code, _ in annuaire}, "no name for a code the annuaire has not"
