"""What every payload model shares: strict validation, and the keys the services route by.

Models are strict, so the runtime accepts exactly what the published JSON Schema describes (no
`"3"` for 3, no `"yes"` for true). Unknown fields are ignored, not refused: the contract grows by
optional fields, and a partner already sending one must not land in the DLQ.
"""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

NonEmpty = Annotated[str, Field(min_length=1)]


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
