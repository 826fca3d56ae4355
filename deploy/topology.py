"""Every topic the platform needs, with its partitions and retention.

Compaction only where the record key is the entity and every record is valid and newer than
the one before it: the per-UAI profiles and coverages our own services publish. Declarations
are keyed by UAI but carry several entities per key (lots, affectations, subscriptions), so
compacting them would lose state. The référentiel is keyed by its entity, but a partner may
send a refused or an older record after the valid latest one, which compaction would then keep
in its place: it is kept whole instead (retention.ms=-1), so a new service can rebuild from it.

A DLQ copy is a partner's record (up to the broker's default 1 MiB) plus the `dlq-*` headers:
DLQ topics accept records up to the relay's request size, so no refused record is too large
to be dead-lettered.

This is a declaration only; `deploy.topic_admin` creates the topics on a broker.
"""

import dataclasses
from dataclasses import dataclass

import contracts as c
from contracts.internal import COUVERTURES, PROFILS
from services.common.messaging.outbox import MAX_REQUEST_BYTES

DECLARATION_PARTITIONS = 6


@dataclass(frozen=True)
class TopicSpec:
    """A topic the platform needs; `compacted` keeps only the last record per key,
    `keep_forever` keeps every record (retention.ms=-1)."""

    name: str
    partitions: int = 3
    compacted: bool = False
    keep_forever: bool = False
    max_message_bytes: int | None = None

    def configs(self) -> dict[str, str]:
        out = {"cleanup.policy": "compact"} if self.compacted else {}
        if self.keep_forever:
            out["retention.ms"] = "-1"
        if self.max_message_bytes is not None:
            out["max.message.bytes"] = str(self.max_message_bytes)
        return out


def platform_topics(prefix: str = "") -> list[TopicSpec]:
    specs = [
        TopicSpec(c.REFERENTIEL, 3, keep_forever=True),
        TopicSpec(c.FORMATION, DECLARATION_PARTITIONS),
        TopicSpec(c.EQUIPEMENT, DECLARATION_PARTITIONS),
        TopicSpec(c.CATALOGUE, DECLARATION_PARTITIONS),
        TopicSpec(c.ALERTES, DECLARATION_PARTITIONS),
        TopicSpec(PROFILS, DECLARATION_PARTITIONS, compacted=True),
        TopicSpec(COUVERTURES, DECLARATION_PARTITIONS, compacted=True),
    ]
    specs += [TopicSpec(c.dlq(t.name), 1, max_message_bytes=MAX_REQUEST_BYTES) for t in specs if t.name != c.ALERTES]
    return [dataclasses.replace(t, name=prefix + t.name) for t in specs]
