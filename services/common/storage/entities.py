"""Storing state events: latest `time` wins, per entity, in one round trip per step.

Every state table has text key columns and an `event_time` column. `store_latest` locks the
rows it may replace (in key order, so two consumers never deadlock), decides with the pure
`latest_wins` rule, and upserts the winners with a guard that keeps the rule true even
against a concurrent writer.
"""

from collections.abc import Callable, Sequence
from typing import Any

from contracts import CloudEvent
from services.common.rules.state import Verdicts, latest_wins
from services.common.storage.db import Conn


async def store_latest(
    conn: Conn,
    table: str,
    keys: Sequence[str],
    columns: Sequence[str],
    events: Sequence[CloudEvent],
    row_of: Callable[[CloudEvent], tuple[Any, ...]],
) -> Verdicts[tuple[str, ...], CloudEvent]:
    """`keys` name the columns of the payload's `entity_key`, in its order; `columns` are the
    other columns, `row_of` gives their values for one event."""
    if not events:
        return Verdicts({}, [])
    wanted = sorted({e.data.entity_key for e in events})
    key_list = ", ".join(keys)
    unnest = ", ".join(f"${i + 1}::text[]" for i in range(len(keys)))
    held_rows = await conn.fetch(
        f"SELECT {key_list}, event_time FROM {table} WHERE ({key_list}) IN (SELECT * FROM unnest({unnest})) "
        f"ORDER BY {key_list} FOR UPDATE",
        *[[k[i] for k in wanted] for i in range(len(keys))],
    )
    held = {tuple(r[k] for k in keys): r["event_time"] for r in held_rows}
    verdicts = latest_wins(held, ((e.data.entity_key, e.time, e) for e in events))
    all_cols = [*keys, *columns, "event_time"]
    placeholders = ", ".join(f"${i + 1}" for i in range(len(all_cols)))
    updates = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in [*columns, "event_time"])
    await conn.executemany(
        f"INSERT INTO {table} ({', '.join(f'{chr(34)}{c}{chr(34)}' for c in all_cols)}) VALUES ({placeholders}) "
        f"ON CONFLICT ({key_list}) DO UPDATE SET {updates} WHERE {table}.event_time <= EXCLUDED.event_time",
        [(*key, *row_of(e), e.time) for key, e in sorted(verdicts.winners.items())],
    )
    return verdicts
