"""UAI, CRCN, version, pseudonym and code rules, with the reason code each refusal carries."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

import contracts as c


def refusal(annotated, value) -> tuple[str, str]:
    """(reason code, message) of the one error validating `value` raises."""
    with pytest.raises(ValidationError) as caught:
        TypeAdapter(annotated).validate_python(value)
    (error,) = caught.value.errors()
    return error["type"], error["msg"]


@pytest.mark.parametrize("uai", ["0751234J", "0010856A"])
def test_domain_examples_of_valid_uai(uai):
    assert c.is_valid_uai(uai)
    assert TypeAdapter(c.Uai).validate_python(uai) == uai


@pytest.mark.parametrize(
    "uai", ["0010856B", "0000856A", "0350122t", "350122T", "03501220T", "0350122I", "0350122T\n", "", None, 350122]
)
def test_invalid_uai_is_refused_as_uai_invalide(uai):
    assert not c.is_valid_uai(uai)
    assert refusal(c.Uai, uai)[0] == "uai-invalide"


def test_wrong_check_letter_message_names_the_uai_and_the_expected_letter():
    assert refusal(c.Uai, "0010856B") == ("uai-invalide", "UAI 0010856B: la lettre de contrôle devrait être A")
    assert c.uai_check_letter("0000856") == "F"


def test_every_uai_of_the_ille_et_vilaine_annuaire_is_valid(annuaire_uai):
    assert c.is_valid_uai(annuaire_uai)


def test_every_college_uai_of_france_is_valid_corse_and_overseas_included(colleges):
    uais = [row["numero_uai"] for row in colleges]
    assert len(uais) > 7000
    assert {u[:3] for u in uais} >= {"620", "720", "974"}
    assert [u for u in uais if not c.is_valid_uai(u)] == []


@given(st.integers(0, 9_999_999), st.sampled_from(c.UAI_LETTERS))
def test_exactly_one_letter_completes_seven_digits(number, letter):
    digits = f"{number:07d}"
    assert c.is_valid_uai(digits + letter) == (letter == c.uai_check_letter(digits))


def test_crcn_has_sixteen_competences_in_five_domains():
    assert len(c.CRCN_CODES) == 16
    assert {code.split(".")[0] for code in c.CRCN_CODES} == {"1", "2", "3", "4", "5"}
    for code in c.CRCN_CODES:
        assert TypeAdapter(c.CrcnCode).validate_python(code) == code


@pytest.mark.parametrize("code", ["1.4", "2.5", "0.1", "6.1", "5.3", "1", "11", 1.1, ""])
def test_unknown_crcn_code_is_refused_as_crcn_invalide(code):
    assert refusal(c.CrcnCode, code)[0] == "crcn-invalide"


@pytest.mark.parametrize("level", [1, 4, 8, 3.0])  # 3.0: an integer to JSON Schema, as published
def test_crcn_levels_one_to_eight_are_accepted(level):
    read = TypeAdapter(c.CrcnLevel).validate_python(level)
    assert read == level and type(read) is int


@pytest.mark.parametrize("level", [0, 9, -1, "3", 3.5, 9.0, True])
def test_level_outside_one_to_eight_or_not_an_integer_is_niveau_invalide(level):
    assert refusal(c.CrcnLevel, level)[0] == "niveau-invalide"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("16", (16, 0, 0, 0)),
        ("16.4.1", (16, 4, 1, 0)),
        ("10.0.19045.3803", (10, 0, 19045, 3803)),
        ("0", (0, 0, 0, 0)),
        ("015.2", (15, 2, 0, 0)),
    ],
)
def test_version_missing_parts_count_as_zero(text, parsed):
    assert c.parse_version(text) == parsed
    assert TypeAdapter(c.Version).validate_python(text) == text


@pytest.mark.parametrize(
    "text", ["", "12.x", "1.2.3.4.5", "1..2", ".1", "1.", "-1", "v16", " 16", "16 ", "1_0", "١٦", "16\n", 16]
)
def test_anything_but_one_to_four_dotted_integers_is_version_invalide(text):
    with pytest.raises(ValueError):
        c.parse_version(text)
    code, message = refusal(c.Version, text)
    assert code == "version-invalide"
    assert repr(text) in message


def test_versions_compare_numerically_not_as_text():
    assert c.parse_version("10") > c.parse_version("9.9.9")
    assert c.parse_version("15") == c.parse_version("15.0.0.0")


@pytest.mark.parametrize("teacher_id", ["abcdefgh", "A" * 64, "t-0001_ab", "0123456789"])
def test_pseudonym_of_8_to_64_safe_characters_is_a_teacher_id(teacher_id):
    assert c.is_valid_teacher_id(teacher_id)
    assert TypeAdapter(c.TeacherId).validate_python(teacher_id) == teacher_id


@pytest.mark.parametrize(
    "teacher_id",
    ["abcdefg", "A" * 65, "jean.dupont@ac-rennes.fr", "jean dupont", "abcdéfghi", "abcdefgh\n", 12345678],
)
def test_anything_else_is_teacher_id_invalide(teacher_id):
    assert not c.is_valid_teacher_id(teacher_id)
    assert refusal(c.TeacherId, teacher_id)[0] == "teacher-id-invalide"


@pytest.mark.parametrize(
    ("annotated", "valid", "invalid"),
    [
        (c.CodeDepartement, ["035", "02A", "02B", "974", "988"], ["35", "2A", "0035", "02C", "A35", 35]),
        (c.CodeAcademie, ["14", "01", "70"], ["4", "014", "AB", 14]),
        (c.CodeRegion, ["53", "00", "11"], ["5", "053", 53]),
        (c.CodeCommune, ["35016", "2A004", "2B033", "97411"], ["3501", "350160", "2C004", "02A04", 35016]),
    ],
)
def test_codes_take_the_annuaire_forms_only(annotated, valid, invalid):
    for value in valid:
        assert TypeAdapter(annotated).validate_python(value) == value
    for value in invalid:
        assert refusal(annotated, value)[0] == "code-invalide"


def test_codes_of_every_college_of_france_are_in_annuaire_form(colleges):
    for column, annotated in [("code_departement", c.CodeDepartement), ("code_academie", c.CodeAcademie),
                              ("code_region", c.CodeRegion), ("code_commune", c.CodeCommune)]:  # fmt: skip
        adapter = TypeAdapter(list[annotated])
        adapter.validate_python([row[column] for row in colleges])
