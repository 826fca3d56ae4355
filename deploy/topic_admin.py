"""Creating the topics `deploy.topology` declares, on any broker.

Brokers run with auto.create.topics.enable=false, so `./dev up`, the demo and every test
declare their topics through this one idempotent call before anything produces to them.
"""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from deploy.topology import TopicSpec


class TopicCreationError(RuntimeError):
    """The broker refused to create some topics (other than because they exist)."""


async def create_topics(bootstrap: str, specs: list[TopicSpec]) -> None:
    """Create the topics, leaving those that already exist untouched."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        response = await admin.create_topics(
            [NewTopic(spec.name, spec.partitions, replication_factor=1, topic_configs=spec.configs()) for spec in specs]
        )
    finally:
        await admin.close()
    failures = [
        f"{topic}: {for_code(code).__name__}: {message}"
        for topic, code, message in response.topic_errors
        if code not in (0, TopicAlreadyExistsError.errno)
    ]
    if failures:
        raise TopicCreationError("could not create topics:\n" + "\n".join(failures))
