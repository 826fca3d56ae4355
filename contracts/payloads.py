"""The `data` of every v1 declaration type, field for field as CONTRACTS.md names them.

Lists default to empty and nullable fields to null, so a partner may omit them; every other
field is required. The alert payloads, the platform's own output, are in `alertes`.
"""

from typing import Literal

from pydantic import Field

from . import topics
from ._base import MAX_BANDWIDTH, Bounded, Count, Day, Ident, Kind, Name, Payload, Strict, Text
from ._identifiers import (
    CodeAcademie,
    CodeCommune,
    CodeDepartement,
    CodeRegion,
    CrcnCode,
    CrcnLevel,
    TeacherId,
    Uai,
    Version,
)
from .alertes import AlerteLevee, AlerteResolue


class Etablissement(Payload):
    uai: Uai
    nom: Text
    type: Literal["ecole", "college", "lycee", "erea", "autre"]
    statut: Literal["public", "prive"]
    code_commune: CodeCommune
    code_departement: CodeDepartement
    code_academie: CodeAcademie
    code_region: CodeRegion
    ouvert: bool


class Affectation(Payload):
    """A teacher counts at the UAI while the latest affectation has no `end`."""

    teacher_id: TeacherId
    uai: Uai
    start: Day
    end: Day | None = None

    @property
    def entity_key(self) -> tuple[str, str]:
        return (self.teacher_id, self.uai)


class Competence(Strict):
    code: CrcnCode
    level: CrcnLevel


class FormationSuivie(Payload):
    """Accumulates: a teacher's level in a competence is the highest of all their trainings."""

    teacher_id: TeacherId
    module_id: Ident
    title: Text
    dispositif: Literal["magistere", "eafc", "pix-edu", "autre"]
    completed_on: Day
    competences: Bounded[Competence] = []
    tools: Bounded[Kind] = []

    @property
    def entity_key(self) -> tuple[str, str]:
        """Not a state event: identifies one training record, which a replay repeats."""
        return (self.teacher_id, self.module_id)

    @property
    def key(self) -> str:
        return self.teacher_id


class Logiciel(Strict):
    """An installed OS or browser."""

    name: Name
    version: Version


class Lot(Payload):
    """`quantity` 0 retires the lot; `os` null is a device without one (TNI, casque...)."""

    uai: Uai
    lot_id: Ident
    kind: Name
    quantity: Count
    os: Logiciel | None = None
    browsers: Bounded[Logiciel] = []

    @property
    def entity_key(self) -> tuple[str, str]:
        return (self.uai, self.lot_id)


class Connectivite(Payload):
    uai: Uai
    bandwidth_mbps: float = Field(ge=0, le=MAX_BANDWIDTH)
    ent: bool


class Exigence(Strict):
    """One ScoLOMFR orComposite: a name and optional inclusive version bounds."""

    type: Literal["os", "browser"]
    name: Name
    min_version: Version | None = None
    max_version: Version | None = None


class OutilRequis(Strict):
    kind: Name
    min_quantity: Count


class Formation(Strict):
    """The training a resource expects of the teachers who will use it."""

    competences: Bounded[Competence] = []
    tools: Bounded[Kind] = []


class _Ressource(Payload):
    resource_id: Ident

    @property
    def entity_key(self) -> tuple[str]:
        return (self.resource_id,)

    @property
    def key(self) -> str:
        return self.resource_id


class RessourcePubliee(_Ressource):
    """`requirements` are ANDed groups of ORed entries (ScoLOMFR requirement/orComposite)."""

    title: Text
    editor: Text
    requirements: Bounded[Bounded[Exigence]] = []
    tools: Bounded[OutilRequis] = []
    min_bandwidth_mbps: float | None = Field(default=None, ge=0, le=MAX_BANDWIDTH)
    needs_ent: bool = False
    training: Formation = Formation()


class RessourceRetiree(_Ressource):
    """A later `ressource-publiee` revives the resource."""


class Abonnement(Payload):
    """A GAR subscription; `end` null means active."""

    resource_id: Ident
    uai: Uai
    start: Day
    end: Day | None = None

    @property
    def entity_key(self) -> tuple[str, str]:
        return (self.resource_id, self.uai)


PAYLOADS: dict[str, type[Payload]] = {
    topics.ETABLISSEMENT: Etablissement,
    topics.AFFECTATION: Affectation,
    topics.FORMATION_SUIVIE: FormationSuivie,
    topics.LOT: Lot,
    topics.CONNECTIVITE: Connectivite,
    topics.RESSOURCE_PUBLIEE: RessourcePubliee,
    topics.RESSOURCE_RETIREE: RessourceRetiree,
    topics.ABONNEMENT: Abonnement,
    topics.ALERTE_LEVEE: AlerteLevee,
    topics.ALERTE_RESOLUE: AlerteResolue,
}
