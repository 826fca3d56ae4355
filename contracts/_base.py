"""What every payload model shares: strict validation, and the keys the services route by.

Models are strict, so the runtime accepts exactly what the published JSON Schema describes (no
`"3"` for 3, no `"yes"` for true; but `3.0` for 3, an integer to JSON Schema: `whole_number`).
Unknown fields are ignored, not refused: the contract grows by optional fields, and a partner
already sending one must not land in the DLQ.

The size bounds of CONTRACTS.md (Limits) are plain `max_length` constraints, so the JSON
Schemas publish them (`maxLength`, `maxItems`) and `parsing` reports them as `trop-volumineux`.
"""

import re
from datetime import date, datetime
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

NonEmpty = Annotated[str, Field(min_length=1)]

MAX_TEXT = 256  # nom, title, editor, module_id, lot_id, resource_id
MAX_NAME = 64  # OS and browser names, equipment kinds
MAX_ITEMS = 32  # browsers, requirement groups and their entries, tools, competences
MAX_QUANTITY = 1_000_000
MAX_BANDWIDTH = 100_000
FIRST_DAY = date(1970, 1, 1)
LAST_DAY = date(2100, 12, 31)

Text = Annotated[str, Field(max_length=MAX_TEXT)]
Ident = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
Kind = Name  # an equipment kind (lot.kind, tools): named, as an OS or a browser is

T = TypeVar("T")
Bounded = Annotated[list[T], Field(max_length=MAX_ITEMS)]


def _in_range(d: date) -> date:
    if not FIRST_DAY <= d <= LAST_DAY:
        raise ValueError(f"date hors de {FIRST_DAY.isoformat()} … {LAST_DAY.isoformat()}")
    return d


_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _iso_day(d: Any) -> Any:
    """A date is `AAAA-MM-JJ`, read here: pydantic would also read `86400` as a Unix time.
    pydantic's own error types, for their French rules (messages.RULES)."""
    if isinstance(d, date) and not isinstance(d, datetime):
        return d
    if not isinstance(d, str):
        raise PydanticCustomError("date_type", "")
    try:
        if _DAY.fullmatch(d):
            return date.fromisoformat(d)
    except ValueError:  # a day that does not exist
        pass
    raise PydanticCustomError("date_parsing", "")


Day = Annotated[
    date,
    BeforeValidator(_iso_day),
    AfterValidator(_in_range),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date",
            # The bounds published (CONTRACTS.md, Limits), by the year: every day of 1970 to 2100
            # is within them. Not ajv-formats' formatMinimum/formatMaximum: Ajv's strict mode,
            # its default, refuses to compile a schema naming a keyword it was not given (review s69).
            "pattern": "^(19[7-9][0-9]|20[0-9]{2}|2100)-[0-9]{2}-[0-9]{2}$",
            "description": f"{FIRST_DAY} … {LAST_DAY}",
        }
    ),
]


def whole_number(v: Any) -> Any:
    """A JSON Schema `integer` is any number without a fractional part (2020-12): `30.0` and
    `3e1` are integers to the published schemas, so here too, read as the int they are (a
    partner's encoder may write any of them). `30.5`, `true` and `"30"` stay refused."""
    if type(v) is float and v.is_integer():
        return int(v)
    return v


Count = Annotated[int, Field(ge=0, le=MAX_QUANTITY), BeforeValidator(whole_number)]
"""A quantity of devices (`quantity`, `min_quantity`)."""


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, allow_inf_nan=False)


class Payload(Strict):
    """The `data` of one event type; tells its entity, its record key and its subject."""

    @property
    def entity_key(self) -> tuple[str, ...]:
        """Identifies the entity whose state the event carries (the latest `time` wins)."""
        return (self.uai,)  # type: ignore[attr-defined]

    @property
    def key(self) -> str:
        """The Kafka record key: the UAI for every type that carries one."""
        return self.uai  # type: ignore[attr-defined]

    @property
    def subject(self) -> str:
        """The CloudEvents `subject`: the record key, except for alerts."""
        return self.key
