"""`parse_event`: every record value is either a typed event or a ContractError with its reason."""

import json
from datetime import UTC, datetime

import pytest

import contracts as c


def reason(raw: bytes, topic: str | None = None) -> tuple[str, str]:
    with pytest.raises(c.ContractError) as caught:
        c.parse_event(raw, topic)
    assert caught.value.code in c.REASON_CODES
    return caught.value.code, caught.value.message


def test_a_valid_record_of_every_type_parses_to_its_typed_payload(event_type, make_record):
    topic = next(t for t, types in c.TOPIC_TYPES.items() if event_type in types)
    event = c.parse_event(make_record(event_type), topic)
    assert isinstance(event, c.CloudEvent) and event.type == event_type
    assert type(event.data) is c.PAYLOADS[event_type]
    assert event.time.utcoffset() is not None


@pytest.mark.parametrize(
    ("event_type", "named"),
    [
        (c.LOT, "data.uai"),
        (c.FORMATION_SUIVIE, "data.teacher_id"),
        (c.RESSOURCE_PUBLIEE, "data.resource_id"),
        (c.ALERTE_LEVEE, "data.uai/data.resource_id"),
    ],
)
def test_a_subject_other_than_the_entity_key_is_refused_naming_the_key_not_the_value(event_type, named, make_record):
    email = "prenom.nom@ac-rennes.fr"
    code, message = reason(make_record(event_type, subject=email))
    assert code == "cloudevent-invalide"
    assert message.startswith("subject:") and named in message and email not in message
    assert reason(make_record(event_type, subject=""))[0] == "cloudevent-invalide"


@pytest.mark.parametrize("event_type", [c.LOT, c.FORMATION_SUIVIE, c.RESSOURCE_PUBLIEE, c.ALERTE_LEVEE])
def test_a_subject_absent_or_equal_to_the_entity_key_is_accepted(event_type, make_record, examples):
    data = examples[event_type]
    if event_type == c.ALERTE_LEVEE:
        key = f"{data['uai']}/{data['resource_id']}"
    else:
        key = data[{c.FORMATION_SUIVIE: "teacher_id", c.RESSOURCE_PUBLIEE: "resource_id"}.get(event_type, "uai")]
    assert c.parse_event(make_record(event_type, subject=key)).subject == key
    assert c.parse_event(make_record(event_type, subject=...)).subject is None


def test_equal_instants_in_different_offsets_compare_equal(make_record):
    a = c.parse_event(make_record(c.LOT, time="2024-03-01T10:00:00+01:00"))
    b = c.parse_event(make_record(c.LOT, time="2024-03-01T09:00:00Z"))
    assert a.time == b.time


@pytest.mark.parametrize("raw", [b"", b"not json", b'{"a": 1', b"\xff\xfe{}", b'{"s": "\xe9"}'])
def test_bytes_that_are_not_utf8_json_are_json_invalide(raw):
    assert reason(raw)[0] == "json-invalide"


@pytest.mark.parametrize("raw", [b"[]", b"42", b'"lot"', b"null"])
def test_json_that_is_not_an_object_is_json_invalide(raw):
    assert reason(raw)[0] == "json-invalide"


@pytest.mark.parametrize(
    ("envelope", "attribute"),
    [
        ({"specversion": "0.3"}, "specversion"),
        ({"specversion": ...}, "specversion"),
        ({"id": ""}, "id"),
        ({"id": "x" * 129}, "id"),
        ({"id": 1}, "id"),
        ({"source": "/rectorats/1"}, "source"),
        ({"source": ...}, "source"),
        ({"type": ...}, "type"),
        ({"type": 5}, "type"),
        ({"time": ...}, "time"),
        ({"time": "2024-03-01T10:00:00"}, "time"),
        ({"time": "2024-03-01"}, "time"),
        ({"time": 1709283600}, "time"),
        ({"datacontenttype": "application/xml"}, "datacontenttype"),
        ({"data": ...}, "data"),
    ],
)
def test_envelope_breaking_its_rules_is_cloudevent_invalide_naming_the_attribute(envelope, attribute, make_record):
    code, message = reason(make_record(c.LOT, **envelope))
    assert code == "cloudevent-invalide"
    assert message.startswith(f"{attribute}: ")


