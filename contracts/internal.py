"""Events between our own services: not part of the public contract, free to change.

`equipement` publishes each UAI's equipment profile and `formation` each UAI's training
coverage, on compacted topics keyed by UAI, so `ressources` (or a new replica) rebuilds its
view from the latest record per UAI. `version` increases with every publication for a UAI;
the consumer keeps the highest, whatever the delivery order.
"""

from pydantic import Field

from ._base import Payload
from .payloads import Logiciel
from ._identifiers import Uai

PROFILS = "equipement.profils.v1"
COUVERTURES = "formation.couvertures.v1"
INTERNAL_TOPICS = (PROFILS, COUVERTURES)

PROFIL_EQUIPEMENT = "fr.education.plateforme.profil-equipement.v1"
COUVERTURE_FORMATION = "fr.education.plateforme.couverture-formation.v1"


class LotProfil(Payload):
    lot_id: str
    kind: str
    quantity: int = Field(ge=0)
    os: Logiciel | None = None
    browsers: list[Logiciel] = []


class ConnectiviteProfil(Payload):
    bandwidth_mbps: float = Field(ge=0)
    ent: bool


class ProfilEquipement(Payload):
    """What the compatibility rules need of one UAI: its lots in service and its link."""

    uai: Uai
    version: int = Field(ge=1)
    lots: list[LotProfil] = []
    connectivite: ConnectiviteProfil | None = None


class CouvertureFormation(Payload):
    """How many counted teachers of one UAI hold each competence level and each tool.

    `competences[code][i]` is the number of teachers at level i+1 or higher (i = 0..7);
    `outils` is keyed by the folded equipment kind.
    """

    uai: Uai
    version: int = Field(ge=1)
    enseignants: int = Field(ge=0)
    competences: dict[str, list[int]] = {}
    outils: dict[str, int] = {}


INTERNAL_PAYLOADS: dict[str, type[Payload]] = {
    PROFIL_EQUIPEMENT: ProfilEquipement,
    COUVERTURE_FORMATION: CouvertureFormation,
}
INTERNAL_TOPIC_TYPES = {PROFILS: frozenset({PROFIL_EQUIPEMENT}), COUVERTURES: frozenset({COUVERTURE_FORMATION})}
