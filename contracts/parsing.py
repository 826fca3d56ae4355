"""Kafka record value in, typed event or DLQ reason out: the one entry point of every service.

The hot path is one `validate_json` of a discriminated union over all event types, built once:
the bytes are read a single time, in Rust. Only a refused record pays for working out its
reason, in the order a partner fixes things: JSON, envelope, type, topic, then data.
"""

from collections.abc import Mapping
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter, ValidationError

from ._base import Payload
from ._identifiers import IDENTIFIER_REASONS, short_repr
from .envelope import CloudEvent, event_model
from .payloads import PAYLOADS
from .topics import TOPIC_TYPES

REASON_CODES = frozenset(
    {"json-invalide", "cloudevent-invalide", "type-inconnu", "type-hors-topic", "donnees-invalides"}
    | IDENTIFIER_REASONS
)
# Messages that already name the bad value, written by our own validators.
_OWN_MESSAGES = IDENTIFIER_REASONS | {"cloudevent-invalide"}


class ContractError(Exception):
    """A record the contract refuses; `code` is the DLQ reason, `message` tells a person why."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class EventParser:
    """Parses the records of a set of topics; `parse_event` is the one for the v1 contract."""

    def __init__(self, payloads: Mapping[str, type[Payload]], topic_types: Mapping[str, frozenset[str]]):
        events = tuple(event_model(t, model) for t, model in payloads.items())
        self._events = TypeAdapter(Annotated[Union[events], Field(discriminator="type")])  # noqa: UP007
        self._envelope = TypeAdapter(CloudEvent)
        self._topic_types = topic_types

    def __call__(self, raw: bytes, topic: str | None = None) -> CloudEvent:
        try:
            event = self._events.validate_json(raw)
        except ValidationError as e:
            raise self._refusal(raw, topic, e.errors(include_url=False)) from None
        if topic is not None and event.type not in self._topic_types.get(topic, ()):
            raise self._off_topic(event.type, topic)
        return event

    def _refusal(self, raw: bytes, topic: str | None, errors: list[Any]) -> ContractError:
        first = errors[0]
        if first["type"] in ("json_invalid", "json_type"):
            return ContractError("json-invalide", f"pas du JSON en UTF-8 ({first['msg']})")
        if not first["loc"]:
            if first["type"] == "union_tag_not_found":
                return ContractError("cloudevent-invalide", "type: attribut obligatoire absent")
            if first["type"] == "union_tag_invalid":
                return self._unknown_type(raw)
            got = short_repr(first["input"])
            return ContractError("json-invalide", f"attendu un objet JSON (l'événement), reçu {got}")
        envelope = [e for e in errors if not _in_data(e)]
        if envelope:
            return ContractError("cloudevent-invalide", _describe(envelope[0]))
        if topic is not None and first["loc"][0] not in self._topic_types.get(topic, ()):
            return self._off_topic(first["loc"][0], topic)
        own = next((e for e in errors if e["type"] in IDENTIFIER_REASONS), None)
        if own is not None:
            return ContractError(own["type"], _describe(own))
        return ContractError("donnees-invalides", _describe(first))

    def _unknown_type(self, raw: bytes) -> ContractError:
        """A type we do not know, unless the envelope itself is broken: that is fixed first."""
        try:
            envelope = self._envelope.validate_json(raw)
        except ValidationError as e:
            return ContractError("cloudevent-invalide", _describe(e.errors(include_url=False)[0], 0))
        return ContractError("type-inconnu", f"type {short_repr(envelope.type)}: pas un type v1 connu")

    def _off_topic(self, type: str, topic: str) -> ContractError:
        allowed = ", ".join(sorted(self._topic_types.get(topic, ()))) or "aucun type"
        return ContractError("type-hors-topic", f"type {type} interdit sur {topic} (attendu: {allowed})")


def _in_data(error: Any) -> bool:
    """Errors under `data` are the payload's; a missing `data` is the envelope's."""
    loc = error["loc"]
    return len(loc) > 1 and loc[1] == "data" and not (len(loc) == 2 and error["type"] == "missing")


def _describe(error: Any, skip: int = 1) -> str:
    """`data.browsers[0].version: <why>`; `skip` drops the union tag pydantic puts first."""
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"][skip:])
    path = path.removeprefix(".")
    if error["type"] in _OWN_MESSAGES:
        return f"{path}: {error['msg']}"
    if error["type"] == "missing":
        return f"{path}: attribut obligatoire absent"
    return f"{path}: {error['msg']} (reçu {short_repr(error['input'])})"


_V1 = EventParser(PAYLOADS, TOPIC_TYPES)


def parse_event(raw: bytes, topic: str | None = None) -> CloudEvent:
    """The typed event in a record value, or ContractError naming the DLQ reason.

    With `topic`, an event type that the contract does not allow on it is refused too.
    """
    return _V1(raw, topic)
