"""Events between our own services: not part of the public contract, free to change.

`equipement` publishes the equipment of each UAI and `formation` its training coverage, on
compacted topics, so `ressources` (or a new replica) rebuilds its view from the latest record
per key. One record per entity, never one per UAI: a UAI may hold 2,000 lots and 5,000 teachers
trained on any number of tools (CONTRACTS.md, Limits), and a whole-UAI record would outgrow
Kafka's record size. Every record here is bounded by the contract's own field bounds:

| type | key | largest record at the bounds |
| --- | --- | --- |
| `profil-lot` | `{uai}/{lot_id}` | one lot: 32 browsers of 64-char names, a 256-char lot_id (≈ 5 KB) |
| `profil-connectivite` | `{uai}` | a bandwidth and a flag |
| `couverture-enseignants` | `{uai}` | 16 CRCN codes × 8 counts |
| `couverture-outil` | `{uai}/{kind}` | one tool (64 chars) and a count |

`version` increases with every publication of one key; the consumer keeps the highest,
whatever the delivery order. A lot retired (quantity 0) and a tool no counted teacher holds
any more (`enseignants` 0) are published as such, so the consumer forgets them.

One transaction may change several records of a UAI (a teacher who joins changes the teacher
count and the count of each tool they were trained on), which reach the consumer one after the
other, maybe in two of its batches. Each record says which `group` it belongs to (a number
drawn once the transaction holds what it publishes: a later publication of a key has a larger
one, and formation's transactions, which hold their UAIs, number theirs in their order) and how
many records of its UAI that transaction published (`group_size`): the consumer assembles a
UAI's profile or coverage only once it holds the whole of the UAI's latest group, never from a
state that never was. Both are absent from records published before they were added (each is
then whole alone).

`ProfilEquipement` and `CouvertureFormation` are not events: they are what `ressources`
assembles per UAI from those records, the input of the compatibility rules.
"""

from typing import Annotated

from pydantic import Field

from ._base import Payload, Strict
from ._identifiers import Uai
from .payloads import Logiciel

PROFILS = "equipement.profils.v2"
COUVERTURES = "formation.couvertures.v2"
INTERNAL_TOPICS = (PROFILS, COUVERTURES)

Count = Annotated[int, Field(ge=0)]
"""A number of teachers: a negative one would make a share below 0, which no alert may carry."""

PROFIL_LOT = "fr.education.plateforme.profil-lot.v1"
PROFIL_CONNECTIVITE = "fr.education.plateforme.profil-connectivite.v1"
COUVERTURE_ENSEIGNANTS = "fr.education.plateforme.couverture-enseignants.v1"
COUVERTURE_OUTIL = "fr.education.plateforme.couverture-outil.v1"


class LotProfil(Strict):
    """A lot as the compatibility rules read it."""

    lot_id: str
    kind: str
    quantity: int = Field(ge=0)
    os: Logiciel | None = None
    browsers: list[Logiciel] = []


class ConnectiviteProfil(Strict):
    bandwidth_mbps: float = Field(ge=0)
    ent: bool


class _Derived(Payload):
    """A record about one UAI (`entity` ""), keyed by the UAI."""

    uai: Uai
    version: int = Field(ge=1)
    group: int | None = Field(None, ge=1)
    group_size: int | None = Field(None, ge=1)

    @property
    def entity(self) -> str:
        return ""


class _PerEntity(_Derived):
    """A record about one entity of a UAI, keyed by `{uai}/{entity}`: compaction keeps one per entity."""

    @property
    def entity(self) -> str:
        raise NotImplementedError

    @property
    def key(self) -> str:
        return f"{self.uai}/{self.entity}"


class ProfilLot(LotProfil, _PerEntity):
    @property
    def entity(self) -> str:
        return self.lot_id


class ProfilConnectivite(ConnectiviteProfil, _Derived):
    pass


class CouvertureEnseignants(_Derived):
    """How many counted teachers a UAI has, and per CRCN competence how many hold each level:
    `competences[code][i]` is the number at level i+1 or higher (i = 0..7)."""

    enseignants: int = Field(ge=0)
    competences: dict[str, list[Count]] = {}


class CouvertureOutil(_PerEntity):
    """How many counted teachers of a UAI were trained on one tool (`kind` folded)."""

    kind: str
    enseignants: int = Field(ge=0)

    @property
    def entity(self) -> str:
        return self.kind


GROUP_FIELDS = frozenset({"group", "group_size"})
"""What says which group a record belongs to, not what the record holds."""


class ProfilEquipement(Strict):
    """What the compatibility rules need of one UAI: its lots in service and its link."""

    uai: Uai
    lots: list[LotProfil] = []
    connectivite: ConnectiviteProfil | None = None


class CouvertureFormation(Strict):
    """The training coverage of one UAI: counted teachers, per competence the number at each
    level or above, per folded tool kind the number trained on it."""

    uai: Uai
    enseignants: int = Field(ge=0)
    competences: dict[str, list[Count]] = {}
    outils: dict[str, Count] = {}


INTERNAL_PAYLOADS: dict[str, type[Payload]] = {
    PROFIL_LOT: ProfilLot,
    PROFIL_CONNECTIVITE: ProfilConnectivite,
    COUVERTURE_ENSEIGNANTS: CouvertureEnseignants,
    COUVERTURE_OUTIL: CouvertureOutil,
}
INTERNAL_TOPIC_TYPES = {
    PROFILS: frozenset({PROFIL_LOT, PROFIL_CONNECTIVITE}),
    COUVERTURES: frozenset({COUVERTURE_ENSEIGNANTS, COUVERTURE_OUTIL}),
}
