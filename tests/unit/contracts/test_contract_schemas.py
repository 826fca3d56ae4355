"""The committed JSON Schema files are what partners read: they must match the models."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from pydantic import ValidationError

import contracts as c
from contracts import schemas


def test_committed_schema_files_match_the_models():
    expected = schemas.render()
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in schemas.SCHEMA_DIR.glob("*.json")}
    names = expected.keys() | on_disk.keys()
    stale = sorted(name for name in names if expected.get(name) != on_disk.get(name))
    assert not stale, f"contracts/schemas/ is out of date ({', '.join(stale)}): run ./dev gen"


def test_one_schema_per_type_plus_the_envelope():
    assert set(schemas.render()) == {"cloudevent.json"} | {f"{t}.json" for t in c.PAYLOADS}


def test_rendering_is_deterministic_sorted_and_newline_terminated():
    first, second = schemas.render(), schemas.render()
    assert first == second
    for text in first.values():
        assert text.endswith("}\n")
        assert text == json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def test_write_replaces_stale_files(tmp_path):
    (tmp_path / "fr.education.old.thing.v1.json").write_text("{}")
    written = schemas.write(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)


def test_the_uai_schema_states_the_check_letter_rule():
    lot = json.loads(schemas.render()[f"{c.LOT}.json"])
    assert lot["properties"]["uai"]["pattern"] == "^[0-9]{7}[A-Z]$"
    assert "% 23" in lot["properties"]["uai"]["description"]


INTEGER_FIELDS = [  # (type, where an integer is in its example)
    (c.LOT, ("quantity",)),
    (c.RESSOURCE_PUBLIEE, ("tools", 0, "min_quantity")),
    (c.FORMATION_SUIVIE, ("competences", 0, "level")),
    (c.RESSOURCE_PUBLIEE, ("training", "competences", 0, "level")),
]


@pytest.mark.parametrize("type_, path", INTEGER_FIELDS)
@pytest.mark.parametrize("value", [3, 3.0, 30e-1, 3.5, 9.0, -1.0, 1e7, True, "3", None])
def test_an_integer_field_takes_exactly_what_its_published_schema_takes(type_, path, value, examples):
    """JSON Schema's integer is any number without a fractional part: a partner validating
    against the published schema and sending 3.0 must not be refused by the platform."""
    data = examples[type_]
    parent = data
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    assert_same_verdict(type_, data, value)


def assert_same_verdict(type_: str, data: dict, value: object) -> bool:
    """The platform's verdict on `data` (`value` in it) is its published schema's; returns it."""
    published = Draft202012Validator(json.loads((schemas.SCHEMA_DIR / f"{type_}.json").read_text()))
    try:
        c.PAYLOADS[type_].model_validate_json(json.dumps(data))
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted == published.is_valid(data), (value, list(published.iter_errors(data))[:1])
    return accepted


DATE_FIELDS = [
    (c.AFFECTATION, "start"),
    (c.AFFECTATION, "end"),
    (c.FORMATION_SUIVIE, "completed_on"),
    (c.ABONNEMENT, "start"),
    (c.ABONNEMENT, "end"),
]


@pytest.mark.parametrize("type_, field", DATE_FIELDS)
@pytest.mark.parametrize(
    "value", ["0999-12-31", "1969-12-31", "1970-01-01", "2024-02-29", "2099-12-31", "2100-12-31", "2101-01-01"]
)
def test_a_date_field_takes_exactly_what_its_published_schema_takes(type_, field, value, examples):
    """CONTRACTS.md, Limits: dates from 1970-01-01 to 2100-12-31, bounds "published in the JSON
    Schemas": a partner validating against them must meet the platform's verdict on a day that
    exists (a validator asserting no format does not judge 2024-02-30)."""
    accepted = assert_same_verdict(type_, examples[type_] | {field: value}, value)
    assert accepted == ("1970-01-01" <= value <= "2100-12-31")


@pytest.mark.parametrize(
    "time",
    [
        "0999-06-01T00:00:00Z",
        "1800-06-01T00:00:00Z",
        "1969-12-30T23:00:00-23:59",
        "1969-12-31T23:59:59Z",
        "1969-12-31T23:59:59.999999+00:00",
        "1969-12-31T23:00:00-01:00",
        "1969-12-31t23:30:00-00:45",
        "1970-01-01T00:00:00Z",
        "1970-01-01T00:30:00+01:00",
        "2024-03-01T10:00:00+01:00",
    ],
)
def test_the_published_envelope_refuses_a_time_before_its_lower_bound_and_nothing_the_platform_takes(time, make_record):
    """CONTRACTS.md, Limits: `time` not before 1970-01-01T00:00:00Z, a bound published in the
    envelope's schema. Its pattern judges the day as written, not the instant: a time of
    1969-12-31 or 1970-01-01 passes it whichever side of the epoch its offset puts it, the
    platform judging the instant; any day before is refused by both."""
    raw = make_record(c.LOT, time=time)
    published = Draft202012Validator(json.loads((schemas.SCHEMA_DIR / "cloudevent.json").read_text()))
    try:
        c.parse_event(raw, c.EQUIPEMENT)
        accepted = True
    except c.ContractError:
        accepted = False
    published_accepts = published.is_valid(json.loads(raw))
    assert published_accepts == (time >= "1969-12-31"), (time, list(published.iter_errors(json.loads(raw)))[:1])
    assert published_accepts or not accepted
    assert accepted == (datetime.fromisoformat(time.upper()) >= datetime(1970, 1, 1, tzinfo=UTC))


VOCABULARY = {  # JSON Schema 2020-12's keywords (core, applicator, validation, meta-data, format, content)
    *("$schema", "$id", "$ref", "$defs", "$comment", "$anchor", "$dynamicRef", "$dynamicAnchor"),
    *("allOf", "anyOf", "oneOf", "not", "if", "then", "else", "dependentSchemas", "prefixItems", "items"),
    *("contains", "properties", "patternProperties", "additionalProperties", "propertyNames"),
    *("unevaluatedItems", "unevaluatedProperties", "type", "enum", "const", "multipleOf", "maximum"),
    *("exclusiveMaximum", "minimum", "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems"),
    *("minItems", "uniqueItems", "maxContains", "minContains", "maxProperties", "minProperties", "required"),
    *("dependentRequired", "title", "description", "default", "deprecated", "readOnly", "writeOnly"),
    *("examples", "format", "contentEncoding", "contentMediaType", "contentSchema"),
}
_NAMED = {"properties", "patternProperties", "$defs", "dependentSchemas"}  # name -> schema
_ONE = {"not", "if", "then", "else", "items", "contains", "additionalProperties", "propertyNames"}
_ONE |= {"unevaluatedItems", "unevaluatedProperties", "contentSchema"}


def _keywords(schema: object) -> set[str]:
    if not isinstance(schema, dict):
        return set()
    found = set(schema)
    for key, value in schema.items():
        if key in _NAMED:
            found |= {k for v in value.values() for k in _keywords(v)}
        elif key in _ONE:
            found |= {k for v in value for k in _keywords(v)} if isinstance(value, list) else _keywords(value)
        elif key in ("allOf", "anyOf", "oneOf", "prefixItems"):
            found |= {k for v in value for k in _keywords(v)}
    return found


@pytest.mark.parametrize("name", sorted(schemas.render()))
def test_a_published_schema_names_only_json_schema_s_own_keywords(name):
    """A validator in strict mode (Ajv's default) refuses to compile a schema naming a keyword it
    does not know: ajv-formats' formatMinimum made the date fields' schemas uncompilable for a
    partner validating without that plugin's keywords (review s69)."""
    assert _keywords(json.loads(schemas.render()[name])) <= VOCABULARY


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[3] / "contracts" / "asyncapi").glob("*.json")))
def test_an_asyncapi_document_s_schemas_name_only_json_schema_s_own_keywords(path):
    """Its schemas and its messages' payloads and headers, which partners load as they load the
    schemas (review s69)."""
    components = json.loads(path.read_text())["components"]
    found = {k for schema in components.get("schemas", {}).values() for k in _keywords(schema)}
    for message in components.get("messages", {}).values():
        found |= _keywords(message.get("payload")) | _keywords(message.get("headers"))
    assert found and found <= VOCABULARY


