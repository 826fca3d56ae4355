"""Storing state events: latest `time` wins, per entity, in one round trip per step.

Every state table has text key columns and an `event_time` column. `store_latest` locks the
rows it may replace (in key order, so two consumers never deadlock), decides with the pure
`latest_wins` rule, and upserts the winners in one statement (`unnest` of one array per
column) with a guard that keeps the rule true even against a concurrent writer.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from contracts import CloudEvent
from services.common.rules.state import Verdicts, latest_wins
from services.common.storage.db import Conn


async def store_latest(
    conn: Conn,
    table: str,
    keys: Sequence[str],
    columns: Mapping[str, str],
    events: Sequence[CloudEvent],
    row_of: Callable[[CloudEvent], tuple[Any, ...]],
) -> Verdicts[tuple[str, ...], CloudEvent]:
    """`keys` name the text columns of the payload's `entity_key`, in its order; `columns` maps
    the other columns to their SQL type (`jsonb` takes JSON text), `row_of` gives their values
    for one event, in that order."""
    if not events:
        return Verdicts({}, [])
    wanted = sorted({e.data.entity_key for e in events})
    key_list = ", ".join(f'"{k}"' for k in keys)
    unnest_keys = ", ".join(f"${i + 1}::text[]" for i in range(len(keys)))
    held_rows = await conn.fetch(
        f"SELECT {key_list}, event_time FROM {table} WHERE ({key_list}) IN (SELECT * FROM unnest({unnest_keys})) "
        f"ORDER BY {key_list} FOR UPDATE",
        *[[k[i] for k in wanted] for i in range(len(keys))],
    )
    held = {tuple(r[k] for k in keys): r["event_time"] for r in held_rows}
    verdicts = latest_wins(held, ((e.data.entity_key, e.time, e) for e in events))
    if verdicts.winners:
        types = [*(["text"] * len(keys)), *columns.values(), "timestamptz"]
        names = ", ".join(f'"{c}"' for c in [*keys, *columns, "event_time"])
        arrays = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(types))
        updates = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in [*columns, "event_time"])
        rows = [(*key, *row_of(e), e.time) for key, e in sorted(verdicts.winners.items())]
        await conn.execute(
            f"INSERT INTO {table} AS t ({names}) SELECT * FROM unnest({arrays}) "
            f"ON CONFLICT ({key_list}) DO UPDATE SET {updates} WHERE t.event_time <= EXCLUDED.event_time",
            *[list(column) for column in zip(*rows, strict=True)],
        )
    return verdicts
