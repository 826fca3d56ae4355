"""The inbox: the same (`source`, `id`) received again has no second effect, within one domain
of types (`scope`): each topic a partner writes carries a domain of its own.

Scoped so, a record on a topic two partners write cannot take first the id of an event on a
topic only one of them writes: the GAR, which may write `ressources.catalogue.v1` as `/ministere`
(a Kafka record does not say which principal wrote it), would otherwise keep `ressources`, which
reads both, from taking the ministère's `etablissement` of that id (contract audit s69 F1).

`claim` runs inside the batch's transaction: a row inserted now means the event is new; a
conflict means it was accepted before (or by a concurrent consumer, which then commits first).
"""

from collections.abc import Callable, Sequence

from contracts import CloudEvent
from services.common.storage.db import Conn, json_rows

Key = tuple[str, str, str]


def scope(type_: str) -> str:
    """The domain of a type, `fr.education.<domain>.<name>.v1` (`referentiel`, `ressources`,
    `plateforme`…), as the inbox's column `domaine` reads it (`split_part(type, '.', 3)`)."""
    parts = type_.split(".", 3)
    return parts[2] if len(parts) > 2 else ""


def key(event: CloudEvent) -> Key:
    """What makes an event the same as one received before: (source, id) within its scope."""
    return event.source, event.id, scope(event.type)


async def claim(
    conn: Conn, events: Sequence[CloudEvent], principal: Callable[[CloudEvent], str | None] = lambda _: None
) -> list[CloudEvent]:
    """Keep the events never accepted before, in arrival order, each key once;
    `principal(event)`: who was authenticated when it came in, stored with its row."""
    if not events:
        return []
    rows = await conn.fetch(
        """
        INSERT INTO inbox (source, id, type, subject, event_time, principal)
        SELECT * FROM json_to_recordset($1::json)
            AS e(source text, id text, type text, subject text, event_time timestamptz, principal text)
        ON CONFLICT DO NOTHING
        RETURNING source, id, domaine
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
    fresh = {(r["source"], r["id"], r["domaine"]) for r in rows}
    kept: list[CloudEvent] = []
    for event in events:
        if key(event) in fresh:
            fresh.discard(key(event))  # a twin inside the batch is a duplicate too
            kept.append(event)
    return kept


async def release(conn: Conn, events: Sequence[CloudEvent]) -> None:
    """Forget these events, claimed in this transaction and then refused: received again, they
    are judged again."""
    await _each(conn, "DELETE FROM inbox USING {keys} WHERE {same}", events)


async def mark_stale(conn: Conn, events: Sequence[CloudEvent]) -> None:
    await _each(conn, "UPDATE inbox SET outcome = 'stale' FROM {keys} WHERE {same}", events)


async def _each(conn: Conn, statement: str, events: Sequence[CloudEvent]) -> None:
    """`statement` over the inbox rows of `events`, their keys given as `{keys}` (rows `k`),
    matched by `{same}`."""
    if events:
        keys = "unnest($1::text[], $2::text[], $3::text[]) AS k(source, id, scope)"
        same = "inbox.source = k.source AND inbox.id = k.id AND inbox.domaine = k.scope"
        await conn.execute(statement.format(keys=keys, same=same), *map(list, zip(*map(key, events), strict=True)))
