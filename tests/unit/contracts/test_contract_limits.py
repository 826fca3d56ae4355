"""CONTRACTS.md, Limits: every bound refuses beyond it, with the reason the table names, and
is published in the JSON Schemas; JSON that RFC 8259 does not allow is json-invalide."""

import json
from datetime import UTC, datetime, timedelta

import pytest

import contracts as c
from contracts.parsing import MAX_RECORD_BYTES
from contracts.schemas import render


def reason(raw: bytes, **kw) -> tuple[str, str]:
    with pytest.raises(c.ContractError) as caught:
        c.parse_event(raw, **kw)
    assert caught.value.code in c.REASON_CODES
    return caught.value.code, caught.value.message


def with_data(examples, type_: str, **change) -> dict:
    return {k: v for k, v in (examples[type_] | change).items() if v is not ...}


S256, S257, S64, S65 = "x" * 256, "x" * 257, "n" * 64, "n" * 65
SOFT = {"name": "Firefox", "version": "115"}


@pytest.mark.parametrize(
    ("type_", "field", "at_bound", "beyond"),
    [
        (c.ETABLISSEMENT, "nom", S256, S257),
        (c.FORMATION_SUIVIE, "title", S256, S257),
        (c.FORMATION_SUIVIE, "module_id", S256, S257),
        (c.RESSOURCE_PUBLIEE, "title", S256, S257),
        (c.RESSOURCE_PUBLIEE, "editor", S256, S257),
        (c.RESSOURCE_PUBLIEE, "resource_id", S256, S257),
        (c.RESSOURCE_RETIREE, "resource_id", S256, S257),
        (c.ABONNEMENT, "resource_id", S256, S257),
        (c.LOT, "lot_id", S256, S257),
        (c.LOT, "kind", S64, S65),
        (c.LOT, "os", {"name": S64, "version": "1"}, {"name": S65, "version": "1"}),
        (c.LOT, "browsers", [SOFT] * 32, [SOFT] * 33),
        (c.LOT, "browsers", [{"name": S64, "version": "1"}], [{"name": S65, "version": "1"}]),
        (c.FORMATION_SUIVIE, "tools", ["t"] * 32, ["t"] * 33),
        (c.FORMATION_SUIVIE, "tools", [S64], [S65]),
        (c.FORMATION_SUIVIE, "competences", [{"code": "1.1", "level": 2}] * 32, [{"code": "1.1", "level": 2}] * 33),
        (c.RESSOURCE_PUBLIEE, "requirements", [[{"type": "os", "name": "any"}]] * 32,
         [[{"type": "os", "name": "any"}]] * 33),
        (c.RESSOURCE_PUBLIEE, "requirements", [[{"type": "os", "name": "any"}] * 32],
         [[{"type": "os", "name": "any"}] * 33]),
        (c.RESSOURCE_PUBLIEE, "requirements", [[{"type": "browser", "name": S64}]],
         [[{"type": "browser", "name": S65}]]),
        (c.RESSOURCE_PUBLIEE, "tools", [{"kind": "TNI", "min_quantity": 1}] * 32,
         [{"kind": "TNI", "min_quantity": 1}] * 33),
        (c.RESSOURCE_PUBLIEE, "tools", [{"kind": S64, "min_quantity": 1}], [{"kind": S65, "min_quantity": 1}]),
        (c.RESSOURCE_PUBLIEE, "training", {"tools": ["t"] * 32}, {"tools": ["t"] * 33}),
        (c.RESSOURCE_PUBLIEE, "training", {"competences": [{"code": "1.1", "level": 1}] * 32},
         {"competences": [{"code": "1.1", "level": 1}] * 33}),
    ],
)  # fmt: skip
def test_a_size_bound_accepts_its_limit_and_refuses_beyond_as_trop_volumineux(
    type_, field, at_bound, beyond, make_record, examples
):
    assert c.parse_event(make_record(type_, with_data(examples, type_, **{field: at_bound}))).type == type_
    code, message = reason(make_record(type_, with_data(examples, type_, **{field: beyond})))
    assert code == "trop-volumineux" and message.startswith(f"data.{field}")
    assert "x" * 60 not in message and "n" * 60 not in message, "the long value is not copied into the message"


