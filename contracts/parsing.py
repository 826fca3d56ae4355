"""Kafka record value in, typed event or DLQ reason out: the one entry point of every service.

The hot path is one `validate_json` of a discriminated union over all event types, built once:
the bytes are read a single time, in Rust. Only a refused record pays for working out its
reason, in the order a partner fixes things: size, JSON, envelope, type, topic, then data; the
reason's message is French (`messages`), naming the field and the rule.

pydantic's JSON reader takes the last of two equal keys and reads `NaN` and `Infinity`; RFC 8259
JSON has neither (a repeated `source` would name two declarants to two readers), so the bytes
also go through jiter in its strict mode, which refuses both.
"""

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Union

import jiter
from pydantic import Field, TypeAdapter, ValidationError

from ._base import Payload
from ._identifiers import IDENTIFIER_REASONS, PERSONAL_FIELDS, short_repr
from .envelope import SOURCE_FORMS, CloudEvent, event_model
from .messages import json_syntax, rule
from .payloads import PAYLOADS
from .topics import ALERTE_LEVEE, ALERTE_RESOLUE, FORMATION_SUIVIE, RESSOURCE_PUBLIEE, RESSOURCE_RETIREE, TOPIC_TYPES

MAX_RECORD_BYTES = 256 * 1024  # CONTRACTS.md Limits: a record value
TOO_LARGE = "trop-volumineux"
IN_THE_FUTURE = "time-futur"
REASON_CODES = frozenset(
    {"json-invalide", "cloudevent-invalide", "type-inconnu", "type-hors-topic", "donnees-invalides"}
    | {TOO_LARGE, IN_THE_FUTURE}
    | IDENTIFIER_REASONS
)
# What pydantic's and jiter's JSON readers say of a number of thousands of digits: valid JSON
# that no field of the contract can take, so donnees-invalides like any number beyond its bound.
_OUT_OF_RANGE = "number out of range"
_KEY_FIELDS = {
    FORMATION_SUIVIE: "data.teacher_id",
    RESSOURCE_PUBLIEE: "data.resource_id",
    RESSOURCE_RETIREE: "data.resource_id",
    ALERTE_LEVEE: "data.uai/data.resource_id",
    ALERTE_RESOLUE: "data.uai/data.resource_id",
}
"""What an event's `subject` names, when not its UAI (Payload.subject)."""


def _key_field(event: CloudEvent) -> str:
    """Where an event's key is read from, to name it (never its value)."""
    if event.type in _KEY_FIELDS:
        return _KEY_FIELDS[event.type]
    return "data.uai" if event.data.subject == getattr(event.data, "uai", None) else "data.uai/son entité"


# pydantic's error types for a string or a list beyond its `max_length`.
_TOO_LONG = frozenset({"string_too_long", "too_long"})
_JSON_TYPES = {
    dict: "un objet",
    list: "un tableau",
    str: "une chaîne",
    bool: "un booléen",
    int: "un nombre",
    float: "un nombre",
    type(None): "null",
}
# Messages that already name the bad value, written by our own validators.
_OWN_MESSAGES = IDENTIFIER_REASONS | {"cloudevent-invalide"}
# What those say without the value, where it must not be repeated (teacher-id-invalide's never is).
_WITHHELD_RULES = {
    "uai-invalide": "pas un UAI (7 chiffres puis la lettre de contrôle)",
    "crcn-invalide": "pas une compétence CRCN (1.1 à 5.2)",
    "niveau-invalide": "pas un niveau CRCN (entier de 1 à 8)",
    "version-invalide": "pas une version (1 à 4 entiers de 9 chiffres au plus, séparés par des points)",
    "code-invalide": "pas un code de la forme attendue",
    "cloudevent-invalide": "refusé par CONTRACTS.md (Envelope)",
}
_WITHHELD_ENVELOPE = {"source": f"pas une source connue ({SOURCE_FORMS})", "time": "avant 1970-01-01T00:00:00Z"}
"""Our envelope validators' rules, by field, without the value."""


