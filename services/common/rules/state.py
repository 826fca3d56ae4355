"""The state rule of CONTRACTS.md, as a pure function.

For one entity the event with the latest `time` wins; an event older than the state already
held is stale and changes nothing; equal times: the later arrival wins. Applied to a batch in
arrival order, starting from the times the database holds, it gives the same outcome as one
event at a time, whatever the delivery order or replays.
"""

from collections.abc import Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
E = TypeVar("E")


@dataclass(frozen=True)
class Verdicts(Generic[K, E]):
    winners: dict[K, E]
    """Per entity, the event whose state must be stored (absent: nothing to store)."""
    stale: list[E]
    """Events that change nothing because a newer state was already held or seen."""
    held: dict[K, tuple] = field(default_factory=dict)
    """What the store held of each entity before, when asked (storage.entities.store_latest's `also`)."""


def latest_wins(
    held: Mapping[K, datetime],
    events: Iterable[tuple[K, datetime, E]],
    *,
    arrived_before_held: bool = False,
    held_arrived_before: Collection[K] = (),
) -> Verdicts[K, E]:
    """`arrived_before_held`: these events arrived before the states held (records judged again
    once their établissement came): one whose time equals its entity's held state loses to it,
    unless that state's event arrived before it too (`held_arrived_before`: stored by an earlier
    part of the same judgement)."""
    running: dict[K, datetime] = dict(held)
    winners: dict[K, E] = {}
    stale: list[E] = []
    for key, time, event in events:
        current = running.get(key)
        held_later = arrived_before_held and key not in winners and key not in held_arrived_before
        if current is not None and (time < current or (time == current and held_later)):
            stale.append(event)
            continue
        running[key] = time
        winners[key] = event
    return Verdicts(winners, stale)
