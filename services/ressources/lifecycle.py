"""The raise/resolve lifecycle of alerts, pure: from what is open and what holds now, the
transitions to make. Never two raises for one alert_id without a resolve between them."""

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from contracts import ALERT_KINDS, AlerteLevee, AlerteResolue, Etablissement
from services.common.rules.rights import responsable
from services.ressources.rules import Evaluation


def alert_id(uai: str, resource_id: str, kind: str) -> str:
    """Stable for (uai, resource_id, kind), whatever happens in between."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"alerte:{uai}/{resource_id}/{kind}"))


def event_id(alert: str, cycle: int, what: str) -> str:
    """Stable per raise/resolve, so a replayed outbox record keeps its CloudEvents id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{alert}/{cycle}/{what}"))


@dataclass(frozen=True)
class Held:
    """An alert as stored: open or not, how many times raised, its last content."""

    ouverte: bool
    cycle: int
    alerte: AlerteLevee


@dataclass(frozen=True)
class Transition:
    kind: str
    held: Held | None
    """The state before; None when this (uai, resource, kind) never had an alert."""
    raised: AlerteLevee | None = None
    resolved: AlerteResolue | None = None
    updated: AlerteLevee | None = None
    """Still open with new reasons or figures: stored for the API, not announced again."""


def transitions(
    uai: str,
    resource_id: str,
    etab: Etablissement | None,
    evaluation: Evaluation | None,
    held: Mapping[str, Held],
    now: datetime,
) -> list[Transition]:
    """`evaluation` None: the pair is not evaluated (no active subscription, closed or
    unknown établissement, resource withdrawn), so every open alert of it resolves."""
    out = []
    for kind in ALERT_KINDS:
        before = held.get(kind)
        if evaluation is not None and kind in evaluation.alerts:
            assert etab is not None, "a pair is evaluated only at a known établissement"
            content = AlerteLevee(
                alert_id=alert_id(uai, resource_id, kind),
                uai=uai,
                resource_id=resource_id,
                kind=kind,
                reasons=evaluation.alerts[kind],
                code_academie=etab.code_academie,
                code_departement=etab.code_departement,
                responsable=responsable(etab),
                compatible=evaluation.compatible,
                devices=evaluation.devices,
                coverage=evaluation.coverage,
                raised_at=before.alerte.raised_at if before is not None and before.ouverte else now,
            )
            if before is None or not before.ouverte:
                out.append(Transition(kind, before, raised=content))
            elif content != before.alerte:
                out.append(Transition(kind, before, updated=content))
        elif before is not None and before.ouverte:
            resolved = AlerteResolue(**before.alerte.model_dump(exclude={"resolved_at"}), resolved_at=now)
            out.append(Transition(kind, before, resolved=resolved))
    return out
