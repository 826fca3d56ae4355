"""formation's wiring: what it consumes and publishes. Nothing else lives here."""

from pathlib import Path

import contracts as c
from contracts.internal import COUVERTURES, INTERNAL_TOPIC_TYPES
from services.common.runtime.spec import Publishes, ServiceSpec
from services.formation.handlers import apply
from services.formation.store import FormationStore

SPEC = ServiceSpec(
    name="formation",
    package_dir=Path(__file__).parent,
    consumes=(c.REFERENTIEL, c.FORMATION),
    publishes=(
        Publishes(
            COUVERTURES,
            "Each UAI's counted teachers and competence levels (key UAI) and its teachers per "
            "tool (key {uai}/{kind}) as they change; compacted",
            INTERNAL_TOPIC_TYPES[COUVERTURES],
        ),
        Publishes(c.dlq(c.FORMATION), "Affectations and trainings it could not accept, bytes unchanged"),
    ),
    apply=lambda _settings: apply,
    store=FormationStore,
    dead_letters_for=(c.FORMATION,),
    description="Training records pushed by rectorats (affectation, formation-suivie), per-UAI coverage.",
)
