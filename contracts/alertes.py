"""The platform's output: an alert raised or resolved for one (établissement, resource, kind).

`alerte-levee` and `alerte-resolue` carry the same facts, so that a dashboard can show either
without the other; only `resolved_at` tells them apart.
"""

from typing import Literal, get_args

from pydantic import AwareDatetime, Field

from ._base import Ident, NonEmpty, Payload, Strict, Text
from ._identifiers import CodeAcademie, CodeDepartement, Uai

AlertKind = Literal[
    "equipement-incompatible",
    "equipement-partiel",
    "connectivite-insuffisante",
    "ent-indisponible",
    "formation-insuffisante",
]
ALERT_KINDS: tuple[AlertKind, ...] = get_args(AlertKind)


class Reason(Strict):
    """Something a person can act on, e.g. `os-version`: `iPadOS 12.5 < 15`."""

    code: NonEmpty
    detail: Text


class Responsable(Strict):
    """The collectivité that equips the établissement."""

    type: Literal["commune", "departement", "region"]
    code: NonEmpty


class _Alerte(Payload):
    alert_id: NonEmpty
    uai: Uai
    resource_id: Ident
    kind: AlertKind
    reasons: list[Reason] = []
    code_academie: CodeAcademie
    code_departement: CodeDepartement
    responsable: Responsable | None = None  # null for établissements of type autre
    compatible: int = Field(ge=0)
    devices: int = Field(ge=0)
    coverage: float | None = Field(default=None, ge=0, le=1)
    raised_at: AwareDatetime

    @property
    def entity_key(self) -> tuple[str, str, str]:
        return (self.uai, self.resource_id, self.kind)

    @property
    def subject(self) -> str:
        return f"{self.uai}/{self.resource_id}"


class AlerteLevee(_Alerte):
    resolved_at: None = None


class AlerteResolue(_Alerte):
    resolved_at: AwareDatetime
