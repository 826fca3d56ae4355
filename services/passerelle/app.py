"""The passerelle's wiring: the référentiel it reads (its view for the rights), the partners'
topics it writes (every one: HTTP ingestion is for any partner), its HTTP API. Nothing else
lives here."""

from collections.abc import Collection, Sequence
from pathlib import Path

import contracts as c
from contracts import CloudEvent
from services.common.pipeline import Applied
from services.common.runtime.spec import Publishes, ServiceSpec
from services.passerelle.api import create_api
from services.passerelle.settings import PasserelleSettings


async def _nothing_else(_store: object, _events: Sequence[CloudEvent], _changed: Collection[str]) -> Applied:
    """The pipeline stores the référentiel itself; the passerelle consumes nothing else."""
    return Applied()


AS_SENT = "bytes as sent, less the attributes and fields the contract does not know (services/passerelle/inconnus.py)"
"""What the passerelle writes of an accepted event."""

SPEC = ServiceSpec(
    name="passerelle",
    package_dir=Path(__file__).parent,
    consumes=(c.REFERENTIEL,),
    publishes=(
        Publishes(
            c.FORMATION,
            f"Affectations and trainings declared over HTTP by rectorats (POST /v1/evenements), {AS_SENT}, "
            "with the header auth-principal (the token's sub)",
            c.TOPIC_TYPES[c.FORMATION],
        ),
        Publishes(
            c.EQUIPEMENT,
            f"Lots and connectivity declared over HTTP by collectivités (POST /v1/evenements), {AS_SENT}, "
            "with the header auth-principal (the token's sub)",
            c.TOPIC_TYPES[c.EQUIPEMENT],
        ),
        Publishes(
            c.CATALOGUE,
            "Resources and subscriptions declared over HTTP by the ministère and the GAR (POST "
            f"/v1/evenements), {AS_SENT}, with the header auth-principal (the token's sub; not kept "
            "by ressources: its Kafka writers could set it too)",
            c.TOPIC_TYPES[c.CATALOGUE],
        ),
        Publishes(
            c.REFERENTIEL,
            f"Établissements declared over HTTP by the ministère (POST /v1/evenements), {AS_SENT}, "
            "with the header auth-principal (the token's sub; not kept by the services: the ministère's "
            "Kafka principal could set it too)",
            c.TOPIC_TYPES[c.REFERENTIEL],
        ),
    ),
    apply=lambda _settings: _nothing_else,
    store=lambda conn: conn,
    dead_letters_for=(),  # the référentiel's owner (ressources) dead-letters it
    description="HTTP ingestion of declarations: bearer tokens bound to the declarant, checked, written to Kafka.",
    http_api=create_api,
    settings=PasserelleSettings,
    publishes_nothing_derived=True,
    readiness="started",  # it answers each request itself, 503 with Retry-After while Kafka or PostgreSQL is away
)
