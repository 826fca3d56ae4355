"""What a service is, declared: its topics, its use case and store, its settings, its DLQs.

`app.build_app` turns a `ServiceSpec` into a running service; each service's `app.py` is one.
"""

import functools
import operator
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import contracts as c
from contracts.envelope import event_model
from contracts.internal import INTERNAL_PAYLOADS
from services.common.pipeline import ApplyFn, Pipeline
from services.common.runtime.health import Backlog, Readiness
from services.common.runtime.metrics import Gauges
from services.common.runtime.settings import ServiceSettings
from services.common.storage.db import Conn


@dataclass(frozen=True)
class Publishes:
    """A topic the service writes, declared for the AsyncAPI document: its records are CloudEvents
    of `types` (the contract's or the platform's internal ones), and null values (tombstones) too
    when `tombstones`; no `types`: bytes as the service received them (a DLQ's)."""

    topic: str
    description: str
    types: frozenset[str] = frozenset()
    tombstones: bool = False

    @property
    def schema(self) -> Any:
        """What the AsyncAPI document says a record's value is (FastStream takes any type)."""
        if not self.types:
            return None
        models: list[Any] = [event_model(t, (c.PAYLOADS | INTERNAL_PAYLOADS)[t]) for t in sorted(self.types)]
        value = functools.reduce(operator.or_, models)
        return value | None if self.tombstones else value


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    package_dir: Path
    consumes: Sequence[str]
    publishes: Sequence[Publishes]
    apply: Callable[[ServiceSettings], ApplyFn]
    """Builds the service's use case from its settings (thresholds...)."""
    store: Callable[[Conn], Any]
    """The store the use case receives, over the batch's transaction."""
    dead_letters_for: Sequence[str]
    """The consumed topics whose DLQ this service writes (one writer per DLQ)."""
    parse: Callable[..., c.CloudEvent] = c.parse_event
    description: str = ""
    on_start: Callable[[Pipeline, Any], Coroutine[Any, Any, None]] | None = None
    """Work run in the background once the service consumes (e.g. a re-evaluation)."""
    http_api: Callable[[Any, ServiceSettings], Any] | None = None
    """Builds an HTTP API (an ASGI app) that serves beside the consumer and runs its lifespan."""
    settings: type[ServiceSettings] = ServiceSettings
    """The service's settings class: the shared settings and its own."""
    backlog: Backlog = None
    """Work the service holds back besides its outbox, by name, counted with its store (`/health`)."""
    gauges: Gauges | None = None
    """The service's own figures for `/metrics`, read with its store at a scrape once those kept are
    `METRICS_COUNTS_MAX_AGE_SECONDS` old (Metrics.counts)."""
    readiness: Readiness = "kafka-and-database"
    """What it needs to be sent requests (`/readyz`), and the dependencies whose loss ends it
    (health.Readiness): `database` for a service whose HTTP API answers from its database alone
    (ressources' read API and alert stream), `started` for one that answers every request itself
    (the passerelle)."""
    publishes_nothing_derived: bool = False
    """True for a service whose schema, restored from a backup, needs no catch-up before it
    starts (the passerelle: it publishes nothing its schema numbers; its view of the référentiel
    catches up as it runs). Any other refuses to start on a schema a restore marked
    (lifecycle.CATCH_UP_PENDING) until it is caught up or rebuilt."""
