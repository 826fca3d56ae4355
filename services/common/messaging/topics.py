"""What the broker says of topics, asked with an admin client (the services' and the tools')."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import for_code

from services.common.messaging.connection import KafkaAccess


@asynccontextmanager
async def admin_client(access: KafkaAccess, client_id: str = "feo-admin") -> AsyncIterator[AIOKafkaAdminClient]:
    """An admin client of `access`, started, and closed at the end (also when its start fails)."""
    admin = AIOKafkaAdminClient(**access.aiokafka(), client_id=client_id)
    try:
        await admin.start()
        yield admin
    finally:
        await admin.close()


async def partitions_of(access: KafkaAccess, topics: list[str]) -> list[TopicPartition]:
    """Every partition of `topics`, which must exist, in order (their metadata: the DESCRIBE right,
    which READ and WRITE imply)."""
    async with admin_client(access, "feo-partitions") as admin:
        described = await admin.describe_topics(topics)
    if refused := [f"{t['topic']} ({for_code(t['error_code']).__name__})" for t in described if t["error_code"]]:
        raise RuntimeError(f"topics not described by {access.bootstrap_servers}: {', '.join(refused)}")
    return [
        TopicPartition(t["topic"], p["partition"])
        for t in described
        for p in sorted(t["partitions"], key=lambda p: p["partition"])
    ]
