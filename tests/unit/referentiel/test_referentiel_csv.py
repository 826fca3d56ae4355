"""The loader reads both real annuaire exports in ../shared/data with the documented counts,
skips unmappable rows with a reason, and refuses what is not an annuaire export at all."""

import csv
from collections import Counter

import pytest

from contracts import is_valid_uai
from deploy.referentiel import CsvFormatError, codes, load, parse
from deploy.referentiel.__main__ import main
from deploy.referentiel.codes import annuaire_type, nature_type

ILLE_ET_VILAINE = "annuaire-education-ille-et-vilaine-2023.csv"
FRANCE_COLLEGES = "colleges-france-geolocalisation-2024.csv"
# The documented mapping, restated here so that the loader's own table is checked against it.
TYPE_ETABLISSEMENT = {"Ecole": "ecole", "École": "ecole", "Collège": "college", "Lycée": "lycee", "EREA": "erea"}
COLLEGE_NATURES = {"COLLEGE", "COLLEGE SPECIALISE", "COLLEGE CLIMATIQUE"}
ANNUAIRE_HEADER = (
    "Identifiant_de_l_etablissement;Nom_etablissement;Type_etablissement;Statut_public_prive;"
    "Code_commune;Code_departement;Code_academie;Code_region;etat"
)


def raw_rows(path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f, delimiter=";"))


def test_ille_et_vilaine_loads_with_the_documented_counts_less_the_repeated_uais(shared_data):
    rows = raw_rows(shared_data / ILLE_ET_VILAINE)
    raw = Counter(TYPE_ETABLISSEMENT.get(r["Type_etablissement"], "autre") for r in rows)
    assert len(rows) == 996
    assert (raw["ecole"], raw["college"], raw["lycee"]) == (685, 117, 86)  # DOMAIN.md

    loaded = load(shared_data / ILLE_ET_VILAINE)

    assert loaded.format == "fr-en-annuaire-education" and loaded.rows == 996
    # Three établissements span two lines each (etablissement_multi_lignes): the first line is
    # kept, unless it is an annex's and the other is not (0350852L's first line, in Bruz, was
    # "Collège Saint-Paul (annexe du collège Saint-Joseph, Bruz)": audit s72 F6).
    first_lines: dict[str, dict] = {}
    for r in rows:
        held = first_lines.setdefault(r["Identifiant_de_l_etablissement"], r)
        if "annexe" in held["Nom_etablissement"].lower() and "annexe" not in r["Nom_etablissement"].lower():
            first_lines[r["Identifiant_de_l_etablissement"]] = r
    expected = Counter(TYPE_ETABLISSEMENT.get(r["Type_etablissement"], "autre") for r in first_lines.values())
    assert loaded.by_type() == expected
    assert loaded.skipped_by_reason() == {"uai-en-double": len(rows) - len(first_lines)} == {"uai-en-double": 3}
    assert [e.nom for e in loaded.etablissements] == [r["Nom_etablissement"] for r in first_lines.values()]
    saint_joseph = next(e for e in loaded.etablissements if e.uai == "0350852L")
    assert (saint_joseph.nom, saint_joseph.code_commune) == ("Collège Saint-Joseph", "35047")


def test_ille_et_vilaine_codes_are_kept_in_the_annuaire_forms(shared_data):
    loaded = load(shared_data / ILLE_ET_VILAINE)
    by_uai = {e.uai: e for e in loaded.etablissements}
    for r in raw_rows(shared_data / ILLE_ET_VILAINE):
        e = by_uai[r["Identifiant_de_l_etablissement"]]
        assert (e.code_departement, e.code_academie, e.code_region) == ("035", "14", "53")
        assert e.code_commune.startswith("35") and len(e.code_commune) == 5
    # Rectorat, DSDEN and circonscriptions have no secteur in the file: State services, public.
    services = [e for e in loaded.etablissements if e.nom.startswith(("Rectorat", "DSDEN", "Circonscription"))]
    assert services and all(e.statut == "public" and e.type == "autre" for e in services)


def test_france_colleges_load_as_7654_colleges_in_34_academies(shared_data):
    rows = raw_rows(shared_data / FRANCE_COLLEGES)
    assert len(rows) == 7654 and {r["nature_uai_libe"] for r in rows} == COLLEGE_NATURES

    loaded = load(shared_data / FRANCE_COLLEGES)

    assert loaded.format == "fr-en-adresse-et-geolocalisation" and loaded.skipped == []
    assert loaded.by_type() == {"college": 7654}  # DOMAIN.md
    assert len({e.code_academie for e in loaded.etablissements}) == 34
    raw = {r["numero_uai"]: r for r in rows}
    for e in loaded.etablissements:
        r = raw[e.uai]
        assert (e.code_commune, e.code_departement, e.code_academie, e.code_region) == (
            r["code_commune"],
            r["code_departement"],
            r["code_academie"],
            r["code_region"],
        )
        assert e.statut == {"Public": "public", "Privé": "prive"}[r["secteur_public_prive_libe"]]
        assert e.nom  # the three rows without appellation_officielle fall back to another name


