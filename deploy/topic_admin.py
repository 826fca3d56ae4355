"""Creating the topics `deploy.topology` declares, on any broker, and keeping their
configuration in line with it.

Brokers run with auto.create.topics.enable=false, so `./dev up`, the demo and every test
declare their topics through this one idempotent call before anything produces to them. A
topic that already exists keeps its records; when its configuration differs from the
declaration (a deployment created with the broker's 7-day default retention, say), it is
altered to the declaration. AlterConfigs replaces a topic's whole set of dynamic settings, so
a setting changed by hand on a declared topic is undone when that topic is realigned.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code

from deploy.topology import TopicSpec
from services.common.messaging.connection import kafka_options


class TopicCreationError(RuntimeError):
    """The broker refused to create some topics (other than because they exist) or to align them."""


async def create_topics(
    bootstrap: str, specs: list[TopicSpec], replicas: int | None = None, say: Callable[[str], None] | None = None
) -> list[str]:
    """Create the topics, and align the configuration of those that exist; returns the names
    of the existing topics whose configuration was changed. `replicas`: each partition's
    replicas (default: 1, a single node). An existing topic's partitions and replicas are
    kept, a line to `say` for each that differs from what is declared (`shapes`)."""
    admin = AIOKafkaAdminClient(**kafka_options(bootstrap))
    try:
        await admin.start()
        response = await admin.create_topics(
            [
                NewTopic(spec.name, spec.partitions, replication_factor=replicas or 1, topic_configs=spec.configs())
                for spec in specs
            ]
        )
        _raise_for(response.topic_errors)
        existing = {topic for topic, code, _ in response.topic_errors if code == TopicAlreadyExistsError.errno}
        if say is not None and existing:
            for line in await shapes(admin, [spec for spec in specs if spec.name in existing], replicas or 1):
                say(line)
        stale = await _differing(admin, [spec for spec in specs if spec.name in existing and spec.configs()])
        if stale:
            responses = await admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, spec.name, spec.configs()) for spec in stale]
            )
            _raise_for(
                [
                    (r["resource_name"], r["error_code"], r["error_message"])
                    for response in responses
                    for r in response.to_object()["resources"]
                ]
            )
            await _until_applied(admin, stale)
    finally:
        await admin.close()
    return [spec.name for spec in stale]


async def shapes(admin: AIOKafkaAdminClient, specs: list[TopicSpec], replicas: int) -> list[str]:
    """What differs between these existing topics' partitions and replicas and their declaration,
    said: neither is changed here. Kafka cannot take partitions away, and partitions added move
    the keys of a partner's topic (and of the platform's own, made with fewer than
    ROUTED_PARTITIONS); replicas move with kafka-reassign-partitions, data and all."""
    declared = {spec.name: spec for spec in specs}
    lines = []
    for topic in await admin.describe_topics(list(declared)):
        name, partitions = topic["topic"], topic["partitions"]
        if len(partitions) != declared[name].partitions:
            lines.append(f"Kafka: {name} has {len(partitions)} partitions, {declared[name].partitions} declared: kept")
        held = sorted({len(p["replicas"]) for p in partitions})
        if held and held != [replicas]:
            lines.append(
                f"Kafka: {name} has {'–'.join(map(str, held))} replicas of a partition, {replicas} asked: kept"
            )
    return lines


async def topic_configs(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str | None]]:
    """Every configuration value of each topic, as the broker reports it."""
    if not names:
        return {}
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in names])
    return {
        resource["resource_name"]: {e["config_names"]: e["config_value"] for e in resource["config_entries"]}
        for response in responses
        for resource in response.to_object()["resources"]
    }


async def _differing(admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> list[TopicSpec]:
    current = await topic_configs(admin, [spec.name for spec in specs])
    return [
        spec for spec in specs if any(current[spec.name].get(key) != value for key, value in spec.configs().items())
    ]


async def _until_applied(admin: AIOKafkaAdminClient, specs: list[TopicSpec], timeout: float = 30) -> None:
    """The broker acknowledges an alteration before it applies it (KRaft: when the metadata
    record reaches it): wait until it reports the declared values."""
    deadline = time.monotonic() + timeout
    while pending := await _differing(admin, specs):
        if time.monotonic() > deadline:
            names = ", ".join(spec.name for spec in pending)
            raise TopicCreationError(f"the broker accepted new settings for {names} but still reports the old ones")
        await asyncio.sleep(0.2)


def _raise_for(errors: list[tuple[str, int, str | None]]) -> None:
    """`errors`: (resource, code, message) as the broker answers, 0 meaning success."""
    failures = [
        f"{name}: {for_code(code).__name__}: {message}"
        for name, code, message in errors
        if code not in (0, TopicAlreadyExistsError.errno)
    ]
    if failures:
        raise TopicCreationError("could not create or align topics:\n" + "\n".join(failures))