@pytest.mark.parametrize(
    ("type_", "field", "at_bound", "beyond"),
    [
        (c.LOT, "quantity", 1_000_000, 1_000_001),
        (c.RESSOURCE_PUBLIEE, "tools", [{"kind": "TNI", "min_quantity": 1_000_000}],
         [{"kind": "TNI", "min_quantity": 1_000_001}]),
        (c.CONNECTIVITE, "bandwidth_mbps", 100_000, 100_000.5),
        (c.RESSOURCE_PUBLIEE, "min_bandwidth_mbps", 100_000, 1e308),
        (c.RESSOURCE_PUBLIEE, "min_bandwidth_mbps", 0, -0.5),
        (c.CONNECTIVITE, "bandwidth_mbps", 0, -0.5),
        (c.AFFECTATION, "start", "1970-01-01", "1969-12-31"),
        (c.AFFECTATION, "end", "2100-12-31", "2101-01-01"),
        (c.ABONNEMENT, "start", "2100-12-31", "9999-12-31"),
        (c.FORMATION_SUIVIE, "completed_on", "1970-01-01", "0001-01-01"),
        # An equipment kind is named, as lot.kind and a resource's tools are: "" was one, which
        # no teacher is trained on (a resource asking it raised formation-insuffisante for good).
        (c.FORMATION_SUIVIE, "tools", ["t"], [""]),
    ],
)  # fmt: skip
def test_a_value_bound_accepts_its_limit_and_refuses_beyond_as_donnees_invalides(
    type_, field, at_bound, beyond, make_record, examples
):
    assert c.parse_event(make_record(type_, with_data(examples, type_, **{field: at_bound}))).type == type_
    code, message = reason(make_record(type_, with_data(examples, type_, **{field: beyond})))
    assert (code, message.split(": ")[0].split("[")[0]) == ("donnees-invalides", f"data.{field}")


def test_a_resource_s_training_tool_is_named(make_record, examples):
    """As a training's tools: "" is no equipment kind (see the value bounds above)."""
    for tools, refused in ((["t"], False), ([""], True)):
        record = make_record(c.RESSOURCE_PUBLIEE, with_data(examples, c.RESSOURCE_PUBLIEE, training={"tools": tools}))
        if refused:
            code, message = reason(record)
            assert (code, message.split(": ")[0].split("[")[0]) == ("donnees-invalides", "data.training.tools")
        else:
            assert c.parse_event(record).data.training.tools == tools


@pytest.mark.parametrize("version", ["123456789", "1.2.3.123456789", "999999999.0.0.0"])
def test_versions_of_up_to_nine_digits_per_part_are_accepted(version, make_record, examples):
    data = with_data(examples, c.LOT, os={"name": "Windows", "version": version})
    assert c.parse_event(make_record(c.LOT, data)).data.os.version == version


@pytest.mark.parametrize("version", ["1234567890", "1.2.3.1234567890", "1" * 5000, "1.2.3.4.5"])
def test_a_version_part_longer_than_nine_digits_is_version_invalide(version, make_record, examples):
    for data in (
        with_data(examples, c.LOT, os={"name": "Windows", "version": version}),
        with_data(examples, c.RESSOURCE_PUBLIEE, requirements=[[{"type": "os", "name": "x", "min_version": version}]]),
        with_data(examples, c.LOT, browsers=[{"name": "Firefox", "version": version}]),
        with_data(
            examples, c.RESSOURCE_PUBLIEE, requirements=[[{"type": "browser", "name": "x", "max_version": version}]]
        ),
    ):
        code, message = reason(make_record(c.LOT if "lot_id" in data else c.RESSOURCE_PUBLIEE, data))
        assert code == "version-invalide" and len(message) < 300


def _utf8(record: bytes) -> bytes:
    """The record with its characters in UTF-8, not \\u escapes."""
    return json.dumps(json.loads(record), ensure_ascii=False).encode()