@pytest.mark.parametrize("name", [ILLE_ET_VILAINE, FRANCE_COLLEGES])
def test_every_loaded_uai_is_valid_and_loaded_once(shared_data, name):
    uais = [e.uai for e in load(shared_data / name).etablissements]
    assert all(is_valid_uai(u) for u in uais) and len(set(uais)) == len(uais)


def test_not_yet_open_colleges_are_not_ouvert_and_to_be_closed_ones_still_are(shared_data):
    etat = {r["numero_uai"]: r["etat_etablissement_libe"] for r in raw_rows(shared_data / FRANCE_COLLEGES)}
    loaded = load(shared_data / FRANCE_COLLEGES)
    closed = {e.uai for e in loaded.etablissements if not e.ouvert}
    assert closed == {u for u, libe in etat.items() if libe != "OUVERT"} and len(closed) == 13

    a_fermer = [
        r["Identifiant_de_l_etablissement"] for r in raw_rows(shared_data / ILLE_ET_VILAINE) if r["etat"] == "A FERMER"
    ]
    annuaire = {e.uai: e for e in load(shared_data / ILLE_ET_VILAINE).etablissements}
    assert a_fermer and all(annuaire[u].ouvert for u in a_fermer)


@pytest.mark.parametrize(
    ("lines", "kept"),
    [
        (["Collège Saint-Paul (annexe du collège Saint-Joseph, Bruz)", "Collège Saint-Joseph"], 1),
        (["Lycée Assomption", "Lycée J-M de la Mennais - annexe Assomption"], 0),
        (["Annexe du collège Pierre Ardinet", "Collège Pierre Ardinet"], 1),  # as the national file names some
        (["Lycée A (annexe)", "Lycée B (annexe)"], 0),  # both an annex's: the first, as any other
    ],
)
def test_a_uai_on_two_lines_is_published_from_the_etablissement_s_own(lines, kept):
    rows = [f"0350852L;{nom};Collège;Privé;{35047 + n};035;14;53;OUVERT" for n, nom in enumerate(lines)]
    loaded = parse("\n".join([ANNUAIRE_HEADER, *rows, ""]), "inline.csv")
    assert [(e.nom, e.code_commune) for e in loaded.etablissements] == [(lines[kept], str(35047 + kept))]
    assert [(s.line, s.reason) for s in loaded.skipped] == [(3 - kept, "uai-en-double")]


def test_unmappable_rows_are_skipped_with_a_reason_and_the_others_loaded():
    text = "\n".join(
        [
            "\ufeff" + ANNUAIRE_HEADER,
            "0350852L;Collège Saint-Joseph;Collège;Privé;35047;35;14.0;53;OUVERT",
            "0350852M;Mauvaise lettre;Collège;Public;35047;035;14;53;OUVERT",
            "0351383N;Sans département;Ecole;Privé;35238;;14;53;OUVERT",
            "0350122T;Statut inconnu;Ecole;Associatif;35016;035;14;53;OUVERT",
            "0350778F;Etat inconnu;Lycée;Privé;35238;035;14;53;EN TRAVAUX",
            "0352072M;Commune courte;Lycée;Privé;353;035;14;53;FERME",
            f"0350002M;{'X' * 300};Lycée;Privé;35238;035;14;53;OUVERT",
            "0350003N;Lycée\x00 NUL;Lycée;Privé;35238;035;14;53;OUVERT",
            "",
        ]
    )
    loaded = parse(text, "inline.csv")
    assert [(e.uai, e.code_departement, e.code_academie) for e in loaded.etablissements] == [("0350852L", "035", "14")]
    assert [(s.line, s.uai, s.reason) for s in loaded.skipped] == [
        (3, "0350852M", "uai-invalide"),
        (4, "0351383N", "departement-invalide"),
        (5, "0350122T", "statut-invalide"),
        (6, "0350778F", "etat-invalide"),
        (7, "0352072M", "commune-invalide"),
        (8, "0350002M", "nom-trop-long"),  # the contract refuses it, never cut: the row, not the file
        (9, "0350003N", "nom-invalide"),  # a NUL, which the contract refuses in any text: it was published
    ]
    assert all(s.detail for s in loaded.skipped) and loaded.rows == 8


