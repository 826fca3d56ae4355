"""Every topic the platform needs, with its partitions and retention.

The log is the record: what partners declared stays on Kafka, so a service's state can be
rebuilt from it (`deploy.reconstruire`) and a restored database catches up from it.

- Partner topics (référentiel, declarations, catalogue) are kept forever (retention.ms=-1).
  Compaction is no option there: declarations and the catalogue are keyed by UAI but carry
  several entities per key (lots, affectations, subscriptions), so the last record of a key is
  not the state; the référentiel is keyed by its entity, but a partner may send a refused or an
  older record after the valid latest one, which compaction would then keep in its place.
- Our own per-entity topics (profiles, coverages) are compacted: their key is the entity and
  every record is valid and newer than the one before it, so storage is bounded by entities.
- The alerts stream keeps its history for `ALERTS_RETENTION_DAYS` (0, the default: forever;
  CONTRACTS.md promises that no open alert ages out of it); its table, alertes.etat.v1, is
  compacted by alert_id: one record per open alert, whatever its age. A resolved alert's
  tombstone stays TOMBSTONE_MS there (delete.retention.ms, declared rather than the broker's
  default of a day): a dashboard cut from Kafka for less than that still reads every resolution
  when it reconnects; one cut off longer reads the table again from its beginning.
- Partner topics stamp each record with the broker's clock when it is appended
  (message.timestamp.type=LogAppendTime): a record's `time` is judged against that instant
  (`time-futur`), so every service, replica and replay reads the same verdict, however late it
  reads the record (services.common.pipeline).
- DLQs keep a refused record `DLQ_RETENTION_DAYS` (30 by default, as long as the services'
  `dead_letters` log remembers it with INBOX_RETENTION_DAYS' default).

A DLQ copy is a partner's record (up to the broker's default 1 MiB) plus the `dlq-*` headers:
DLQ topics accept records up to the relay's request size, so no refused record is too large
to be dead-lettered.

This is a declaration only; `deploy.topic_admin` creates the topics on a broker and brings the
configuration of existing ones in line with it.
"""

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

import contracts as c
from contracts.internal import COUVERTURES, PROFILS
from services.common.messaging.outbox import COMPACTED, MAX_REQUEST_BYTES, ROUTED_PARTITIONS

GROUPED = (PROFILS, COUVERTURES)
"""Compacted topics whose records come in groups (a UAI's lots, its tools...), each record a
part of the whole (contracts.internal): a reader behind the compaction of a group's records by
later ones read a later group over an earlier state, a whole the producer never had, until the
next group. Their records stay GROUPED_LAG_MS at least (min.compaction.lag.ms); a reader further
behind is rebuilt (./dev rebuild ressources). Each record of alertes.etat.v1 is a whole alert."""
PARTITIONS = ROUTED_PARTITIONS
"""Partitions of every topic but the DLQs: replicas of a service split a topic's partitions, so
up to a dozen replicas of each service have work (a partition is read by one replica at a time).
The relay spreads the platform's own topics' keys over ROUTED_PARTITIONS whatever the topic has
(partitions added later move no key): more here would give those topics partitions it never uses."""
PARTNER_TOPICS = (c.REFERENTIEL, c.FORMATION, c.EQUIPEMENT, c.CATALOGUE)
FOREVER = -1
DAY_MS = 24 * 3600 * 1000
GROUPED_LAG_MS = 7 * DAY_MS
TOMBSTONE_MS = 7 * DAY_MS


