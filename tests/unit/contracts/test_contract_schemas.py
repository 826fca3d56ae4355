"""The committed JSON Schema files are what partners read: they must match the models."""

import json

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
    published = Draft202012Validator(json.loads((schemas.SCHEMA_DIR / f"{type_}.json").read_text()))
    try:
        c.PAYLOADS[type_].model_validate_json(json.dumps(data))
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted == published.is_valid(data), (value, list(published.iter_errors(data))[:1])
