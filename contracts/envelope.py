"""The CloudEvents 1.0 envelope (structured JSON mode) around every v1 payload.

`CloudEvent` is the envelope with an untyped `data`; each event type gets a subclass whose
`type` is a literal and whose `data` is that type's payload model, so that one discriminated
union validates a record in a single pass over its bytes (see `parsing`).
"""

import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from datetime import time as daytime
from typing import Annotated, Any, Literal
from uuid import uuid4

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    WithJsonSchema,
    create_model,
)
from pydantic_core import PydanticCustomError

from . import _identifiers as ids
from ._base import Payload
from .payloads import PAYLOADS

CONTENT_TYPE = "application/cloudevents+json"

DeclarantKind = Literal["rectorat", "commune", "departement", "region", "ministere", "gar", "plateforme"]


def _code(pattern: str) -> str:
    return pattern.removeprefix("^").removesuffix("$")


_SOURCE = re.compile(
    f"/rectorats/(?P<rectorat>{_code(ids.ACADEMIE_PATTERN)})"
    f"|/collectivites/communes/(?P<commune>{_code(ids.COMMUNE_PATTERN)})"
    f"|/collectivites/departements/(?P<departement>{_code(ids.DEPARTEMENT_PATTERN)})"
    f"|/collectivites/regions/(?P<region>{_code(ids.REGION_PATTERN)})"
    "|/(?P<ministere>ministere)|/(?P<gar>gar)"
    "|/plateforme/(?P<plateforme>[a-z][a-z0-9-]{0,63})"  # a service's name: bounded, as any name
)
# JSON Schema regexes are ECMA-262: anchored, and without Python's named groups.
_SOURCE_SCHEMA = {
    "type": "string",
    "pattern": "^(" + re.sub(r"\?P<\w+>", "", _SOURCE.pattern) + ")$",
    "description": "the declarant",
}
SOURCE_FORMS = (
    "/rectorats/{code_academie}, /collectivites/communes/{code_commune}, "
    "/collectivites/departements/{code_departement}, /collectivites/regions/{code_region}, "
    "/ministere, /gar, /plateforme/{service}"
)


_TYPES: list[JsonValue] = [*sorted(PAYLOADS)]


@dataclass(frozen=True, slots=True)
class Declarant:
    """Who sent an event, read from its `source`: what they may declare depends on it."""

    kind: DeclarantKind
    code: str | None  # académie, commune, département, région or service; None for ministère, GAR


@functools.lru_cache(maxsize=4096)  # a few hundred declarants send millions of events
def parse_source(source: str) -> Declarant:
    """The declarant named by a CloudEvents `source`; ValueError if it is not one of its forms."""
    match = _SOURCE.fullmatch(source) if isinstance(source, str) else None
    if match is None:
        raise ValueError(f"{ids.short_repr(source)} n'est pas une source connue ({SOURCE_FORMS})")
    kind = str(match.lastgroup)  # exactly one named alternative matched
    code = None if kind in ("ministere", "gar") else match[kind]
    return Declarant(kind, code)  # type: ignore[arg-type]


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LEAP_SECOND = daytime(23, 59, 59, 999999)


_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?"
)


def _rfc3339(time: Any) -> Any:
    """`time` is RFC 3339's date-time with its offset, read here: pydantic would also read
    `1700000000` as a Unix time, `2026-01-01T00:00Z` without seconds, `+0100` without its colon.
    Fractions beyond the microsecond are dropped, as pydantic does. pydantic's own error types,
    for their French rules (messages.RULES)."""
    if isinstance(time, datetime):
        return time
    if not isinstance(time, str):
        raise PydanticCustomError("datetime_type", "")
    if not (match := _RFC3339.fullmatch(time)):
        raise PydanticCustomError("datetime_parsing", "")
    if match[2] is None:
        raise PydanticCustomError("timezone_aware", "")
    text, leap = time.upper(), time[17:19] == "60"
    if leap:  # RFC 3339's leap second, 23:59:60 in UTC: read as its last microsecond before the next
        text = text[:17] + "59.999999" + text[19 + len(match[1] or "") :]
    try:
        instant = datetime.fromisoformat(text)
        if leap and instant.astimezone(UTC).time() != LEAP_SECOND:
            raise ValueError("a leap second at another instant than 23:59:60 UTC")
    except (ValueError, OverflowError):  # a day, an hour or a second that does not exist
        raise PydanticCustomError("datetime_parsing", "") from None
    return instant


