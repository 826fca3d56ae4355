"""The inbox: the same (`source`, `id`) received again has no second effect.

`claim` runs inside the batch's transaction: a row inserted now means the event is new; a
conflict means it was accepted before (or by a concurrent consumer, which then commits first).
"""

from collections.abc import Callable, Sequence

from contracts import CloudEvent
from services.common.storage.db import Conn, json_rows


async def claim(
    conn: Conn, events: Sequence[CloudEvent], principal: Callable[[CloudEvent], str | None] = lambda _: None
) -> list[CloudEvent]:
    """Keep the events never accepted before, in arrival order, each (source, id) once;
    `principal(event)`: who was authenticated when it came in, stored with its row."""
    if not events:
        return []
    rows = await conn.fetch(
        """
        INSERT INTO inbox (source, id, type, subject, event_time, principal)
        SELECT * FROM json_to_recordset($1::json)
            AS e(source text, id text, type text, subject text, event_time timestamptz, principal text)
        ON CONFLICT DO NOTHING
        RETURNING source, id
        """,
        json_rows(
            {
                "source": e.source,
                "id": e.id,
                "type": e.type,
                "subject": e.subject,
                "event_time": e.time,
                "principal": principal(e),
            }
            for e in events
        ),
    )
    fresh = {(r["source"], r["id"]) for r in rows}
    kept: list[CloudEvent] = []
    for event in events:
        if (event.source, event.id) in fresh:
            fresh.discard((event.source, event.id))  # a twin inside the batch is a duplicate too
            kept.append(event)
    return kept


async def release(conn: Conn, events: Sequence[CloudEvent]) -> None:
    """Forget these events, claimed in this transaction and then refused: received again, they
    are judged again."""
    await _each(conn, "DELETE FROM inbox USING {keys} WHERE inbox.source = k.source AND inbox.id = k.id", events)


async def mark_stale(conn: Conn, events: Sequence[CloudEvent]) -> None:
    await _each(
        conn, "UPDATE inbox SET outcome = 'stale' FROM {keys} WHERE inbox.source = k.source AND inbox.id = k.id", events
    )


async def _each(conn: Conn, statement: str, events: Sequence[CloudEvent]) -> None:
    """`statement` over the inbox rows of `events`, their keys given as `{keys}` (rows `k`)."""
    if events:
        keys = "unnest($1::text[], $2::text[]) AS k(source, id)"
        await conn.execute(statement.format(keys=keys), [e.source for e in events], [e.id for e in events])
