"""Whether the local broker is ready: a client fetches metadata listing it (it is then unfenced).

Only an asyncio client (aiokafka) can ask, yet the readiness wait is synchronous and is called
from inside running event loops (async fixtures, the demo), where `asyncio.run` is refused:
each probe therefore runs on a fresh loop in a worker thread.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError


def serves_metadata(bootstrap: str) -> bool:
    """True once a client gets metadata listing a broker at `bootstrap`.

    The caller does not wait for the thread when interrupted (Ctrl-C), so it can stop the
    broker at once; the probe then ends by itself.
    """
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(asyncio.run, _metadata_available(bootstrap)).result()
    finally:
        pool.shutdown(wait=False)


async def _metadata_available(bootstrap: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        await admin.start()
        return bool((await admin.describe_cluster())["brokers"])
    except (TimeoutError, KafkaError, OSError):
        return False
    finally:
        await admin.close()
