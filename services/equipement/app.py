"""equipement's wiring: what it consumes and publishes. Nothing else lives here."""

from pathlib import Path

import contracts as c
from contracts.internal import INTERNAL_TOPIC_TYPES, PROFILS
from services.common.runtime.spec import Publishes, ServiceSpec
from services.equipement.handlers import apply
from services.equipement.store import EquipementStore

SPEC = ServiceSpec(
    name="equipement",
    package_dir=Path(__file__).parent,
    consumes=(c.REFERENTIEL, c.EQUIPEMENT),
    publishes=(
        Publishes(
            PROFILS,
            "Each lot (key {uai}/{lot_id}) and each UAI's connectivity (key UAI) as it changes; compacted",
            INTERNAL_TOPIC_TYPES[PROFILS],
        ),
        Publishes(c.dlq(c.EQUIPEMENT), "Lots and connectivity it could not accept, bytes unchanged"),
    ),
    apply=lambda _settings: apply,
    store=EquipementStore,
    dead_letters_for=(c.EQUIPEMENT,),
    description="Equipment declared by collectivités (lot, connectivite), per-UAI profiles.",
)
