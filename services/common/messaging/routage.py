"""Records the relay no longer routes to: alertes.etat.v1's partitions beyond ROUTED_PARTITIONS.

A deployment that gave the platform's own topics more than ROUTED_PARTITIONS partitions before
the relay kept to the first ones (6 December 2026) saw most keys move at that upgrade. On the
alert table an alert then open kept its raise on its former partition, where no record of its
key comes any more: its resolution and its tombstone went to another one, and the compaction,
per partition, keeps the raise there for good. A dashboard reading the table shows it open.
Looked for once at ressources' start, from the partitions' offsets (which its principal may
read: WRITE implies DESCRIBE): records there are said at ERROR with the remedy (README, Known
limits). They never all go: the compaction never cleans a partition's last segment, which
nothing rolls once the relay writes no more there. An internal topic's records left there are
harmless (ressources keeps each key's highest version, whatever partition it came from), and
the alert stream's are its history: neither is looked at.
"""

from collections.abc import Mapping

import structlog
from aiokafka import AIOKafkaConsumer

from services.common.messaging.connection import KafkaAccess
from services.common.messaging.outbox import ROUTED_PARTITIONS
from services.common.messaging.topics import partitions_of

log = structlog.get_logger()


async def beyond(access: KafkaAccess, consumer: AIOKafkaConsumer, topic: str) -> Mapping[int, int]:
    """The partitions of `topic` beyond its first ROUTED_PARTITIONS, each with how many offsets
    its log spans (0: it holds no record), read with `consumer`."""
    tps = (await partitions_of(access, [topic]))[ROUTED_PARTITIONS:]
    if not tps:
        return {}
    starts, ends = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
    return {tp.partition: ends[tp] - starts[tp] for tp in tps}


async def check(access: KafkaAccess, topic: str) -> None:
    """The partitions `beyond` the routed ones of the alert table `topic`, said when there are
    any: an ERROR when one holds records, else an INFO; a WARNING when Kafka could not be asked."""
    consumer = AIOKafkaConsumer(**access.aiokafka(), client_id="feo-routage", enable_auto_commit=False)
    try:
        await consumer.start()
        partitions = await beyond(access, consumer, topic)
    except Exception as exc:
        log.warning("routage.non_verifie", topic=topic, error=type(exc).__name__, detail=str(exc))
        return
    finally:
        await consumer.stop()
    if holding := sorted(p for p, offsets in partitions.items() if offsets):
        log.error(
            "routage.partitions_abandonnees",
            topic=topic,
            partitions=holding,
            offsets=sum(partitions.values()),
            routed_partitions=ROUTED_PARTITIONS,
            hint="records of alerts left where the relay no longer writes: the table may show resolved alerts "
            "open; delete the topic, make it again, then ./dev rebuild ressources (README, Known limits)",
        )
    elif partitions:
        log.info("routage.partitions_vides", topic=topic, partitions=sorted(partitions))
