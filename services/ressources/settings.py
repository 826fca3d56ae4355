"""ressources' own settings, beside the shared ones: the alert thresholds, the background
re-evaluations, the read API's connections and its live stream. Variables as documented in the README."""

import os
import re
from typing import Annotated

from pydantic import AfterValidator, Field

from services.common.runtime.settings import ServiceSettings
from services.ressources.rules import Seuils

_DEFAULT = Seuils()
_HOST = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", re.IGNORECASE)


def host_names(value: str) -> list[str]:
    """The names of HTTP_ALLOWED_HOSTS, separated by commas."""
    return [name.strip() for name in value.split(",")]


def _hosts(value: str) -> str:
    """Host names (RFC 1123, ASCII) separated by commas, each maybe `*.` and a suffix of two labels
    at least (`*.fr`, `*.local`: names anyone can make, which would rebind): no port, no scheme."""
    names = host_names(value)
    if not all(_HOST.fullmatch(n) and not (n.startswith("*.") and "." not in n[2:]) for n in names):
        raise ValueError(
            "des noms d'hôte ASCII (un nom accentué : sa forme xn--) séparés par des virgules, sans port ; "
            "`*.suffixe` pour tout nom sous un suffixe d'au moins deux étiquettes que l'organisation seule attribue ; "
            "une adresse IP est toujours servie, sans être listée"
        )
    return value


class RessourcesSettings(ServiceSettings):
    # Alert thresholds (CONTRACTS.md: deployment settings); their defaults are Seuils' own.
    min_compatible_share: float = Field(_DEFAULT.min_compatible_share, ge=0, le=1)
    min_training_coverage: float = Field(_DEFAULT.min_training_coverage, ge=0, le=1)
    # Re-evaluations of a resource's subscribers (or of all, new thresholds), in the background.
    reevaluation_chunk: int = Field(500, ge=1, description="UAIs whose pairs one re-evaluation transaction evaluates")
    reevaluation_workers: int = Field(
        2, ge=1, description="re-evaluation chunks this replica evaluates at once, each of another part of a fan-out"
    )
    reevaluation_poll_ms: int = Field(200, ge=10, description="period of the look for pending re-evaluations")
    simulation_workers: int = Field(
        default_factory=lambda: min(2, os.cpu_count() or 1),
        ge=0,
        description="processes judging POST /simulations/ressource (0: in the service's own, on its event loop)",
    )
    # The read API's connections: a pool of their own, apart from the pipeline's.
    api_connections: int = Field(4, ge=1, description="connections the read API reads through (its own pool)")
    api_statement_timeout_ms: int = Field(
        5000,
        ge=1,
        le=2_147_483_647,  # PostgreSQL's statement_timeout's largest: beyond, every connection is refused
        description="longest a read waits for one of them, and longest each of its statements runs; then 503",
    )
    # The read API's live stream (SSE).
    sse_max_clients: int = Field(100, ge=1, description="open SSE streams per replica; beyond, 503 with Retry-After")
    sse_queue_size: int = Field(1000, ge=1, description="events waiting for one SSE client before it is dropped")
    sse_keepalive_seconds: float = Field(15, gt=0, description="idle time before an SSE keep-alive comment")
    sse_max_seconds: float = Field(3600, gt=0, description="lifetime of one SSE stream; then a final event")
    sse_replay_max: int = Field(1000, ge=1, description="events replayed after Last-Event-ID in one stream")
    sse_journal_retention_hours: float = Field(24, gt=0, description="hours the alert journal keeps events")
    alerts_resolved_retention_days: int = Field(
        0, ge=0, le=36_500, description="days a resolved alert stays in the table (0: for good)"
    )
    http_allowed_hosts: Annotated[str, AfterValidator(_hosts)] = Field(
        "localhost",
        description="names the read API is served under (`Host`), separated by commas, `*.suffix` for any "
        "name under it; an IP address is always served (hotes.py)",
    )

    @property
    def allowed_hosts(self) -> list[str]:
        return host_names(self.http_allowed_hosts)

    @property
    def background_connections(self) -> int:
        return self.reevaluation_workers

    @property
    def seuils(self) -> Seuils:
        return Seuils(self.min_compatible_share, self.min_training_coverage)