ASYNCAPI = Path(__file__).parents[3] / "contracts" / "asyncapi"
# Each topic of the contract a service writes, with the types its records carry.
WRITTEN = {**c.TOPIC_TYPES, c.ALERTES_ETAT: c.TOPIC_TYPES[c.ALERTES]}


def _published() -> list[tuple[str, str, Draft202012Validator]]:
    """(document, topic, validator of what it says a record's value is) for each contract topic
    a committed AsyncAPI document says a service writes."""
    out = []
    for path in sorted(ASYNCAPI.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        messages = doc["components"]["messages"]
        for channel in doc["channels"].values():
            if channel.get("address") in WRITTEN and "consume" not in json.dumps(channel["messages"]):
                (message,) = channel["messages"].values()
                payload = messages[message["$ref"].rsplit("/", 1)[-1]]["payload"]
                schema = {**payload, "components": doc["components"]}
                out.append((path.stem, channel["address"], Draft202012Validator(schema)))
    return out


def test_the_asyncapi_documents_name_the_contract_topics_the_services_write():
    assert {(name, topic) for name, topic, _ in _published()} == {
        ("passerelle", c.REFERENTIEL),
        ("passerelle", c.FORMATION),
        ("passerelle", c.EQUIPEMENT),
        ("passerelle", c.CATALOGUE),
        ("ressources", c.ALERTES),
        ("ressources", c.ALERTES_ETAT),
    }


@pytest.mark.parametrize(("name", "topic", "validator"), _published(), ids=lambda v: getattr(v, "__name__", v))
def test_the_asyncapi_documents_say_what_a_record_of_a_topic_is(name, topic, validator, make_record):
    """A record of each of the topic's types is what the document says (its whole value, a
    CloudEvent), one of another topic's types is not; null (a tombstone) only on the alert table."""
    for type_ in sorted(set().union(*c.TOPIC_TYPES.values())):
        record = json.loads(make_record(type_))
        errors = [e.message for e in validator.iter_errors(record)]
        if type_ in WRITTEN[topic]:
            assert not errors, f"{name}: a {type_} record on {topic}: {errors[:3]}"
        else:
            assert errors, f"{name}: a {type_} record said to be one of {topic}'s"
    assert validator.is_valid(None) == (topic == c.ALERTES_ETAT)