@dataclass(frozen=True)
class TopicSpec:
    """A topic the platform needs; `compacted` keeps only the last record per key;
    `retention_ms` how long a record is kept (FOREVER: -1; None: the broker's default)."""

    name: str
    partitions: int = 3
    compacted: bool = False
    retention_ms: int | None = None
    max_message_bytes: int | None = None
    append_time: bool = False
    min_compaction_lag_ms: int | None = None
    """A compacted topic's records kept this long at least before a newer one of their key may
    remove them."""
    segment_ms: int | None = None
    """How long a log segment stays open: a record is deleted with its segment, up to this long
    after its retention (the broker's default, 7 days, otherwise)."""
    delete_retention_ms: int | None = None
    """How long a compacted topic keeps a tombstone once its key's records before it are gone."""

    def configs(self) -> dict[str, str]:
        # Declared either way: undeclared, a `compact` set by hand on a topic that is the record
        # (a partner's, the alert stream) was never seen nor undone, its records cleaned away.
        out = {"cleanup.policy": "compact" if self.compacted else "delete"}
        if self.min_compaction_lag_ms is not None:
            out["min.compaction.lag.ms"] = str(self.min_compaction_lag_ms)
        if self.retention_ms is not None:
            out["retention.ms"] = str(self.retention_ms)
        if self.max_message_bytes is not None:
            out["max.message.bytes"] = str(self.max_message_bytes)
        if self.append_time:
            out["message.timestamp.type"] = "LogAppendTime"
        if self.segment_ms is not None:
            out["segment.ms"] = str(self.segment_ms)
        if self.delete_retention_ms is not None:
            out["delete.retention.ms"] = str(self.delete_retention_ms)
        return out


@dataclass(frozen=True)
class Retention:
    """The deployment's choices, from the environment: days, 0 meaning forever."""

    alerts_days: int = 0
    dlq_days: int = 30

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> "Retention":
        return cls(
            alerts_days=_days(environ, "ALERTS_RETENTION_DAYS", cls.alerts_days),
            dlq_days=_days(environ, "DLQ_RETENTION_DAYS", cls.dlq_days),
        )

    @staticmethod
    def problems(environ: Mapping[str, str]) -> list[str]:
        """One line per retention variable `from_environ` would refuse."""
        out = []
        for variable in ("ALERTS_RETENTION_DAYS", "DLQ_RETENTION_DAYS"):
            try:
                _days(environ, variable, 0)
            except ValueError as refused:
                out.append(str(refused))
        return out


def _days(environ: Mapping[str, str], variable: str, default: int) -> int:
    raw = environ.get(variable, "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise ValueError(f"{variable}: must be a whole number of days ≥ 0, 0 meaning forever (got {raw[:40]!r})")
    return int(raw)


def _ms(days: int) -> int:
    return days * DAY_MS if days else FOREVER


def platform_topics(
    prefix: str = "", retention: Retention | None = None, partitions: int = PARTITIONS
) -> list[TopicSpec]:
    """The topics, prefixed; `retention` from the environment unless given. `partitions`: fewer
    for the tests, whose every test makes its own topics on one broker."""
    retention = retention or Retention.from_environ()
    specs = [
        *(TopicSpec(t, partitions, retention_ms=FOREVER, append_time=True) for t in PARTNER_TOPICS),
        TopicSpec(c.ALERTES, partitions, retention_ms=_ms(retention.alerts_days)),
        *(
            TopicSpec(
                t,
                partitions,
                compacted=True,
                min_compaction_lag_ms=GROUPED_LAG_MS if t in GROUPED else None,
                delete_retention_ms=TOMBSTONE_MS if t == c.ALERTES_ETAT else None,
            )
            for t in COMPACTED
        ),
    ]
    specs += [
        # A refused record may hold a partner's personal data: gone within a day of its retention
        # (a segment of the broker's default, 7 days, kept it up to a week more).
        TopicSpec(
            c.dlq(t.name),
            1,
            retention_ms=_ms(retention.dlq_days),
            max_message_bytes=MAX_REQUEST_BYTES,
            segment_ms=DAY_MS if retention.dlq_days else None,
        )
        for t in specs
        if t.name not in (c.ALERTES, c.ALERTES_ETAT)  # the platform's own: it never refuses them
    ]
    return [dataclasses.replace(t, name=prefix + t.name) for t in specs]
