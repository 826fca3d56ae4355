"""An accepted event without the attributes and fields the contract does not know.

The contract grows by optional fields, so an unknown field never refuses an event
(contracts/_base.py); but "no name, e-mail or NUMEN ever enters the platform" (CONTRACTS.md),
and a rectorat's stray `data.email` would otherwise be written to Kafka as sent and kept there
for the topic's retention. The passerelle, where partners' declarations come in, writes the
event without such members, at any depth of `data` (`data.os.build`, `data.browsers[].canal`)
and in the envelope (a CloudEvents extension attribute: the contract names the attributes it
has, and the platform reads no other), and its answer names them (`champs_ignores`), never
their values.

Everything else stays byte for byte as sent: each kept member's key and value, numbers as
written. Only the objects that lose a member are written again, their kept members joined by
commas without the spaces between them. An event with no unknown member is written exactly as
sent.
"""

import functools
from typing import Any, get_args

import jiter
from pydantic import BaseModel

from contracts.parsing import MAX_PATH
from services.passerelle.corps import LENIENT, past_space

MAX_NAMED = 16
"""The paths an answer names, at most (their keys are the partner's, any number of them)."""


def sans_inconnus(raw: bytes, event: BaseModel) -> tuple[bytes, list[str]]:
    """`raw`, an event the contract accepted as `event` (contracts.parse_event's), without the
    members its model does not know, at any depth; and their paths, each once, in the order met
    (MAX_NAMED at most). `raw` itself when there are none."""
    # Looked for in the decoded event first (jiter's, as the contract's): most have none.
    if not _any_unknown(jiter.from_json(raw), event):
        return raw, []
    text = raw.decode()  # UTF-8: the contract checked it
    paths: list[str] = []
    written, _ = _object(text, past_space(text, 0), event, "", paths)
    assert written is not None, "an unknown member found in the decoded event, none in its text"
    return written.encode(), paths


def _any_unknown(value: Any, parsed: Any) -> bool:
    """Whether `value` (decoded JSON) holds a member `parsed` (its model) does not know. The
    members checked at once per object, and only those whose values may hold models looked
    into, in plain loops: most events pass here in 2-3 microseconds."""
    if isinstance(parsed, BaseModel):
        if not isinstance(value, dict):
            return False
        model = type(parsed)
        if not _names(model).issuperset(value):
            return True
        for name in _nested(model):
            if name in value and _any_unknown(value[name], getattr(parsed, name)):
                return True
    elif isinstance(parsed, (list, tuple)) and isinstance(value, list):
        for item, parsed_item in zip(value, parsed, strict=False):
            if _any_unknown(item, parsed_item):
                return True
    return False


@functools.cache
def _names(model: type[BaseModel]) -> frozenset[str]:
    return frozenset(model.model_fields)


@functools.cache
def _nested(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of `model` whose values may hold models (`os`, `browsers`, `requirements`)."""
    return tuple(name for name, field in model.model_fields.items() if _holds_model_type(field.annotation))


def _holds_model_type(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_holds_model_type(arg) for arg in get_args(annotation))


def _object(text: str, at: int, parsed: BaseModel, path: str, paths: list[str]) -> tuple[str | None, int]:
    """The object at `at` (its model `parsed`) written again without its unknown members (None
    when it has none, at any depth), and where it ends."""
    assert text[at] == "{"
    model = type(parsed)
    members: list[str] = []
    changed = False
    i = past_space(text, at + 1)
    if text[i] == "}":
        return None, i + 1
    while True:
        key, after_key = LENIENT.raw_decode(text, i)
        start = past_space(text, past_space(text, after_key) + 1)  # past the colon
        here = f"{path}.{key}" if path else key
        if key not in _names(model):
            _note(paths, here)
            end = _end(text, start)
            changed = True
        else:
            value, end = (
                _value(text, start, getattr(parsed, key), here, paths)
                if key in _nested(model)
                else (None, _end(text, start))
            )
            changed |= value is not None
            members.append(text[i:start] + (value if value is not None else text[start:end]))
        i = past_space(text, end)
        if text[i] == "}":
            end = i + 1
            break
        i = past_space(text, i + 1)  # past the comma
    return ("{" + ",".join(members) + "}" if changed else None), end


def _value(text: str, at: int, parsed: Any, path: str, paths: list[str]) -> tuple[str | None, int]:
    """The value at `at`, of a field that may hold models (_nested), written again if it lost a
    member somewhere within (else None), and where it ends."""
    if isinstance(parsed, BaseModel) and text[at] == "{":
        return _object(text, at, parsed, path, paths)
    if isinstance(parsed, list | tuple) and text[at] == "[":
        return _array(text, at, parsed, path, paths)
    return None, _end(text, at)


def _array(text: str, at: int, parsed: list | tuple, path: str, paths: list[str]) -> tuple[str | None, int]:
    items: list[str] = []
    changed = False
    i = past_space(text, at + 1)
    if text[i] == "]":
        return None, i + 1
    for parsed_item in parsed:  # as many as the array holds: it is what the model was read from
        value, end = _value(text, i, parsed_item, f"{path}[]", paths)
        changed |= value is not None
        items.append(value if value is not None else text[i:end])
        i = past_space(text, end)
        if text[i] == "]":
            break
        i = past_space(text, i + 1)
    return ("[" + ",".join(items) + "]" if changed else None), i + 1


def _end(text: str, at: int) -> int:
    """Where the value at `at` ends (read whole, numbers of any length as corps.py reads them)."""
    return LENIENT.raw_decode(text, at)[1]


def _note(paths: list[str], path: str) -> None:
    if len(paths) >= MAX_NAMED:  # named no further: else a check over every one met (33,000 keys: 7.6 s)
        return
    if len(path) > MAX_PATH:  # built from the partner's own keys, of any length
        path = path[: MAX_PATH - 1] + "…"
    if path not in paths:
        paths.append(path)
