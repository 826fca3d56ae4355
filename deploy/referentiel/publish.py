"""Publishing the référentiel: one `etablissement` CloudEvent per établissement, as `/ministere`.

A whole annuaire (66,000 établissements) is published in one go, so records are not awaited
one by one: the producer batches them (linger) and deliveries are awaited per chunk, which
keeps the memory of pending sends bounded and gives the progress line real, acknowledged
counts. acks=all with idempotence: a retried batch is neither lost nor written twice.
"""

import asyncio
from collections.abc import Callable, Iterable

from aiokafka import AIOKafkaProducer

from contracts import CONTENT_TYPE, ETABLISSEMENT, REFERENTIEL, Etablissement, make_event
from services.common.messaging.connection import KafkaAccess, kafka_options

SOURCE = "/ministere"
CHUNK = 1_000  # records between two progress reports (and two waits for acknowledgements)
HEADERS = [("content-type", CONTENT_TYPE.encode())]


class TopicMissingError(RuntimeError):
    """The topic does not exist: brokers do not create topics on first write (auto-create off)."""


async def publish_etablissements(
    bootstrap: str,
    etabs: Iterable[Etablissement],
    topic: str = REFERENTIEL,
    *,
    progress: Callable[[int], None] | None = None,
    access: KafkaAccess | None = None,
) -> int:
    """Publish every établissement, keyed by UAI; returns how many the broker acknowledged.

    `progress(published)` is called after each acknowledged chunk; `access`: as which principal
    (the ministère's), else the environment's (KAFKA_*). Raises TopicMissingError
    rather than creating `topic`: its partitions and compaction belong to `deploy.topology`,
    and a mistyped prefix must not quietly make a new topic.
    """
    producer = AIOKafkaProducer(
        **(access.aiokafka() if access else kafka_options(bootstrap)),
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        max_batch_size=256 * 1024,
        # No compression: the publisher is CPU-bound, and gzip halved its throughput on a local broker.
    )
    try:
        await producer.start()
        cluster = await producer.client.fetch_all_metadata()
        if topic not in cluster.topics():
            raise TopicMissingError(
                f"topic {topic!r} does not exist on {bootstrap}; create the platform's topics first "
                "(./dev up does, or deploy.topic_admin.create_topics with deploy.topology.platform_topics)"
            )
        published = 0
        pending: list[asyncio.Future] = []
        for etab in etabs:
            value = make_event(ETABLISSEMENT, etab, source=SOURCE).to_bytes()
            pending.append(await producer.send(topic, value, key=etab.uai.encode(), headers=HEADERS))
            if len(pending) == CHUNK:
                published += await _acknowledged(pending, progress, published)
        published += await _acknowledged(pending, progress, published)
        return published
    finally:
        await producer.stop()


async def _acknowledged(pending: list[asyncio.Future], progress, published: int) -> int:
    if not pending:
        return 0
    await asyncio.gather(*pending)
    count = len(pending)
    pending.clear()
    if progress is not None:
        progress(published + count)
    return count