@pytest.mark.parametrize(
    "normalise, raw, expected",
    [
        (codes.departement, "035", "035"),
        (codes.departement, "35", "035"),
        (codes.departement, "35.0", "035"),
        (codes.departement, "1", "001"),
        (codes.departement, "974", "974"),
        (codes.departement, "2A", "02A"),
        (codes.departement, "02b", "02B"),
        (codes.departement, "0", None),
        (codes.departement, "A35", None),
        (codes.departement, "", None),
        (codes.academie, "14", "14"),
        (codes.academie, "14.0", "14"),
        (codes.academie, "4", "04"),
        (codes.academie, "140", None),
        (codes.academie, "14.5", None),
        (codes.region, "53", "53"),
        (codes.region, "00", "00"),
        (codes.region, "4.0", "04"),
        (codes.commune, "35016", "35016"),
        (codes.commune, "1053", "01053"),
        (codes.commune, "35016.0", "35016"),
        (codes.commune, "2a004", "2A004"),
        (codes.commune, "97411", "97411"),
        (codes.commune, "353", None),
    ],
)
def test_codes_are_put_in_the_annuaire_form(normalise, raw, expected):
    assert normalise(raw) == expected


@pytest.mark.parametrize(
    "label, expected",
    [
        ("Ecole", "ecole"),
        ("École", "ecole"),
        ("Collège", "college"),
        ("Lycée", "lycee"),
        ("EREA", "erea"),
        ("Médico-social", "autre"),
        ("Information et orientation", "autre"),
        ("Service Administratif", "autre"),
        ("Autre", "autre"),
        ("", "autre"),
    ],
)
def test_type_etablissement_maps_to_our_types(label, expected):
    assert annuaire_type(label) == expected


@pytest.mark.parametrize(
    "label, expected",
    [
        ("ECOLE MATERNELLE", "ecole"),
        ("ECOLE DE NIVEAU ELEMENTAIRE SPECIALISEE", "ecole"),
        ("ECOLE ELEMENTAIRE D APPLICATION", "ecole"),
        ("COLLEGE CLIMATIQUE", "college"),
        ("LYCEE PROFESSIONNEL", "lycee"),
        ("LYCEE ENS GENERAL TECHNO PROF AGRICOLE", "lycee"),
        ("SECTION D ENSEIGNEMENT PROFESSIONNEL", "lycee"),
        ("ETAB REGIONAL/LYCEE ENSEIGNEMENT ADAPTE", "erea"),
        ("ETABLISSEMENT REGIONAL D'ENSEIGNT ADAPTE", "erea"),
        ("ECOLES COMPOSEES UNIQT DE STS ET OU CPGE", "autre"),
        ("ECOLE SECONDAIRE SPECIALISEE (2 D CYCLE)", "autre"),
        ("INSTITUT MEDICO-EDUCATIF", "autre"),
        ("SECTION ENSEIGNT GEN. ET PROF. ADAPTE", "autre"),
    ],
)
def test_nature_uai_libe_maps_to_our_types(label, expected):
    assert nature_type(label) == expected


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"uai,nom,type\n0350852L,College,college\n", r"not a ';'-separated CSV \(it uses ','\)"),
        (
            b"\xef\xbb\xbfuai;nom;type\n0350852L;College;college\n",
            r"unknown header.*lacks Identifiant_de_l_etablissement",
        ),
        (
            ANNUAIRE_HEADER.encode() + "\n0350852L;Collège;Collège;Privé;35047;035;14;53;OUVERT\n".encode("latin-1"),
            r"not UTF-8 \(byte 0xe8 at offset \d+\)",
        ),
        (b"", "empty file"),
        (b"\xef\xbb\xbf\n", "empty file"),
        # A quote left open near the end: the rest of the file was one field, its rows gone
        # without a word, exit 0 (audit s64 GLPI #6).
        (
            "\n".join(
                [
                    ANNUAIRE_HEADER,
                    "0350852L;Collège Saint-Joseph;Collège;Privé;35047;035;14;53;OUVERT",
                    '0350122T;"Ecole Les Lucioles;Ecole;Public;35016;035;14;53;OUVERT',
                    "0350778F;Lycée;Lycée;Privé;35238;035;14;53;OUVERT",
                    "",
                ]
            ).encode(),
            r"line \d+: not a valid CSV \(unexpected end of data\)",
        ),
    ],
)
def test_a_malformed_file_raises_an_error_naming_the_file_and_the_problem(tmp_path, content, problem):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(CsvFormatError, match=problem) as error:
        load(path)
    assert str(error.value).startswith(f"{path}: ")


