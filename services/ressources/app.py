"""ressources' wiring: what it consumes and publishes. Nothing else lives here."""

from pathlib import Path

import contracts as c
from contracts.internal import COUVERTURES, INTERNAL_PAYLOADS, INTERNAL_TOPIC_TYPES, PROFILS
from contracts.parsing import EventParser
from services.common.runtime.spec import Publishes, ServiceSpec
from services.ressources.api import create_api
from services.ressources.handlers import make_apply, run_reevaluations
from services.ressources.settings import RessourcesSettings
from services.ressources.store import RessourcesStore

SPEC = ServiceSpec(
    name="ressources",
    package_dir=Path(__file__).parent,
    consumes=(c.REFERENTIEL, c.CATALOGUE, PROFILS, COUVERTURES),
    publishes=(
        Publishes(
            c.ALERTES,
            "alerte-levee / alerte-resolue for every (établissement, resource, kind)",
            c.TOPIC_TYPES[c.ALERTES],
        ),
        Publishes(
            c.ALERTES_ETAT,
            "The table of alertes.compatibilite.v1: compacted, keyed by alert_id, the latest alerte-levee or "
            "alerte-resolue of each alert, then a tombstone (null value) once it is resolved. Read from the "
            "beginning, it gives exactly the open alerts, however old, then every change.",
            c.TOPIC_TYPES[c.ALERTES],
            tombstones=True,
        ),
        Publishes(c.dlq(c.REFERENTIEL), "Référentiel records the platform could not accept, bytes unchanged"),
        Publishes(c.dlq(c.CATALOGUE), "Catalogue records it could not accept, bytes unchanged"),
    ),
    apply=lambda settings: make_apply(RessourcesSettings.of(settings).seuils),
    settings=RessourcesSettings,
    store=RessourcesStore,
    dead_letters_for=(c.REFERENTIEL, c.CATALOGUE, PROFILS, COUVERTURES),
    parse=EventParser(
        c.PAYLOADS | INTERNAL_PAYLOADS, c.TOPIC_TYPES | INTERNAL_TOPIC_TYPES, private=frozenset(INTERNAL_PAYLOADS)
    ),
    description="Catalogue and GAR subscriptions; checks resources against equipment and training; alerts.",
    on_start=run_reevaluations,
    http_api=create_api,
    backlog=RessourcesStore.backlog,
    gauges=RessourcesStore.gauges,
    readiness="database",  # its read API and alert stream answer from PostgreSQL
)
