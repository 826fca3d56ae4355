"""State a service derives and publishes on a compacted topic, one record per entity, when it changes.

Each record's content is compared with the last one published for its key; only a real change
gets a new `version` and an outgoing event, written in the same transaction (outbox). The event
id is derived from the key and the version, so a replay publishes the same id. The records one
transaction publishes about a UAI at once form its `group` (contracts/internal.py; a revival
judging a UAI's records in parts publishes a group per part, in its one transaction), numbered from the
schema's sequence `publies_groupes` once the transaction holds its keys' rows: of two
publications of one key, the later has the larger number (and formation's, which hold their
UAIs, are in the order of their UAIs' transactions). What was last
published is behind the `Published` interface: `PgPublished` (table `publies`, compared and
versioned in one statement) in production, an in-memory one in the handlers' unit tests.

Contents are plain data (dicts, lists, numbers, text, or contract models inside them), never
rebuilt as payload or envelope models: the service computed them from events the contract
already validated, and one JSON encoder (pydantic-core's) writes them, into `publies` and into
the record alike.
"""

import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import sha1
from typing import Any, Protocol

from pydantic_core import to_json

from contracts import CloudEvent
from contracts.envelope import envelope
from services.common.pipeline import EncodedEvent, Outgoing
from services.common.storage.db import Conn, json_rows

Key = tuple[str, str]
"""(uai, entity); entity is "" for a record per UAI."""
Content = Mapping[str, Any]
"""A record's fields without uai, entity and version, in the payload model's order."""


_NAMESPACE = uuid.NAMESPACE_URL.bytes


def stable_id(name: str) -> str:
    """`str(uuid.uuid5(uuid.NAMESPACE_URL, name))`, written out: uuid5 builds a UUID object
    through checks that cost more than the hash, once per published record."""
    digest = bytearray(sha1(_NAMESPACE + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = digest.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


@dataclass(frozen=True)
class Derived:
    """One kind of derived record: its event type and topic, the field that names the entity
    within the UAI (None: one record per UAI, keyed by the UAI), and how a record of it says
    that its entity is gone, from the content last published (None: the kind cannot)."""

    event_type: str
    topic: str
    entity_field: str | None = None
    retired: Callable[[Content], Content] | None = None

    def record_key(self, uai: str, entity: str) -> str:
        return f"{uai}/{entity}" if self.entity_field else uai

    def event(
        self,
        uai: str,
        entity: str,
        version: int,
        content: Content,
        *,
        source: str,
        time: datetime,
        group: tuple[int, int] | None = None,
    ) -> EncodedEvent:
        """The record, its fields in the order of the envelope and of the payload model
        (`contracts.internal`): its bytes are those `make_event(...).to_bytes()` gives.
        `group`: its group's number and size; the id does not depend on it."""
        named = {self.entity_field: entity} if self.entity_field else {}
        key = self.record_key(uai, entity)
        event_id = stable_id(f"{self.topic}/{key}/{version}")
        grouped = {"group": group[0], "group_size": group[1]} if group else {}
        data = {"uai": uai, "version": version, **grouped, **named, **content}
        fields = envelope(self.event_type, id=event_id, source=source, subject=key, time=time)
        return EncodedEvent(self.event_type, event_id, data, to_json({**fields, "data": data}))


class Published(Protocol):
    """What a service last published, per event type and key."""

    async def publish(self, event_type: str, contents: Mapping[Key, Content]) -> dict[Key, int]:
        """Record each content that differs from the one last published for its key (or is the
        first) with the next version; returns those keys and their new versions."""
        ...

    async def entities(self, event_type: str, uais: Iterable[str]) -> dict[str, set[str]]:
        """Per UAI, the entities of this type published so far (to publish those that vanished)."""
        ...

    async def next_group(self) -> int:
        """A group number larger than any drawn before."""
        ...


class PgPublished:
    def __init__(self, conn: Conn):
        self._conn = conn

    async def publish(self, event_type: str, contents: Mapping[Key, Content]) -> dict[Key, int]:
        if not contents:
            return {}
        keys = sorted(contents)  # rows locked in key order: two writers never wait in a cycle
        rows = await self._conn.fetch(
            "INSERT INTO publies AS p (type, uai, entity, version, content) "
            "SELECT $1, uai, entity, 1, content "
            "FROM json_to_recordset($2::json) AS c(uai text, entity text, content jsonb) "
            "ON CONFLICT (type, uai, entity) DO UPDATE SET version = p.version + 1, content = EXCLUDED.content "
            "WHERE p.content IS DISTINCT FROM EXCLUDED.content "
            "RETURNING uai, entity, version",
            event_type,
            json_rows({"uai": uai, "entity": entity, "content": contents[(uai, entity)]} for uai, entity in keys),
        )
        return {(r["uai"], r["entity"]): r["version"] for r in rows}

    async def entities(self, event_type: str, uais: Iterable[str]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for r in await self._conn.fetch(
            "SELECT uai, entity FROM publies WHERE type = $1 AND uai = ANY($2::text[])", event_type, list(uais)
        ):
            out.setdefault(r["uai"], set()).add(r["entity"])
        return out

    async def next_group(self) -> int:
        return await self._conn.fetchval("SELECT nextval('publies_groupes')")


async def publish_changes(
    published: Published,
    changes: Sequence[tuple[Derived, Mapping[Key, Content]]],
    *,
    source: str,
    causes: Mapping[str, CloudEvent],
) -> list[Outgoing[EncodedEvent]]:
    """Each kind's `contents` map (UAI, entity) to its freshly computed content (without uai,
    entity and version); `causes` maps UAI to the input event whose trace the publication
    continues. One group for the transaction: the caller holds the UAIs (or their entities)."""
    versions = [
        (derived, contents, await published.publish(derived.event_type, contents)) for derived, contents in changes
    ]
    sizes = Counter(uai for _, _, changed in versions for uai, _ in changed)
    if not sizes:
        return []
    group, now = await published.next_group(), datetime.now(UTC)
    return [
        Outgoing(
            derived.topic,
            derived.record_key(uai, entity),
            derived.event(
                uai, entity, version, contents[(uai, entity)], source=source, time=now, group=(group, sizes[uai])
            ),
            causes.get(uai),
        )
        for derived, contents, changed in versions
        for (uai, entity), version in sorted(changed.items())
    ]
