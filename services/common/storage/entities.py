"""Storing state events: latest `time` wins, per entity, in one round trip per step.

Every state table has text key columns and an `event_time` column. `store_latest` locks the
rows it may replace (in key order, so two batches never deadlock; a revival judging a UAI's
records in parts locks each part's in turn, which a batch can meet in a deadlock: README,
Known limits), decides with the pure `latest_wins` rule, and upserts the winners in one
statement (two in a revival) with a guard that keeps the rule true even against a concurrent
writer (a row another transaction inserted after the locking read): a winner the guard refused
is reported stale, so no use case publishes it. A batch's rows travel as one JSON parameter
(`db.json_rows`, read by `json_to_recordset`).
"""

from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any

from contracts import CloudEvent
from services.common.rules.state import Verdicts, latest_wins
from services.common.storage.db import Conn, json_rows


@dataclass
class Revival:
    """Set (REVIVAL) while the events stored arrived before the states held: records refused
    `uai-inconnu`, judged again once their établissement came (Pipeline.revive). A state held
    with the same `time` came after them, and the later arrival wins equal times: they lose to
    it; but not to one the revival stored itself, from a record that arrived before them, in an
    earlier part of its transaction (judged in parts of a bounded size, in arrival order):
    `stored` keeps, per table, the keys it wrote, locked by it since."""

    stored: dict[str, set[tuple[str, ...]]] = field(default_factory=dict)


REVIVAL: ContextVar[Revival | None] = ContextVar("revival", default=None)


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


async def store_latest(
    conn: Conn,
    table: str,
    keys: Sequence[str],
    columns: Mapping[str, str],
    events: Sequence[CloudEvent],
    row_of: Callable[[CloudEvent], tuple[Any, ...]],
    also: Sequence[str] = (),
) -> Verdicts[tuple[str, ...], CloudEvent]:
    """`keys` name the text columns of the payload's `entity_key`, in its order; `columns` maps
    the other columns to their SQL type, `row_of` gives their values for one event, in that
    order, as JSON values (a `jsonb` column takes a dict or a list, not JSON text). `also`: SQL
    expressions over the held row (`t`), read with the lock, before the upsert, and given back
    per key in `Verdicts.held` (what a use case compares the new state with, without a second
    reading of the rows)."""
    if not events:
        return Verdicts({}, [])
    wanted = sorted({e.data.entity_key for e in events})
    key_list, key_types = _quoted(keys), _typed(dict.fromkeys(keys, "text"))
    extra = "".join(f", {expression}" for expression in also)
    held_rows = await conn.fetch(
        f"SELECT {key_list}, t.event_time{extra} FROM json_to_recordset($1::json) AS w({key_types}) "
        f"JOIN {table} AS t USING ({key_list}) ORDER BY {key_list} FOR UPDATE OF t",
        json_rows(dict(zip(keys, key, strict=True)) for key in wanted),
    )
    keyed = [(tuple(r[k] for k in keys), r) for r in held_rows]
    revival = REVIVAL.get()
    ours = None if revival is None else revival.stored.setdefault(table, set())
    verdicts = latest_wins(
        {key: r["event_time"] for key, r in keyed},
        ((e.data.entity_key, e.time, e) for e in events),
        arrived_before_held=ours is not None,
        held_arrived_before=ours or (),
    )
    if also:
        first = len(keys) + 1
        verdicts = replace(verdicts, held={key: tuple(r)[first:] for key, r in keyed})
    if verdicts.winners:
        typed = {**dict.fromkeys(keys, "text"), **columns, "event_time": "timestamptz"}
        updates = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in [*columns, "event_time"])
        winners = sorted(verdicts.winners.items())
        # The guard: equal times go to the later arrival, so to the held state when it came after
        # (a revival's records, but for the states the revival stored itself): one statement each.
        # The second's rows exist, locked by this transaction since it stored them: no new lock
        # is taken out of key order.
        guarded = [(winners, "<=")]
        if ours is not None:
            came_after = [(k, e) for k, e in winners if k not in ours]
            came_before = [(k, e) for k, e in winners if k in ours]
            guarded = [(came_after, "<"), (came_before, "<=")]
        stored: set[tuple[str, ...]] = set()
        for part, guard in guarded:
            if not part:
                continue
            rows = (dict(zip(typed, (*key, *row_of(e), e.time), strict=True)) for key, e in part)
            written = await conn.fetch(
                f"INSERT INTO {table} AS t ({_quoted(list(typed))}) "
                f"SELECT * FROM json_to_recordset($1::json) AS r({_typed(typed)}) "
                f"ON CONFLICT ({key_list}) DO UPDATE SET {updates} "
                f"WHERE t.event_time {guard} EXCLUDED.event_time "
                f"RETURNING {key_list}",
                json_rows(rows),
            )
            stored |= {tuple(r[k] for k in keys) for r in written}
        if ours is not None:
            ours |= stored
        # A newer row inserted by a transaction that committed after the locking read (it was
        # not there to lock) makes the guard refuse ours: that winner is stale after all, and
        # must not be published as the entity's state.
        if len(stored) < len(verdicts.winners):
            lost = [e for key, e in winners if key not in stored]
            verdicts = replace(verdicts, winners={k: e for k, e in winners if k in stored}, stale=verdicts.stale + lost)
    return verdicts


def _typed(columns: Mapping[str, str]) -> str:
    return ", ".join(f'"{c}" {t}' for c, t in columns.items())
