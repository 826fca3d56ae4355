"""DLQ messages are French: `path: rule (reçu value)`, never pydantic's or jiter's English, never
a personal value nor a long one. Generated: every field of every type, given every kind of bad
value, and every JSON syntax error."""

import json
import re
from typing import Annotated

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import Field, TypeAdapter, ValidationError

import contracts as c
from contracts._identifiers import IDENTIFIER_REASONS
from contracts.envelope import event_model
from contracts.internal import INTERNAL_PAYLOADS, INTERNAL_TOPIC_TYPES
from contracts.messages import RULES, json_syntax

PAYLOADS = c.PAYLOADS | INTERNAL_PAYLOADS
PARSE = c.EventParser(PAYLOADS, c.TOPIC_TYPES | INTERNAL_TOPIC_TYPES)
UAI = "0350122T"
INTERNAL_EXAMPLES = {
    "fr.education.plateforme.profil-lot.v1": {
        "uai": UAI, "version": 1, "lot_id": "glpi-42", "kind": "tablette", "quantity": 30,
        "os": {"name": "iPadOS", "version": "15.4"}, "browsers": [{"name": "Safari", "version": "15"}],
    },
    "fr.education.plateforme.profil-connectivite.v1": {"uai": UAI, "version": 1, "bandwidth_mbps": 8.5, "ent": True},
    "fr.education.plateforme.couverture-enseignants.v1": {
        "uai": UAI, "version": 1, "enseignants": 3, "competences": {"3.2": [3, 2, 0, 0, 0, 0, 0, 0]},
    },
    "fr.education.plateforme.couverture-outil.v1": {"uai": UAI, "version": 1, "kind": "tni", "enseignants": 2},
}  # fmt: skip
assert set(INTERNAL_EXAMPLES) == set(INTERNAL_PAYLOADS)
# pydantic's and jiter's English, as it would show through.
ENGLISH = re.compile(
    r"Input should|should (be|have)|Field required|Value error|must be|at (most|least)|\bcharacters\b|\bitems\b"
    r"|Invalid JSON|\bexpected\b|while parsing|\bline \d|\bcolumn\b|Unable to|\btag\b|found|duplicate|\bvalid\b"
)
EMAIL = "prenom.nom@ac-rennes.fr"
WITHHELD = "(valeur non reproduite: donnée personnelle possible)"
INFINITE = "__1e400__"  # JSON's 1e400, which a float reads as infinity
BAD = (
    None, True, 0, -1, 2.5, 10**30, INFINITE, "", "x", "x" * 300, EMAIL, "2024-13-45", "1969-12-31", "2024-03-01",
    "2024-03-01T10:00:00", [], ["x"] * 33, {}, {"a": 1}, ...,
)  # fmt: skip


def full_example(type_: str, examples: dict) -> dict:
    """A valid `data` of `type_` holding every optional field, so that each one gets mutated."""
    if type_ == c.ALERTE_LEVEE:
        return examples[type_] | {"resolved_at": None}
    return examples.get(type_) or INTERNAL_EXAMPLES[type_]


