"""State a service derives per UAI and publishes on a compacted topic when it changes.

The content is compared with the last one published; only a real change gets a new
`version` and an outgoing event, written in the same transaction (outbox).
"""

import json
import uuid
from collections.abc import Callable, Mapping

import asyncpg
from pydantic import BaseModel

from contracts import CloudEvent, make_event
from services.common.pipeline import Outgoing


async def publish_changes(
    conn: asyncpg.Connection,
    *,
    table: str,
    column: str,
    topic: str,
    event_type: str,
    source: str,
    contents: Mapping[str, dict],
    model: Callable[..., BaseModel],
    causes: Mapping[str, CloudEvent],
) -> list[Outgoing]:
    """`contents` maps UAI to its freshly computed content (without version); `causes`
    maps UAI to the input event whose trace the publication continues."""
    uais = sorted(contents)
    held = {
        r["uai"]: (r["version"], json.loads(r[column]))
        for r in await conn.fetch(f"SELECT uai, version, {column} FROM {table} WHERE uai = ANY($1::text[])", uais)
    }
    rows, outgoing = [], []
    for uai in uais:
        version, previous = held.get(uai, (0, None))
        if previous == contents[uai]:
            continue
        version += 1
        rows.append((uai, version, json.dumps(contents[uai])))
        data = model(uai=uai, version=version, **contents[uai])
        event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{topic}/{uai}/{version}"))
        event = make_event(event_type, data, source=source, subject=uai, id=event_id)
        outgoing.append(Outgoing(topic, uai, event, causes.get(uai)))
    await conn.executemany(
        f"INSERT INTO {table} (uai, version, {column}) VALUES ($1, $2, $3::jsonb) "
        f"ON CONFLICT (uai) DO UPDATE SET version = EXCLUDED.version, {column} = EXCLUDED.{column}",
        rows,
    )
    return outgoing