def test_the_cli_exits_non_zero_with_one_line_on_a_malformed_file(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"a,b\n1,2\n")
    assert main(["load", str(path), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}: not a ';'-separated CSV")


def test_the_cli_dry_run_summarises_types_and_skip_reasons_in_the_conditional(shared_data, capsys):
    assert main(["load", str(shared_data / ILLE_ET_VILAINE), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "996 rows" in out
    assert "would load 993: ecole 685, college 116, lycee 84, erea 2, autre 106" in out
    assert "would skip 3: uai-en-double 3" in out
    assert out.endswith("dry run: nothing published\n")
    assert "loaded" not in out and "skipped" not in out


@pytest.mark.parametrize("name", [ILLE_ET_VILAINE, FRANCE_COLLEGES])
def test_a_file_cut_inside_a_row_is_named_truncated_and_nothing_is_loaded(shared_data, tmp_path, capsys, name):
    data = (shared_data / name).read_bytes()
    lines = data.split(b"\r\n")
    columns = len(lines[0].split(b";"))
    cut = tmp_path / name
    # Line 101 cut after its fifth ';' (unquoted in both files): 5 of its columns are left.
    cut.write_bytes(b"\r\n".join(lines[:100]) + b"\r\n" + b";".join(lines[100].split(b";")[:5]))

    with pytest.raises(
        CsvFormatError, match=rf"line 101 is cut short: 5 of {columns} columns; the file looks truncated"
    ):
        load(cut)
    assert main(["load", str(cut), "--dry-run"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"error: {cut}: line 101 is cut short: 5 of {columns} columns; the file looks truncated\n"


def test_a_file_cut_in_its_last_column_is_named_truncated_by_its_missing_line_break(shared_data, tmp_path):
    cut = tmp_path / FRANCE_COLLEGES
    cut.write_bytes((shared_data / FRANCE_COLLEGES).read_bytes()[:-5])  # "2023-08-01\r\n" -> "2023-08-"
    with pytest.raises(CsvFormatError, match=r"line 7655 ends without a line break; the file looks truncated"):
        load(cut)


def test_a_file_cut_at_a_line_break_loads_what_it_holds(shared_data, tmp_path):
    """Undetectable, and harmless: each row is a whole établissement."""
    data = (shared_data / ILLE_ET_VILAINE).read_bytes()
    cut = tmp_path / ILLE_ET_VILAINE
    cut.write_bytes(b"\r\n".join(data.split(b"\r\n")[:101]) + b"\r\n")
    loaded = load(cut)
    assert loaded.rows == 100 and len(loaded.etablissements) == 100


def test_a_short_row_inside_the_file_is_skipped_as_such():
    text = "\n".join(
        [
            ANNUAIRE_HEADER,
            "0350852L;Collège Saint-Joseph;Collège;Privé;35047;035",  # 6 of 9 columns
            "0350122T;École;Ecole;Public;35016;035;14;53;OUVERT",
            "",
        ]
    )
    loaded = parse(text, "inline.csv")
    assert [e.uai for e in loaded.etablissements] == ["0350122T"]
    assert [(s.line, s.uai, s.reason, s.detail) for s in loaded.skipped] == [
        (2, "0350852L", "colonnes-manquantes", "6 colonnes sur 9")
    ]


@pytest.mark.parametrize("name", [ILLE_ET_VILAINE, FRANCE_COLLEGES])
def test_a_header_without_a_data_row_exits_non_zero_with_one_line(shared_data, tmp_path, capsys, name):
    header_only = tmp_path / name
    header_only.write_bytes((shared_data / name).read_bytes().split(b"\r\n")[0] + b"\r\n\r\n")
    assert main(["load", str(header_only)]) == 1
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", f"error: {header_only}: no data row, only the header\n")


def test_rows_that_all_fail_exit_non_zero_after_the_summary(tmp_path, capsys):
    path = tmp_path / "all-bad.csv"
    path.write_text(ANNUAIRE_HEADER + "\n0350852M;Mauvaise lettre;Collège;Public;35047;035;14;53;OUVERT\n")
    assert main(["load", str(path), "--bootstrap", "127.0.0.1:1"]) == 1  # fails before any connection
    captured = capsys.readouterr()
    assert "loaded 0: " in captured.out and "skipped 1: uai-invalide 1" in captured.out
    assert captured.err.endswith(f"error: {path}: no row to load, all 1 skipped\n")


@pytest.mark.parametrize(
    "make, problem",
    [(lambda p: None, "no such file or directory"), (lambda p: p.mkdir(), "is a directory")],
    ids=["missing", "a directory"],
)
def test_a_file_that_cannot_be_read_is_one_line_without_errno_and_exit_code_2(tmp_path, capsys, make, problem):
    path = tmp_path / "annuaire.csv"
    make(path)
    assert main(["load", str(path), "--dry-run"]) == 2
    assert capsys.readouterr().err == f"error: {path}: {problem}\n"


def test_a_bad_argument_exits_with_code_2(tmp_path, capsys):
    out = str(tmp_path / "out.csv")
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--count", "0", "--csv", out])
    assert exit_.value.code == 2
    assert "--count: '0' is not a whole number of at least 1" in capsys.readouterr().err
    assert main(["generate", "--count", "2", "--departement", "999", "--csv", out]) == 2
    assert capsys.readouterr().err == "error: unknown département '999' (metropolitan France and DROM only)\n"