def paths(value, path=()):
    """Every place in a JSON value: the keys of its objects, the indexes of its arrays."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        yield (*path, k)
        yield from paths(v, (*path, k))


def replaced(event: dict, path: tuple, new) -> bytes:
    """`event` with the value at `path` replaced by `new` (removed if `...`), as record bytes."""
    event = json.loads(json.dumps(event))
    *parents, last = path
    holder = event
    for p in parents:
        holder = holder[p]
    if new is ...:
        del holder[last]
    else:
        holder[last] = new
    return json.dumps(event).replace(f'"{INFINITE}"', "1e400").encode()


def mutations(type_: str, examples: dict, make_record):
    """(path, bad value, record) for every place of a `type_` record and every bad value."""
    event = json.loads(make_record(type_, full_example(type_, examples)))
    for path in paths(event):
        for bad in BAD:
            yield path, bad, replaced(event, path, bad)


def refusal(raw: bytes, parse=PARSE) -> c.ContractError | None:
    try:
        parse(raw)
    except c.ContractError as e:
        return e
    return None


@pytest.mark.parametrize("type_", sorted(PAYLOADS))
def test_every_refusal_of_every_field_reads_in_french_without_a_personal_or_long_value(type_, examples, make_record):
    problems, refused = [], 0
    for path, bad, raw in mutations(type_, examples, make_record):
        error = refusal(raw)
        if error is None:
            continue
        refused += 1
        # A teacher's record repeats none of its values: any of them may be a name or an e-mail.
        # (Its type refused, the record is no one's: the type is named.)
        teachers = type_ in (c.AFFECTATION, c.FORMATION_SUIVIE) and path != ("type",)
        message, personal = error.message, teachers or "teacher_id" in path
        if (
            error.code not in c.REASON_CODES
            or ENGLISH.search(message)
            or "règle pydantic" in message  # a type of the contract without its own rule
            or "x" * 61 in message
            or len(message) > 400
            or (personal and ("reçu" in message or EMAIL in message or "2024-13-45" in message))
        ):
            problems.append((path, bad if bad != "x" * 300 else "x * 300", error.code, message))
    assert refused > 100 and not problems, problems[:10]


def test_every_error_type_the_contract_raises_has_its_french_rule_and_no_rule_is_dead(examples, make_record):
    seen = set()
    for type_, payload in PAYLOADS.items():
        adapter = TypeAdapter(event_model(type_, payload))
        for _, _, raw in mutations(type_, examples, make_record):
            try:
                adapter.validate_json(raw)
            except ValidationError as e:
                seen.update(error["type"] for error in e.errors())
    own = IDENTIFIER_REASONS | {"cloudevent-invalide"}  # our validators' types, French at the source
    assert seen - own == set(RULES)


@pytest.mark.parametrize(
    ("type_", "change", "expected"),
    [
        (c.LOT, {"quantity": -1}, ("donnees-invalides", "data.quantity: attendu au moins 0 (reçu -1)")),
        (c.LOT, {"quantity": 1_000_001},
         ("donnees-invalides", "data.quantity: attendu au plus 1000000 (reçu 1000001)")),
        (c.LOT, {"quantity": "30"}, ("donnees-invalides", "data.quantity: attendu un entier (reçu '30')")),
        (c.LOT, {"kind": ""}, ("donnees-invalides", "data.kind: attendu au moins 1 caractère (reçu '')")),
        (c.LOT, {"browsers": {"name": "Safari"}}, ("donnees-invalides",
         "data.browsers: attendu un tableau (reçu {'name': 'Safari'})")),
        (c.LOT, {"browsers": [{"name": "Safari", "version": "17"}] * 33},
         ("trop-volumineux", "data.browsers: tableau de 33 éléments, au plus 32")),
        (c.LOT, {"os": {"version": "17"}}, ("donnees-invalides", "data.os.name: attribut obligatoire absent")),
        (c.LOT, {"os": "iPadOS 15"}, ("donnees-invalides", "data.os: attendu un objet (reçu 'iPadOS 15')")),
        (c.ETABLISSEMENT, {"nom": "x" * 257}, ("trop-volumineux", "data.nom: texte de 257 caractères, au plus 256")),
        (c.ETABLISSEMENT, {"type": "ECOLE"}, ("donnees-invalides",
         "data.type: attendu 'ecole', 'college', 'lycee', 'erea' ou 'autre' (reçu 'ECOLE')")),
        (c.ETABLISSEMENT, {"ouvert": "oui"}, ("donnees-invalides", "data.ouvert: attendu true ou false (reçu 'oui')")),
        (c.ETABLISSEMENT, {"nom": 42}, ("donnees-invalides", "data.nom: attendu une chaîne (reçu 42)")),
        (c.CONNECTIVITE, {"bandwidth_mbps": "100"},
         ("donnees-invalides", "data.bandwidth_mbps: attendu un nombre (reçu '100')")),
        (c.AFFECTATION, {"start": "2024-13-01"},
         ("donnees-invalides", f"data.start: attendu une date AAAA-MM-JJ {WITHHELD}")),
        (c.AFFECTATION, {"end": "2101-01-01"},
         ("donnees-invalides", f"data.end: date hors de 1970-01-01 … 2100-12-31 {WITHHELD}")),
        (c.ALERTE_LEVEE, {"resolved_at": "2024-03-02T08:00:00Z"},
         ("donnees-invalides", "data.resolved_at: attendu null (reçu '2024-03-02T08:00:00Z')")),
        (c.ALERTE_RESOLUE, {"resolved_at": "2024-03-02"}, ("donnees-invalides",
         "data.resolved_at: attendu un instant RFC 3339 avec son décalage (AAAA-MM-JJThh:mm:ss puis Z ou ±hh:mm) "
         "(reçu '2024-03-02')")),
        (c.ALERTE_RESOLUE, {"resolved_at": "2024-03-02T08:00:00"}, ("donnees-invalides",
         "data.resolved_at: instant sans décalage horaire: attendu Z ou ±hh:mm à la fin (reçu '2024-03-02T08:00:00')")),
    ],
)  # fmt: skip
def test_a_refusal_names_the_field_path_and_its_rule_in_french(type_, change, expected, make_record, examples):
    assert (error := refusal(make_record(type_, examples[type_] | change))) is not None
    assert (error.code, error.message) == expected


def test_an_infinite_number_is_named_as_such(make_record):
    raw = make_record(c.CONNECTIVITE).replace(b'"bandwidth_mbps": 100', b'"bandwidth_mbps": 1e400')
    assert (error := refusal(raw)) is not None
    assert error.message == "data.bandwidth_mbps: attendu un nombre fini (reçu inf)"


@pytest.mark.parametrize(
    ("envelope", "message"),
    [
        ({"id": 7}, "id: attendu une chaîne (reçu 7)"),
        ({"specversion": "1"}, "specversion: attendu '1.0' (reçu '1')"),
        ({"time": "2024-03-01T10:00:00"},
         "time: instant sans décalage horaire: attendu Z ou ±hh:mm à la fin (reçu '2024-03-01T10:00:00')"),
        ({"time": ...}, "time: attribut obligatoire absent"),
    ],
)  # fmt: skip
def test_an_envelope_refusal_reads_in_french(envelope, message, make_record):
    assert (error := refusal(make_record(c.LOT, **envelope))) is not None
    assert (error.code, error.message) == ("cloudevent-invalide", message)


@pytest.mark.parametrize(
    ("envelope", "rule"),
    [({"source": EMAIL}, "pas une source connue (/rectorats/"), ({"time": "1969-12-31T23:00:00Z"}, "avant 1970")],
)
def test_a_teacher_s_record_refused_by_its_envelope_says_the_rule_without_the_value(envelope, rule, make_record):
    """Its values withheld, a bad source or a time before 1970 said only "refusé par CONTRACTS.md"
    (review s64 L6): the rule is said, never the value."""
    assert (error := refusal(make_record(c.AFFECTATION, **envelope))) is not None
    assert error.code == "cloudevent-invalide" and rule in error.message and WITHHELD in error.message
    assert EMAIL not in error.message and "1969" not in error.message


@pytest.mark.parametrize(
    ("raw", "syntax"),
    [
        (b"", "fin du JSON avant une valeur (ligne 1, colonne 0)"),
        (b"[1", "fin du JSON au milieu d'un tableau (ligne 1, colonne 2)"),
        (b'{"a": 1', "fin du JSON au milieu d'un objet (ligne 1, colonne 7)"),
        (b'{"a": "b', "fin du JSON au milieu d'une chaîne (ligne 1, colonne 8)"),
        (b'{"a" 1}', "« : » attendu après une clé (ligne 1, colonne 6)"),
        (b"[1 2]", "« , » ou « ] » attendu dans un tableau (ligne 1, colonne 4)"),
        (b'{"a": 1 "b": 2}', "« , » ou « } » attendu dans un objet (ligne 1, colonne 9)"),
        (b"not json", "true, false ou null attendu (ligne 1, colonne 2)"),
        (b'{"a": NaN}', "valeur JSON attendue (NaN et Infinity n'en sont pas) (ligne 1, colonne 7)"),
        (b'{"a": "\\x"}', "séquence d'échappement invalide (ligne 1, colonne 9)"),
        (b'{"a": 01}', "nombre mal formé (ligne 1, colonne 8)"),
        (b'{"a": "\xe9"}', "caractère invalide (UTF-8 attendu) (ligne 1, colonne 8)"),
        (b'{"a": "b\nc"}', "caractère de contrôle (U+0000 à U+001F) non échappé dans une chaîne (ligne 2, colonne 0)"),
        (b"{1: 2}", "clé d'objet qui n'est pas une chaîne (ligne 1, colonne 2)"),
        (b'{"a": "\\udc00"}', "demi-codet (surrogate) isolé dans un échappement \\u (ligne 1, colonne 13)"),
        (b"[1,]", "virgule avant la fin d'un tableau ou d'un objet (ligne 1, colonne 4)"),
        (b"{} x", "caractères après la fin de la valeur JSON (ligne 1, colonne 4)"),
        (b'{"a": "\\ud800x"}', "échappement \\u incomplet (ligne 1, colonne 14)"),
        (b"[" * 300 + b"]" * 300, "tableaux ou objets imbriqués trop profondément (ligne 1, colonne 202)"),
        (b'{"source": "/gar", "source": "/gar"}', 'clé "source" répétée dans un objet (ligne 1, colonne 29)'),
    ],
)  # fmt: skip
def test_each_json_syntax_error_is_named_in_french_with_its_position(raw, syntax):
    assert (error := refusal(raw)) is not None
    assert (error.code, error.message) == ("json-invalide", f"pas du JSON (RFC 8259): {syntax}")


def test_a_number_of_thousands_of_digits_is_named_with_its_position(make_record):
    raw = make_record(c.LOT).replace(b'"quantity": 30', b'"quantity": ' + b"9" * 5000)
    assert (error := refusal(raw)) is not None
    assert error.code == "donnees-invalides"
    assert re.fullmatch(r"nombre hors limites \(ligne 1, colonne \d+\)", error.message)


def test_a_json_syntax_error_jiter_may_add_later_still_reads_in_french():
    assert json_syntax("some new error at line 3 column 14") == "JSON mal formé (ligne 3, colonne 14)"
    assert json_syntax("Detected duplicate key " + '"' + "k" * 100 + '"') == f'clé "{"k" * 56}... répétée dans un objet'


class _Coded(c.Payload):
    """A payload with constraints the contract does not use, nor a personal field as a number."""

    uai: c.Uai
    code: Annotated[str, Field(pattern="^[A-Z]{3}$")] = "ABC"
    teacher_id: int = 0


CODED = "fr.education.test.coded.v1"
PARSE_CODED = c.EventParser({CODED: _Coded}, {})


def test_a_pydantic_rule_without_a_french_sentence_still_reads_in_french_naming_its_type(make_record):
    assert (error := refusal(make_record(CODED, {"uai": UAI, "code": "abc"}), PARSE_CODED)) is not None
    assert (error.code, error.message) == (
        "donnees-invalides",
        f"data.code: valeur refusée par la règle pydantic string_pattern_mismatch {WITHHELD}",  # (a teacher's record)
    )


def test_a_personal_field_refused_by_a_pydantic_rule_is_named_never_repeated(make_record):
    assert (error := refusal(make_record(CODED, {"uai": UAI, "teacher_id": EMAIL}), PARSE_CODED)) is not None
    assert error.message == "data.teacher_id: attendu un entier (valeur non reproduite: donnée personnelle possible)"


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet="0123456789.-:TZ aé\x00/", max_size=80),
    lambda inner: st.lists(inner, max_size=40) | st.dictionaries(st.sampled_from(["name", "a", "é"]), inner),
    max_leaves=40,
)


def test_any_json_value_anywhere_is_refused_in_french(make_record, examples):
    judged: list[bool] = []  # per example: refused or not

    @hsettings(max_examples=300)
    @given(data=st.data())
    def any_value_anywhere(data):
        type_ = data.draw(st.sampled_from(sorted(PAYLOADS)))
        event = json.loads(make_record(type_, full_example(type_, examples)))
        path = data.draw(st.sampled_from(list(paths(event))))
        error = refusal(replaced(event, path, data.draw(JSON_VALUES)))
        judged.append(error is not None)
        if error is not None:
            rule = error.message.split(" (reçu ")[0]  # the value shown may hold anything
            assert error.code in c.REASON_CODES and not ENGLISH.search(rule) and "règle pydantic" not in rule
            assert len(error.message) <= 400

    any_value_anywhere()
    assert sum(judged) >= len(judged) / 2, "most random values are refused: the French messages were looked at"
