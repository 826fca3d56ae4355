"""The raise/resolve lifecycle of alerts, pure: from what is open and what holds now, the
transitions to make. Never two raises for one alert_id without a resolve between them.

An alert's content is plain data (`Content`), never an AlerteLevee model: it is made of values
the contract validated already (the référentiel, the rules' reasons, the stored alert), and
pydantic-core encodes it to the bytes the model gives (tests/unit/services/test_alert_content.py).
An open alert whose content is unchanged (the common case, a re-evaluation that changes nothing)
is compared by plain values with its stored JSON, which is read without validation (the
service wrote it)."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, NamedTuple

from pydantic_core import from_json

from contracts import ALERT_KINDS, AlerteLevee, Etablissement, Reason
from services.common.rules.rights import responsable
from services.common.storage.derived import stable_id
from services.ressources.rules import Evaluation

Content = dict[str, Any]
"""An alert's content: AlerteLevee's or AlerteResolue's fields, in the model's order, with the
values the model would hold (reasons and responsable as their models, instants as datetimes)."""


def alert_id(uai: str, resource_id: str, kind: str) -> str:
    """Stable for (uai, resource_id, kind), whatever happens in between."""
    return stable_id(f"alerte:{uai}/{resource_id}/{kind}")


def event_id(alert: str, cycle: int, what: str, raised_at: datetime) -> str:
    """Stable per raise/resolve, so a replayed outbox record keeps its CloudEvents id. The raise's
    instant is part of it: a rebuild over an alerts stream whose early records retention removed
    (ALERTS_RETENTION_DAYS) cannot know how many times a long-resolved alert was raised, and
    numbers its next raise from 1 again; with the instant, that raise's id is not its first
    raise's (which a dashboard that remembers ids would take for a duplicate: CONTRACTS.md,
    Envelope)."""
    return stable_id(f"{alert}/{cycle}/{what}/{(raised_at - _EPOCH) // _MICROSECOND}")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


PORTEE = ("code_academie", "code_departement", "responsable")
"""Where an alert is: those of its fields a dashboard routes it by (the stream's filters)."""


@dataclass(frozen=True)
class Held:
    """An alert as stored: open or not, how many times raised, its last content as the JSON of
    an AlerteLevee the service wrote (so trusted: never validated again), and where it was
    raised when an update has moved it since (its PORTEE fields, as JSON; None: where it is)."""

    ouverte: bool
    cycle: int
    stored: str
    levee_portee: str | None = None

    @cached_property
    def values(self) -> dict[str, Any]:
        """The stored content as plain JSON values, decoded once (by pydantic-core: json.loads took
        twice as long, for every open alert a re-evaluation compares)."""
        return from_json(self.stored)

    @property
    def raised_at(self) -> datetime:
        """When the alert was raised, read without validating the rest."""
        return datetime.fromisoformat(self.values["raised_at"])

    @property
    def as_raised(self) -> Content:
        """Its content where it was raised: what its resolution announces, there where its raise
        was (a dashboard filtering on its académie, département or responsable saw the raise).
        Its fields in the contract's order (the stored JSON may be jsonb's, after a rebuild), not
        validated: it repeats what was announced, which a rule made stricter since (a longer
        identifier refused) must not stop from resolving."""
        values = self.values if self.levee_portee is None else {**self.values, **from_json(self.levee_portee)}
        return {**{k: values[k] for k in AlerteLevee.model_fields if k in values}, "raised_at": self.raised_at}


class Transition(NamedTuple):
    kind: str
    held: Held | None
    """The state before; None when this (uai, resource, kind) never had an alert."""
    raised: Content | None = None
    resolved: Content | None = None
    updated: Content | None = None
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
        opened = before if before is not None and before.ouverte else None
        if evaluation is not None and kind in evaluation.alerts:
            assert etab is not None, "a pair is evaluated only at a known établissement"
            if opened is not None and _unchanged(opened.values, etab, evaluation, evaluation.alerts[kind]):
                continue
            content = {
                "alert_id": alert_id(uai, resource_id, kind) if opened is None else opened.values["alert_id"],
                "uai": uai,
                "resource_id": resource_id,
                "kind": kind,
                "reasons": evaluation.alerts[kind],
                "code_academie": etab.code_academie,
                "code_departement": etab.code_departement,
                "responsable": responsable(etab),
                "compatible": evaluation.compatible,
                "devices": evaluation.devices,
                "coverage": evaluation.coverage,
                "raised_at": now if opened is None else opened.raised_at,
                "resolved_at": None,
            }
            if opened is None:
                out.append(Transition(kind, before, raised=content))
            else:
                out.append(Transition(kind, before, updated=content))
        elif opened is not None:
            # Never before its raise: raised by a replica whose clock was ahead of this one's.
            resolved_at = max(now, opened.raised_at)
            out.append(Transition(kind, before, resolved={**opened.as_raised, "resolved_at": resolved_at}))
    return out


def moved_from(held: Held, updated: Content) -> dict[str, Any] | None:
    """Where an open alert was (its PORTEE fields, as stored) when its update moves it (its
    établissement's académie, département or responsable changed: a commune merged), else None."""
    before = held.values
    now = updated["responsable"]
    if (
        before["code_academie"] == updated["code_academie"]
        and before["code_departement"] == updated["code_departement"]
        and before["responsable"] == (None if now is None else {"type": now.type, "code": now.code})
    ):
        return None
    return {k: before[k] for k in PORTEE}


def _unchanged(
    stored: Mapping[str, Any],
    etab: Etablissement,
    evaluation: Evaluation,
    reasons: Sequence[Reason],
) -> bool:
    """Whether the AlerteLevee that `evaluation` makes at `etab` equals the one stored, as plain
    values: every field but those of its key (alert_id, uai, resource_id, kind) and raised_at,
    which an open alert keeps."""
    if (
        stored["compatible"] != evaluation.compatible
        or stored["devices"] != evaluation.devices
        or stored["coverage"] != evaluation.coverage
        or stored["code_academie"] != etab.code_academie
        or stored["code_departement"] != etab.code_departement
        or stored["reasons"] != [{"code": r.code, "detail": r.detail} for r in reasons]
    ):
        return False
    now = responsable(etab)
    return stored["responsable"] == (None if now is None else {"type": now.type, "code": now.code})