@pytest.mark.parametrize("char", ["é", "🎒"])
def test_lengths_are_counted_in_characters_not_bytes(char, make_record, examples):
    """The bounds count characters: at its bound in two- or four-byte characters, a field is
    accepted; one more, it is refused for its bound (an `id` too)."""
    for type_, field, bound in ((c.ETABLISSEMENT, "nom", 256), (c.LOT, "kind", 64), (c.LOT, "lot_id", 256)):
        at_bound = _utf8(make_record(type_, with_data(examples, type_, **{field: char * bound})))
        assert (char * bound).encode() in at_bound, "sent in UTF-8: more bytes than the bound"
        assert getattr(c.parse_event(at_bound).data, field) == char * bound
        code, message = reason(_utf8(make_record(type_, with_data(examples, type_, **{field: char * (bound + 1)}))))
        assert code == "trop-volumineux" and message.startswith(f"data.{field}")
    assert c.parse_event(_utf8(make_record(c.LOT, id=char * 128))).id == char * 128
    assert reason(_utf8(make_record(c.LOT, id=char * 129)))[0] == "cloudevent-invalide"


def test_a_record_value_over_256_kib_is_trop_volumineux_before_anything_else(make_record, examples):
    at_limit = make_record(c.LOT, examples[c.LOT] | {"padding": ""})
    at_limit = at_limit.replace(b'"padding": ""', b'"padding": "' + b"p" * (MAX_RECORD_BYTES - len(at_limit)) + b'"')
    assert len(at_limit) == MAX_RECORD_BYTES and c.parse_event(at_limit).type == c.LOT
    assert reason(at_limit + b" ")[0] == "trop-volumineux"
    assert reason(b"\xff" * (MAX_RECORD_BYTES + 1))[0] == "trop-volumineux"


def test_time_before_1970_is_cloudevent_invalide(make_record):
    code, message = reason(make_record(c.LOT, time="1969-12-31T23:59:59Z"))
    assert code == "cloudevent-invalide" and message.startswith("time: ")
    assert c.parse_event(make_record(c.LOT, time="1970-01-01T01:00:00+01:00")).type == c.LOT


@pytest.mark.parametrize("time", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"])
def test_instants_outside_postgresql_or_python_utc_range_are_refused_at_parsing(time, make_record):
    now = datetime.now(UTC)
    assert reason(make_record(c.LOT, time=time), not_after=now)[0] in ("time-futur", "cloudevent-invalide")


def test_a_time_beyond_the_receivers_clock_plus_skew_is_time_futur(make_record):
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    skew = timedelta(minutes=5)
    inside = make_record(c.LOT, time=(now + skew).isoformat())
    beyond = make_record(c.LOT, time=(now + skew + timedelta(seconds=1)).astimezone().isoformat())
    assert c.parse_event(inside, not_after=now + skew).type == c.LOT
    code, message = reason(beyond, not_after=now + skew)
    assert code == "time-futur" and message.startswith("time ")
    assert c.parse_event(beyond).type == c.LOT, "without a clock there is no future"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"specversion": "1.0", "specversion": "1.0"}',
        b'{"data": {"uai": "a", "uai": "b"}}',
    ],
)
def test_a_repeated_key_in_any_object_is_json_invalide(raw):
    assert reason(raw)[0] == "json-invalide"


def test_a_repeated_source_is_json_invalide_even_though_each_would_be_valid(make_record):
    raw = make_record(c.LOT).replace(b'"source": ', b'"source": "/collectivites/departements/035", "source": ', 1)
    code, message = reason(raw)
    assert code == "json-invalide" and "source" in message


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_not_json_anywhere(literal, make_record, examples):
    in_number = make_record(c.CONNECTIVITE).replace(b'"bandwidth_mbps": 100', b'"bandwidth_mbps": ' + literal)
    in_extension = make_record(c.LOT)[:-1] + b', "extension": ' + literal + b"}"
    assert reason(in_number)[0] == "json-invalide"
    assert reason(in_extension)[0] == "json-invalide"


def test_deep_nesting_is_refused_not_crashing(make_record):
    raw = make_record(c.LOT)[:-1] + b', "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert reason(raw)[0] in ("json-invalide", "trop-volumineux")
    shallow_enough = make_record(c.LOT)[:-1] + b', "deep": ' + b"[" * 100 + b"]" * 100 + b"}"
    assert reason(shallow_enough + b"x")[0] == "json-invalide"