def _check_time(time: datetime) -> datetime:
    # Comparing aware datetimes never overflows, unlike converting year 9999-12-31T23:00-05:00 to UTC.
    if time < EPOCH:
        raise PydanticCustomError(
            "cloudevent-invalide", "{time} est avant 1970-01-01T00:00:00Z", {"time": time.isoformat()}
        )
    return time


def _check_source(source: str) -> str:
    try:
        parse_source(source)
    except ValueError as e:
        raise PydanticCustomError("cloudevent-invalide", str(e)) from None
    return source


class CloudEvent(BaseModel):
    """One record of a v1 topic. `time` must carry its offset: instants are compared."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    specversion: Literal["1.0"]
    id: str = Field(min_length=1, max_length=128)
    source: Annotated[str, AfterValidator(_check_source), WithJsonSchema(_SOURCE_SCHEMA)]
    type: str = Field(json_schema_extra={"enum": _TYPES})
    time: Annotated[AwareDatetime, BeforeValidator(_rfc3339), AfterValidator(_check_time)] = Field(
        description="RFC 3339, with its offset; not before 1970-01-01T00:00:00Z, not after the receiver's clock "
        "plus its MAX_CLOCK_SKEW (time-futur)",
        # The lower bound published (CONTRACTS.md, Limits), by the day as written: a time of
        # 1969-12-31 or 1970-01-01 may be on either side of the epoch by its offset, which the
        # platform judges (the instant) and a pattern cannot.
        json_schema_extra={"pattern": "^((19[7-9][0-9]|[2-9][0-9]{3})-|1969-12-31[Tt])"},
    )
    subject: str | None = None
    datacontenttype: Literal["application/json"] = "application/json"
    data: Annotated[Any, WithJsonSchema({"type": "object", "description": "the payload of `type`"})]

    def to_bytes(self) -> bytes:
        """The record value: compact UTF-8 JSON, dates in ISO 8601."""
        return self.model_dump_json().encode()


def uai_of(event: CloudEvent) -> str | None:
    """The établissement an event is about, if its type names one (resources do not)."""
    return getattr(event.data, "uai", None)


@functools.cache
def event_model(type: str, payload: type[Payload]) -> type[CloudEvent]:
    """The envelope of one event type: `type` fixed, `data` that type's payload model."""
    name = payload.__name__ + "Event"
    # A Literal built at run time: a type checker cannot follow it.
    return create_model(name, __base__=CloudEvent, type=(Literal[type], ...), data=(payload, ...))  # type: ignore[arg-type]


def envelope(type: str, *, id: str, source: str, subject: str, time: datetime) -> dict[str, Any]:
    """A CloudEvent's fields but `data`, in the model's order: for a service that encodes its
    events itself (the record then being these fields and `data` last, as `to_bytes` writes it)."""
    return {
        "specversion": "1.0",
        "id": id,
        "source": source,
        "type": type,
        "time": time,
        "subject": subject,
        "datacontenttype": "application/json",
    }


def make_event(
    type: str,
    data: Payload,
    *,
    source: str,
    subject: str | None = None,
    id: str | None = None,
    time: datetime | None = None,
) -> CloudEvent:
    """A new event from this platform. `subject` defaults to the payload's (CONTRACTS.md)."""
    expected = PAYLOADS.get(type)
    if expected is not None and data.__class__ is not expected:
        raise TypeError(f"{type} carries a {expected.__name__}, not a {data.__class__.__name__}")
    return event_model(type, data.__class__)(
        specversion="1.0",
        id=str(uuid4()) if id is None else id,
        source=source,
        type=type,
        time=datetime.now(UTC) if time is None else time,
        subject=data.subject if subject is None else subject,
        data=data,
    )
