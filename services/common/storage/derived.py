"""State a service derives and publishes on a compacted topic, one record per entity, when it changes.

Each record's content is compared with the last one published for its key; only a real change
gets a new `version` and an outgoing event, written in the same transaction (outbox). The event
id is derived from the key and the version, so a replay publishes the same id. What was last
published is behind the `Published` interface: `PgPublished` (table `publies`) in production,
an in-memory one in the handlers' unit tests.
"""

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from contracts import CloudEvent, Payload, make_event
from services.common.pipeline import Outgoing
from services.common.storage.db import Conn

Key = tuple[str, str]
"""(uai, entity); entity is "" for a record per UAI."""


@dataclass(frozen=True)
class Derived:
    """One kind of derived record: its event type, topic and model, and the field that names
    the entity within the UAI (None: one record per UAI)."""

    event_type: str
    topic: str
    model: type[Payload]
    entity_field: str | None = None

    def build(self, uai: str, entity: str, version: int, content: dict) -> Payload:
        named = {self.entity_field: entity} if self.entity_field else {}
        return self.model(uai=uai, version=version, **named, **content)


@dataclass(frozen=True)
class Publication:
    event_type: str
    key: Key
    version: int
    content: dict


class Published(Protocol):
    """What a service last published, per event type and key."""

    async def held(self, event_type: str, keys: Sequence[Key]) -> dict[Key, tuple[int, dict]]: ...

    async def entities(self, event_type: str, uais: Iterable[str]) -> dict[str, set[str]]:
        """Per UAI, the entities of this type published so far (to publish those that vanished)."""
        ...

    async def save(self, publications: Sequence[Publication]) -> None: ...


class PgPublished:
    def __init__(self, conn: Conn):
        self._conn = conn

    async def held(self, event_type: str, keys: Sequence[Key]) -> dict[Key, tuple[int, dict]]:
        rows = await self._conn.fetch(
            "SELECT uai, entity, version, content FROM publies WHERE type = $1 "
            "AND (uai, entity) IN (SELECT * FROM unnest($2::text[], $3::text[]))",
            event_type,
            [u for u, _ in keys],
            [e for _, e in keys],
        )
        return {(r["uai"], r["entity"]): (r["version"], json.loads(r["content"])) for r in rows}

    async def entities(self, event_type: str, uais: Iterable[str]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for r in await self._conn.fetch(
            "SELECT uai, entity FROM publies WHERE type = $1 AND uai = ANY($2::text[])", event_type, list(uais)
        ):
            out.setdefault(r["uai"], set()).add(r["entity"])
        return out

    async def save(self, publications: Sequence[Publication]) -> None:
        await self._conn.executemany(
            "INSERT INTO publies (type, uai, entity, version, content) VALUES ($1, $2, $3, $4, $5::jsonb) "
            "ON CONFLICT (type, uai, entity) DO UPDATE SET version = EXCLUDED.version, content = EXCLUDED.content",
            [(p.event_type, *p.key, p.version, json.dumps(p.content)) for p in publications],
        )


async def publish_changes(
    published: Published,
    derived: Derived,
    *,
    source: str,
    contents: Mapping[Key, dict],
    causes: Mapping[str, CloudEvent],
) -> list[Outgoing]:
    """`contents` maps (UAI, entity) to its freshly computed content (without uai, entity and
    version); `causes` maps UAI to the input event whose trace the publication continues."""
    keys = sorted(contents)
    held = await published.held(derived.event_type, keys)
    publications, outgoing = [], []
    for uai, entity in keys:
        content = contents[(uai, entity)]
        version, previous = held.get((uai, entity), (0, None))
        if previous == content:
            continue
        version += 1
        publications.append(Publication(derived.event_type, (uai, entity), version, content))
        data = derived.build(uai, entity, version, content)
        event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{derived.topic}/{data.key}/{version}"))
        event = make_event(derived.event_type, data, source=source, id=event_id)
        outgoing.append(Outgoing(derived.topic, data.key, event, causes.get(uai)))
    await published.save(publications)
    return outgoing