class ContractError(Exception):
    """A record the contract refuses; `code` is the DLQ reason, `message` tells a person why."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class EventParser:
    """Parses the records of a set of topics; `parse_event` is the one for the v1 contract."""

    def __init__(
        self,
        payloads: Mapping[str, type[Payload]],
        topic_types: Mapping[str, frozenset[str]],
        private: frozenset[str] = frozenset(),
    ):
        """`private`: the platform's own types among `payloads`, which the contract does not know:
        on a partner's topic (one that takes none of them), `type-inconnu`, as it is to the other
        services; on another internal topic, `type-hors-topic`."""
        events = tuple(event_model(t, model) for t, model in payloads.items())
        # A union built at run time from the payload table: a type checker cannot follow it.
        union = Annotated[Union[events], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007
        self._events: TypeAdapter[CloudEvent] = TypeAdapter(union)
        self._envelope = TypeAdapter(CloudEvent)
        self._topic_types, self._private = topic_types, private
        # Their `data` refused whole (a string, a list): it may hold a personal field's value.
        self._personal = frozenset(t for t, model in payloads.items() if PERSONAL_FIELDS & model.model_fields.keys())

    def __call__(self, raw: bytes, topic: str | None = None, *, not_after: datetime | None = None) -> CloudEvent:
        """`not_after`: the latest acceptable `time` (the receiver's clock plus its allowed skew)."""
        if len(raw) > MAX_RECORD_BYTES:
            raise ContractError(TOO_LARGE, f"valeur de {len(raw)} octets, au-delà de {MAX_RECORD_BYTES} octets")
        try:
            event = self._events.validate_json(raw)
        except ValidationError as e:
            _check_json(raw)
            raise self._refusal(raw, topic, e.errors(include_url=False)) from None
        _check_json(raw)
        # In the order of the reasons: a NUL in the envelope before the type's topic, one in
        # `data` after it and after `subject` (as any other of data's faults).
        nul = _nul(raw)
        if nul is not None and nul.code != "donnees-invalides":
            raise nul
        if topic is not None and event.type not in self._topic_types.get(topic, ()):
            raise self._off_topic(event.type, topic)
        if event.subject is not None and event.subject != event.data.subject:
            # Never kept unchecked: it would be stored (the inbox) and could carry what the
            # contract keeps out of the platform (a name, an e-mail). Not quoted either.
            raise ContractError(
                "cloudevent-invalide",
                f"subject: différent de la clé de l'entité ({_key_field(event)}), "
                "qu'il doit reprendre quand il est présent (CONTRACTS.md, Envelope)",
            )
        if nul is not None:
            raise nul
        if not_after is not None and event.time > not_after:
            raise ContractError(
                IN_THE_FUTURE,
                f"time {event.time.isoformat()}: postérieur à l'horloge du service "
                f"plus l'écart toléré ({not_after.isoformat(timespec='seconds')})",
            )
        return event

    def _refusal(self, raw: bytes, topic: str | None, errors: list[Any]) -> ContractError:
        first = errors[0]
        if first["type"] in ("json_invalid", "json_type"):
            syntax = json_syntax(str(first.get("ctx", {}).get("error", "")))
            if _OUT_OF_RANGE in first["msg"]:  # JSON (_check_json said so), but a number no field can take
                if not raw.lstrip(b" \t\r\n").startswith(b"{"):
                    return ContractError("json-invalide", "attendu un objet JSON (l'événement)")
                return ContractError("donnees-invalides", syntax)
            return ContractError("json-invalide", f"pas du JSON en UTF-8: {syntax}")
        if not first["loc"]:
            if first["type"] == "union_tag_not_found":
                return ContractError("cloudevent-invalide", "type: attribut obligatoire absent")
            if first["type"] == "union_tag_invalid":
                return self._unknown_type(raw)
            got = _JSON_TYPES.get(type(first["input"]), "autre chose")
            return ContractError("json-invalide", f"attendu un objet JSON (l'événement), reçu {got}")
        envelope = [e for e in errors if not _in_data(e)]
        if envelope:
            return ContractError("cloudevent-invalide", self._describe(envelope[0]))
        if topic is not None and first["loc"][0] not in self._topic_types.get(topic, ()):
            return self._off_topic(first["loc"][0], topic)
        too_long = next((e for e in errors if e["type"] in _TOO_LONG), None)
        if too_long is not None:
            return ContractError(TOO_LARGE, self._describe(too_long))
        own = next((e for e in errors if e["type"] in IDENTIFIER_REASONS), None)
        if own is not None:
            return ContractError(own["type"], self._describe(own))
        return ContractError("donnees-invalides", self._describe(first))

    def _describe(self, error: Any) -> str:
        # A record about one person (a teacher's affectation or training): none of its values is
        # repeated, its envelope's included. A rectorat's export with a column shifted puts a
        # name or an e-mail in any of them (audit s64 privacy F1).
        return _describe(error, withheld=error["loc"][0] in self._personal)

    def _unknown_type(self, raw: bytes) -> ContractError:
        """A type we do not know, unless the envelope itself is broken: that is fixed first."""
        try:
            envelope = self._envelope.validate_json(raw)
        except ValidationError as e:
            return ContractError("cloudevent-invalide", _describe(e.errors(include_url=False)[0], 0))
        return _unknown(envelope.type)

    def _off_topic(self, type: str, topic: str) -> ContractError:
        if type in self._private and not self._topic_types.get(topic, frozenset()) & self._private:  # a partner's topic
            return _unknown(type)
        allowed = ", ".join(sorted(self._topic_types.get(topic, ()))) or "aucun type"
        return ContractError("type-hors-topic", f"type {type} interdit sur {topic} (attendu: {allowed})")


def _unknown(type: str) -> ContractError:
    return ContractError("type-inconnu", f"type {short_repr(type)}: pas un type v1 connu")


def _check_json(raw: bytes) -> None:
    try:
        # Keys cached (jiter's fixed-size string cache): every record repeats the envelope's and
        # its payload's key names, and building them again was a fifth of this check.
        jiter.from_json(raw, allow_inf_nan=False, catch_duplicate_keys=True, cache_mode="keys")
    except ValueError as e:
        if _OUT_OF_RANGE in str(e):
            # A number of thousands of digits is JSON, just too large for jiter, which stops
            # there: the rest is checked by the standard library, which reads numbers as text.
            # Then the schema judges it (a quantity beyond its bound is donnees-invalides).
            _check_json_with_long_numbers(raw)
            return
        raise ContractError("json-invalide", f"pas du JSON (RFC 8259): {json_syntax(str(e))}") from None


def _check_json_with_long_numbers(raw: bytes) -> None:
    def no_repeated_key(pairs: list[tuple[str, Any]]) -> None:
        if len({k for k, _ in pairs}) != len(pairs):
            raise ValueError("clé répétée dans un objet")

    def no_constant(name: str) -> None:
        raise ValueError(f"{name} n'est pas un nombre JSON")

    try:
        json.loads(
            raw.decode("utf-8"),
            parse_int=len,  # never int(): thousands of digits
            parse_float=len,
            parse_constant=no_constant,
            object_pairs_hook=no_repeated_key,
        )
    except UnicodeDecodeError:
        raise ContractError("json-invalide", "pas du JSON (RFC 8259): octets hors UTF-8") from None
    except RecursionError:
        raise ContractError("json-invalide", "pas du JSON (RFC 8259): imbrication trop profonde") from None
    except ValueError as e:
        why = "JSON mal formé" if isinstance(e, json.JSONDecodeError) else str(e)  # else one of the hooks above
        raise ContractError("json-invalide", f"pas du JSON (RFC 8259): {why}") from None


def check_document(raw: bytes) -> None:
    """What the contract asks of any JSON document, an event or not (a simulation's body): JSON
    (RFC 8259, no NaN, no repeated key: json-invalide) with no NUL in a text (donnees-invalides),
    or ContractError."""
    _check_json(raw)
    if (nul := _nul(raw, "donnees-invalides")) is not None:
        raise nul


MAX_PATH = 120
"""The longest field path a message names (a NUL's path is made of the partner's own keys)."""


def _nul(raw: bytes, code: str | None = None) -> ContractError | None:
    """The refusal of a NUL in a text, if any: `code` its reason, else by where it is, the
    envelope looked at before `data` whatever the order of its keys (cloudevent-invalide, then
    donnees-invalides)."""
    if b"\\u0000" not in raw:  # only then can a string hold NUL, which no text column stores
        return None
    document = jiter.from_json(raw)
    event = document if isinstance(document, dict) else {}
    envelope = {k: v for k, v in event.items() if k != "data"} if event else document
    data = [({"data": event["data"]}, "donnees-invalides")] if "data" in event else []
    for part, where in [(envelope, "cloudevent-invalide"), *data]:
        path = _nul_path(part)
        if path is not None:
            if len(path) > MAX_PATH:  # built from the partner's own keys, of any length
                path = path[: MAX_PATH - 1] + "…"
            return ContractError(code or where, f"{path}: caractère NUL (\\u0000) interdit dans un texte")
    return None


def _nul_path(value: Any, path: str = "") -> str | None:
    """Where the first string (value or key) holding a NUL character is, if any."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        here = f"{path}[{k}]" if isinstance(k, int) else f"{path}.{k}".removeprefix(".")
        if isinstance(k, str) and "\x00" in k:
            return here
        if (found := _nul_path(v, here)) is not None:
            return found
    return None


def _in_data(error: Any) -> bool:
    """Errors under `data` are the payload's; a missing `data` is the envelope's."""
    loc = error["loc"]
    return len(loc) > 1 and loc[1] == "data" and not (len(loc) == 2 and error["type"] == "missing")


def _describe(error: Any, skip: int = 1, withheld: bool = False) -> str:
    """`data.browsers[0].version: <why>`; `skip` drops the union tag pydantic puts first. The value
    received is not shown under a personal field's name, nor when `withheld` (one holding such a
    field, refused whole)."""
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"][skip:])
    path = path.removeprefix(".")
    if withheld and error["type"] in _WITHHELD_RULES:
        said = _WITHHELD_ENVELOPE.get(error["loc"][-1]) if error["type"] == "cloudevent-invalide" else None
        return f"{path}: {said or _WITHHELD_RULES[error['type']]} (valeur non reproduite: donnée personnelle possible)"
    if error["type"] in _OWN_MESSAGES:
        return f"{path}: {error['msg']}"
    if error["type"] == "missing" or error["type"] in _TOO_LONG:
        return f"{path}: {rule(error)}"  # no value, or a long one: its length is the news
    if withheld or PERSONAL_FIELDS.intersection(p for p in error["loc"] if isinstance(p, str)):
        return f"{path}: {rule(error)} (valeur non reproduite: donnée personnelle possible)"
    return f"{path}: {rule(error)} (reçu {short_repr(error['input'])})"


_V1 = EventParser(PAYLOADS, TOPIC_TYPES)


def parse_event(raw: bytes, topic: str | None = None, *, not_after: datetime | None = None) -> CloudEvent:
    """The typed event in a record value, or ContractError naming the DLQ reason.

    With `topic`, an event type that the contract does not allow on it is refused too; with
    `not_after`, an event whose `time` is later (`time-futur`).
    """
    return _V1(raw, topic, not_after=not_after)