@pytest.mark.parametrize("number", [b"1" * 5000, b"1e400", b"-1e400"])
def test_huge_numbers_are_refused_with_a_reason(number, make_record):
    raw = make_record(c.LOT).replace(b'"quantity": 30', b'"quantity": ' + number)
    assert reason(raw)[0] in ("donnees-invalides", "json-invalide")


@pytest.mark.parametrize(
    ("type_", "data"),
    [
        (c.AFFECTATION, {"teacher_id": "jean.dupont@ac-rennes.fr"}),
        (c.AFFECTATION, {"teacher_id": ["jean.dupont@ac-rennes.fr"]}),
        (c.FORMATION_SUIVIE, {"teacher_id": "jean.dupont@ac-rennes.fr"}),
        (c.FORMATION_SUIVIE, {"teacher_id": 1234567890123}),
    ],
)
def test_a_refused_teacher_id_is_named_never_repeated(type_, data, make_record, examples):
    _, message = reason(make_record(type_, examples[type_] | data))
    assert message.startswith("data.teacher_id")
    assert "dupont" not in message and "1234567890123" not in message


@pytest.mark.parametrize("subject", [["jean.dupont@ac-rennes.fr"], {"id": "jean.dupont@ac-rennes.fr"}])
def test_a_refused_subject_is_named_never_repeated(subject, make_record, examples):
    """A formation-suivie's subject is its teacher_id: refused for its type, not quoted either."""
    event = json.loads(make_record(c.FORMATION_SUIVIE, examples[c.FORMATION_SUIVIE])) | {"subject": subject}
    code, message = reason(json.dumps(event).encode())
    assert code == "cloudevent-invalide" and message.startswith("subject") and "dupont" not in message, message


def test_a_value_that_is_not_an_object_is_described_by_its_json_type_not_repeated():
    code, message = reason(json.dumps("jean.dupont@ac-rennes.fr").encode())
    assert code == "json-invalide" and "dupont" not in message and "chaîne" in message


def test_every_bound_is_published_in_the_json_schemas():
    schemas = {name: json.loads(text) for name, text in render().items()}
    lot = json.dumps(schemas["fr.education.equipement.lot.v1.json"])
    publiee = json.dumps(schemas["fr.education.ressources.ressource-publiee.v1.json"])
    assert '"maxItems": 32' in lot and '"maxLength": 64' in lot and '"maxLength": 256' in lot
    assert '"maximum": 1000000' in lot
    assert publiee.count('"maxItems": 32') >= 5 and '"maximum": 100000' in publiee
    assert '"maxLength": 128' in json.dumps(schemas["cloudevent.json"])
    version = schemas["fr.education.equipement.lot.v1.json"]["$defs"]["Logiciel"]["properties"]["version"]
    assert "{1,9}" in version["pattern"]


@pytest.mark.parametrize(
    ("where", "code", "path"),
    [
        ("lot_id", "donnees-invalides", "data.lot_id"),
        ("browsers", "donnees-invalides", "data.browsers[0].name"),
        ("subject", "cloudevent-invalide", "subject"),
        ("extension", "cloudevent-invalide", "extension"),
    ],
)
def test_a_nul_character_in_any_text_is_refused_at_parsing_naming_where(where, code, path, make_record, examples):
    event = json.loads(make_record(c.LOT))
    if where == "lot_id":
        event["data"]["lot_id"] = "L\x001"
    elif where == "browsers":
        event["data"]["browsers"] = [{"name": "Saf\x00ari", "version": "17"}]
    else:
        event[where] = "a\x00b"
    got, message = reason(json.dumps(event).encode())
    assert (got, message.split(": ")[0]) == (code, path)


def test_an_escaped_backslash_before_u0000_is_not_a_nul(make_record, examples):
    raw = make_record(c.LOT, examples[c.LOT] | {"lot_id": "C:\\u0000"})
    assert b"\\\\u0000" in raw and c.parse_event(raw).data.lot_id == "C:\\u0000"


@pytest.mark.parametrize("digits", [400, 4_600, 5_000])
def test_a_quantity_of_thousands_of_digits_is_donnees_invalides_like_any_quantity_beyond_its_bound(digits, make_record):
    raw = make_record(c.LOT).replace(b'"quantity": 30', b'"quantity": ' + b"9" * digits)
    assert reason(raw)[0] == "donnees-invalides"
