"""Every topic the platform needs, with its partitions and retention.

Compaction only where the record key is the entity: the référentiel (key UAI, entity UAI)
and the per-UAI profiles and coverages. Declarations are keyed by UAI but carry several
entities per key (lots, affectations, subscriptions), so compacting them would lose state.
"""

import contracts as c
from contracts.internal import COUVERTURES, PROFILS
from deploy.local.kafka import TopicSpec

DECLARATION_PARTITIONS = 6


def platform_topics(prefix: str = "") -> list[TopicSpec]:
    specs = [
        TopicSpec(c.REFERENTIEL, 3, compacted=True),
        TopicSpec(c.FORMATION, DECLARATION_PARTITIONS),
        TopicSpec(c.EQUIPEMENT, DECLARATION_PARTITIONS),
        TopicSpec(c.CATALOGUE, DECLARATION_PARTITIONS),
        TopicSpec(c.ALERTES, DECLARATION_PARTITIONS),
        TopicSpec(PROFILS, DECLARATION_PARTITIONS, compacted=True),
        TopicSpec(COUVERTURES, DECLARATION_PARTITIONS, compacted=True),
    ]
    specs += [TopicSpec(c.dlq(t.name), 1) for t in specs if t.name != c.ALERTES]
    return [TopicSpec(prefix + t.name, t.partitions, t.compacted) for t in specs]