def test_naive_time_is_refused_with_the_value(make_record):
    code, message = reason(make_record(c.LOT, time="2024-03-01T10:00:00"))
    assert code == "cloudevent-invalide" and "'2024-03-01T10:00:00'" in message


@pytest.mark.parametrize(
    "time",
    [
        "1700000000",  # pydantic's Unix time, in seconds
        "1700000000000",  # and in milliseconds
        "0",
        1700000000,
        "2024-03-01T10:00Z",  # no seconds
        "2024-03-01T10:00:00+0100",  # no colon in the offset
        "2024-03-01T10:00:00,5Z",  # a comma before the fraction
        "2024-03-01 10:00:00Z",  # a space for the T
        "2024-03-01T10:00:00.Z",  # a point without a fraction
        "２０２４-03-01T10:00:00Z",  # digits that are not ASCII
        "2024-02-30T10:00:00Z",  # a day that does not exist
        "2024-03-01T24:00:00Z",
        "2024-03-01T10:00:00+00:99",  # offset minutes run 00-59
        "2024-03-01T10:00:00+24:00",
        "2016-12-31T22:59:60Z",  # a leap second is 23:59:60 in UTC
        "2016-12-31T23:59:60+01:00",
        "2016-12-31T23:59:61Z",
    ],
)
def test_a_time_that_is_not_rfc_3339_is_cloudevent_invalide(time, make_record):
    code, message = reason(make_record(c.LOT, time=time))
    assert code == "cloudevent-invalide" and message.startswith("time: attendu un instant RFC 3339")


