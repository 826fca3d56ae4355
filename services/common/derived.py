"""State a service derives and publishes on a compacted topic, one record per entity, when it changes.

Each record's content is compared with the last one published for its key (table `publies`);
only a real change gets a new `version` and an outgoing event, written in the same transaction
(outbox). The event id is derived from the key and the version, so a replay publishes the same id.
"""

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import asyncpg

from contracts import CloudEvent, Payload, make_event
from services.common.pipeline import Outgoing


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


async def published_entities(conn: asyncpg.Connection, derived: Derived, uais: Iterable[str]) -> dict[str, set[str]]:
    """Per UAI, the entities of this kind published so far (to publish the ones that vanished)."""
    out: dict[str, set[str]] = {}
    for r in await conn.fetch("SELECT uai, entity FROM publies WHERE type = $1 AND uai = ANY($2::text[])",
                              derived.event_type, list(uais)):
        out.setdefault(r["uai"], set()).add(r["entity"])
    return out


async def publish_changes(
    conn: asyncpg.Connection,
    derived: Derived,
    *,
    source: str,
    contents: Mapping[tuple[str, str], dict],
    causes: Mapping[str, CloudEvent],
) -> list[Outgoing]:
    """`contents` maps (UAI, entity) to its freshly computed content (without uai, entity and
    version; entity "" when one per UAI); `causes` maps UAI to the input event whose trace the
    publication continues."""
    keys = sorted(contents)
    held = {
        (r["uai"], r["entity"]): (r["version"], json.loads(r["content"]))
        for r in await conn.fetch(
            "SELECT uai, entity, version, content FROM publies WHERE type = $1 "
            "AND (uai, entity) IN (SELECT * FROM unnest($2::text[], $3::text[]))",
            derived.event_type, [u for u, _ in keys], [e for _, e in keys],
        )
    }
    rows, outgoing = [], []
    for uai, entity in keys:
        content = contents[(uai, entity)]
        version, previous = held.get((uai, entity), (0, None))
        if previous == content:
            continue
        version += 1
        rows.append((derived.event_type, uai, entity, version, json.dumps(content)))
        data = derived.build(uai, entity, version, content)
        event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{derived.topic}/{data.key}/{version}"))
        event = make_event(derived.event_type, data, source=source, id=event_id)
        outgoing.append(Outgoing(derived.topic, data.key, event, causes.get(uai)))
    await conn.executemany(
        "INSERT INTO publies (type, uai, entity, version, content) VALUES ($1, $2, $3, $4, $5::jsonb) "
        "ON CONFLICT (type, uai, entity) DO UPDATE SET version = EXCLUDED.version, content = EXCLUDED.content",
        rows,
    )
    return outgoing
