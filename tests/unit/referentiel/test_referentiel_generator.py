"""Generated établissements are reproducible, carry valid unique UAIs and real, consistent codes,
follow the national mix, and read back through the loader unchanged."""

import csv
from collections import Counter

import pytest

from contracts import is_valid_uai
from deploy.referentiel import NATIONAL_MIX, codes, generate, load, scale_mix, write_annuaire
from deploy.referentiel.__main__ import main


def test_the_same_seed_gives_the_same_etablissements_and_another_seed_others():
    assert list(generate(500, seed=7)) == list(generate(500, seed=7))
    assert list(generate(500, seed=7)) != list(generate(500, seed=8))
    assert list(generate(50, seed=7, departement="035")) == list(generate(50, seed=7, departement="35"))


def test_uais_are_valid_and_unique_at_full_national_scale():
    etabs = list(generate(sum(NATIONAL_MIX.values()), seed=1))
    uais = [e.uai for e in etabs]
    assert all(is_valid_uai(u) for u in uais) and len(set(uais)) == len(uais)
    assert Counter(e.type for e in etabs) == NATIONAL_MIX


def test_codes_are_consistent_with_the_departement_table():
    for e in generate(5_000, seed=2):
        assert codes.DEPARTEMENTS[e.code_departement] == (e.code_academie, e.code_region)
        assert e.uai.startswith(codes.uai_prefix(e.code_departement))
        assert e.code_commune.startswith(codes.commune_prefix(e.code_departement))


def test_the_departement_table_matches_every_college_of_france(shared_data):
    with open(shared_data / "colleges-france-geolocalisation-2024.csv", encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    in_table = [r for r in rows if r["code_departement"] in codes.DEPARTEMENTS]
    assert {r["code_departement"] for r in in_table} == set(codes.DEPARTEMENTS)  # 101, each with collèges
    for r in in_table:
        assert codes.DEPARTEMENTS[r["code_departement"]] == (r["code_academie"], r["code_region"]), r["numero_uai"]
        assert r["numero_uai"].startswith(codes.uai_prefix(r["code_departement"])), r["numero_uai"]
        assert r["code_commune"].startswith(codes.commune_prefix(r["code_departement"])), r["numero_uai"]


@pytest.mark.parametrize("count", [0, 1, 7, 300, 1_000, 12_345])
def test_a_count_is_split_in_the_national_proportions(count):
    mix = scale_mix(count)
    total = sum(NATIONAL_MIX.values())
    assert sum(mix.values()) == count
    assert all(abs(mix[t] - count * n / total) < 1 for t, n in NATIONAL_MIX.items())
    assert Counter(e.type for e in generate(count, seed=3)) == {t: n for t, n in mix.items() if n}


def test_the_full_mix_has_a_few_erea_and_an_explicit_mix_is_followed():
    assert 0 < scale_mix(sum(NATIONAL_MIX.values()))["erea"] < 100
    assert Counter(e.type for e in generate({"lycee": 3, "erea": 2, "autre": 1}, seed=4)) == {
        "lycee": 3,
        "erea": 2,
        "autre": 1,
    }


@pytest.mark.parametrize(
    "departement, academie, region, uai_prefix, commune_prefix",
    [
        ("035", "14", "53", "035", "35"),
        ("2A", "27", "94", "620", "2A"),
        ("02B", "27", "94", "720", "2B"),
        ("974", "28", "04", "974", "974"),
    ],
)
def test_one_departement_mode_keeps_every_etablissement_in_it(
    departement, academie, region, uai_prefix, commune_prefix
):
    etabs = list(generate(300, seed=5, departement=departement))
    assert len(etabs) == 300
    for e in etabs:
        assert (e.code_academie, e.code_region) == (academie, region)
        assert e.code_departement == codes.departement(departement)
        assert e.uai.startswith(uai_prefix) and e.code_commune.startswith(commune_prefix)


def test_unknown_departements_and_overfull_ones_are_refused():
    with pytest.raises(ValueError, match="unknown département"):
        generate(10, seed=0, departement="988")
    with pytest.raises(ValueError, match="a UAI prefix holds 10,000"):
        generate(10_001, seed=0, departement="035")
    with pytest.raises(ValueError, match="a mix maps"):
        generate({"universite": 1}, seed=0)


def test_a_generated_csv_reads_back_through_the_loader(tmp_path):
    etabs = list(generate(2_000, seed=6))
    assert {e.ouvert for e in etabs} == {True, False} and {e.statut for e in etabs} == {"public", "prive"}
    path = tmp_path / "generated.csv"
    assert write_annuaire(etabs, path) == 2_000

    loaded = load(path)

    assert loaded.format == "fr-en-annuaire-education" and loaded.skipped == []
    assert loaded.etablissements == etabs


def test_the_cli_writes_a_departement_csv(tmp_path, capsys):
    path = tmp_path / "035.csv"
    assert main(["generate", "--departement", "035", "--count", "300", "--seed", "9", "--csv", str(path)]) == 0
    assert load(path).etablissements == list(generate(300, seed=9, departement="035"))
    assert "generated 300 (seed 9)" in capsys.readouterr().out