@pytest.mark.parametrize(
    ("time", "instant"),
    [
        ("2024-03-01t10:00:00z", datetime(2024, 3, 1, 10, tzinfo=UTC)),  # RFC 3339 allows either case
        ("2024-03-01T11:00:00.123456789+01:00", datetime(2024, 3, 1, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2024-03-01T10:00:00.5-00:00", datetime(2024, 3, 1, 10, 0, 0, 500000, tzinfo=UTC)),
        # A leap second (RFC 3339, 5.7), in UTC or another offset, its fraction dropped: its last microsecond.
        ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        ("2017-01-01T00:59:60.5+01:00", datetime(2016, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        ("2016-12-31T18:29:60-05:30", datetime(2016, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    ],
)
def test_every_rfc_3339_form_is_read_to_its_instant(time, instant, make_record):
    assert c.parse_event(make_record(c.LOT, time=time)).time == instant


@pytest.mark.parametrize("day", ["0", "86400", "1699920000", 86400, "2025-9-01", "2025-09-01T00:00:00", "2025-02-30"])
def test_a_date_that_is_not_yyyy_mm_dd_is_donnees_invalides(day, make_record, examples):
    code, message = reason(make_record(c.AFFECTATION, examples[c.AFFECTATION] | {"start": day}))
    assert code == "donnees-invalides" and message.startswith("data.start: attendu une date AAAA-MM-JJ")


def test_unknown_type_is_type_inconnu(make_record):
    assert reason(make_record("fr.education.equipement.lot.v2", data={})) == (
        "type-inconnu", "type 'fr.education.equipement.lot.v2': pas un type v1 connu"
    )  # fmt: skip


def test_a_broken_envelope_is_reported_before_an_unknown_type(make_record):
    raw = make_record("fr.education.x.v1", data={}, time="2024-03-01T10:00:00")
    assert reason(raw)[0] == "cloudevent-invalide"


@pytest.mark.parametrize(
    ("type", "topic"), [(c.LOT, c.FORMATION), (c.ETABLISSEMENT, c.CATALOGUE), (c.ALERTE_LEVEE, c.EQUIPEMENT)]
)
def test_a_type_on_a_topic_that_does_not_carry_it_is_type_hors_topic(type, topic, make_record):
    code, message = reason(make_record(type), topic)
    assert code == "type-hors-topic" and type in message and topic in message


def test_wrong_topic_is_reported_before_bad_data(make_record, examples):
    raw = make_record(c.LOT, examples[c.LOT] | {"uai": "0350122A"})
    assert reason(raw, c.FORMATION)[0] == "type-hors-topic"
    assert reason(raw, c.EQUIPEMENT)[0] == "uai-invalide"


def test_without_topic_any_v1_type_is_accepted(make_record):
    assert c.parse_event(make_record(c.ALERTE_LEVEE)).type == c.ALERTE_LEVEE


@pytest.mark.parametrize(
    ("type", "change", "code", "path"),
    [
        (c.LOT, {"uai": "0350122A"}, "uai-invalide", "data.uai"),
        (c.LOT, {"os": {"name": "Windows", "version": "12.x"}}, "version-invalide", "data.os.version"),
        (c.LOT, {"browsers": [{"name": "Safari", "version": "15"}, {"name": "Edge", "version": ""}]},
         "version-invalide", "data.browsers[1].version"),
        (c.FORMATION_SUIVIE, {"competences": [{"code": "6.1", "level": 3}]},
         "crcn-invalide", "data.competences[0].code"),
        (c.FORMATION_SUIVIE, {"competences": [{"code": "1.1", "level": 9}]},
         "niveau-invalide", "data.competences[0].level"),
        (c.AFFECTATION, {"teacher_id": "jean.dupont@ac-rennes.fr"}, "teacher-id-invalide", "data.teacher_id"),
        (c.ETABLISSEMENT, {"code_departement": "35"}, "code-invalide", "data.code_departement"),
        (c.RESSOURCE_PUBLIEE, {"requirements": [[{"type": "os", "name": "iOS", "max_version": "x"}]]},
         "version-invalide", "data.requirements[0][0].max_version"),
        (c.LOT, {"quantity": -1}, "donnees-invalides", "data.quantity"),
        (c.LOT, {"lot_id": ...}, "donnees-invalides", "data.lot_id"),
        (c.CONNECTIVITE, {"ent": "oui"}, "donnees-invalides", "data.ent"),
    ],
)  # fmt: skip
def test_bad_data_names_its_reason_and_field_path(type, change, code, path, make_record, examples):
    data = {k: v for k, v in (examples[type] | change).items() if v is not ...}
    got_code, message = reason(make_record(type, data))
    assert (got_code, message.split(": ")[0]) == (code, path)


def test_an_identifier_reason_wins_over_a_generic_one_elsewhere_in_the_data(make_record, examples):
    data = examples[c.LOT] | {"quantity": -1, "os": {"name": "Windows", "version": "12.x"}}
    assert reason(make_record(c.LOT, data)) == (
        "version-invalide",
        "data.os.version: '12.x' n'est pas une version (1 à 4 entiers de 9 chiffres au plus, séparés par des points)",
    )


@pytest.mark.parametrize("data", [None, [], "lot", 5])
def test_data_that_is_not_an_object_is_donnees_invalides(data, make_record):
    expected = ("donnees-invalides", f"data: attendu un objet (reçu {data!r})")
    assert reason(make_record(c.LOT, data=data)) == expected


@pytest.mark.parametrize("type_", [c.AFFECTATION, c.FORMATION_SUIVIE])
@pytest.mark.parametrize("shape", [json.dumps, lambda data: [data]])
def test_data_holding_a_teacher_id_refused_whole_is_not_shown(type_, shape, make_record, examples):
    """Its JSON encoded twice (a string), or put in a list: the message names the rule, never
    what was received, which holds the teacher's identifier."""
    data = examples[type_] | {"teacher_id": "jean.dupont@ac-rennes.fr"}
    assert reason(make_record(type_, data=shape(data))) == (
        "donnees-invalides",
        "data: attendu un objet (valeur non reproduite: donnée personnelle possible)",
    )


def test_extension_attributes_are_ignored(make_record):
    raw = json.loads(make_record(c.LOT))
    raw["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert c.parse_event(json.dumps(raw).encode()).type == c.LOT


def test_contract_error_reads_as_code_then_message():
    error = c.ContractError("uai-invalide", "UAI 0010856B: la lettre de contrôle devrait être A")
    assert str(error) == "uai-invalide: UAI 0010856B: la lettre de contrôle devrait être A"


def test_a_nul_under_a_huge_key_is_named_by_a_bounded_path(make_record):
    """The path of a NUL is made of the partner's keys: its message stays short however long they are."""
    record = json.loads(make_record(c.LOT))
    record["x" * 255_000] = {"y": "a\u0000b"}
    code, message = reason(json.dumps(record).encode())
    assert code == "cloudevent-invalide" and message.endswith("…: caractère NUL (\\u0000) interdit dans un texte")
    assert len(message) < 200


LONG = "1" + "0" * 4301  # more digits than jiter (and int()) read: JSON all the same


@pytest.mark.parametrize(
    "raw",
    [
        '{"a": ' + LONG,  # cut short
        '{"a": ' + LONG + ', "a": 1}',
        '{"a": ' + LONG + ', "b": NaN}',
        '{"a": ' + LONG + "} x",
        LONG,
        "[" + LONG + "]",
    ],
)
def test_a_very_long_number_does_not_hide_what_is_not_json(raw):
    """jiter stops at a number it cannot read: what follows is still checked, and a document
    that is not JSON, or not an object, is json-invalide, not donnees-invalides."""
    assert reason(raw.encode())[0] == "json-invalide"


def test_a_very_long_number_in_a_field_is_donnees_invalides(make_record):
    raw = make_record(c.LOT).replace(b'"quantity": 30', b'"quantity": ' + LONG.encode())
    assert LONG.encode() in raw
    assert reason(raw)[0] == "donnees-invalides"


def test_a_nul_in_data_is_judged_after_the_type_s_topic_and_the_subject(make_record, examples):
    """The reasons' order (size, JSON, envelope, type, topic, then data): a NUL in `data` was
    refused `donnees-invalides` before the topic's check and the subject's, whose reasons a
    partner must fix first (and the passerelle, whose parser knows no internal type, said
    `type-inconnu` of an internal type that ressources refused for its NUL)."""
    nul = examples[c.AFFECTATION] | {"note": "x\u0000"}
    assert reason(make_record(c.AFFECTATION, nul), c.EQUIPEMENT)[0] == "type-hors-topic"
    assert reason(make_record(c.AFFECTATION, nul, subject="autre"), c.FORMATION)[0] == "cloudevent-invalide"
    assert reason(make_record(c.AFFECTATION, nul), c.FORMATION)[0] == "donnees-invalides"


@pytest.mark.parametrize("attribute", ["extension", "dataschema"])
def test_a_nul_in_the_envelope_is_judged_before_the_type_s_topic(attribute, make_record):
    raw = make_record(c.AFFECTATION, **{attribute: "x\u0000"})
    assert reason(raw, c.EQUIPEMENT)[0] == "cloudevent-invalide"


def test_a_nul_in_the_envelope_is_named_before_one_in_data_whatever_the_order_of_their_keys(make_record, examples):
    """The first NUL found named the reason: `data` first in the JSON, `type-hors-topic` (the
    data's NUL waits for the topic), else `cloudevent-invalide`."""
    event = json.loads(make_record(c.AFFECTATION, extension="x\u0000"))
    data_first = {"data": examples[c.AFFECTATION] | {"note": "x\u0000"}} | {
        k: v for k, v in event.items() if k != "data"
    }
    assert next(iter(data_first)) == "data" and "\u0000" in data_first["data"]["note"]
    assert reason(json.dumps(data_first).encode(), c.EQUIPEMENT)[0] == "cloudevent-invalide"
