"""A read of Kafka the broker stops feeding (services/common/messaging/stall.py: the catch-up's
and the DLQ scan's)."""

import pytest

from deploy import rattrapage
from services.common.messaging import stall


def test_a_stall_is_counted_from_the_first_empty_fetch_not_from_the_last_records(monkeypatch):
    """Handling what came may take longer than STALL_SECONDS: the first empty fetch after it
    starts the count, it does not end the catch-up."""
    now = [0.0]
    monkeypatch.setattr(stall.time, "monotonic", lambda: now[0])
    progress = stall.Stall("reading t: no record from Kafka", rattrapage.STALL_SECONDS)
    progress.fetched(True)
    now[0] += rattrapage.STALL_SECONDS * 3  # the batches handled meanwhile
    progress.fetched(False)
    now[0] += rattrapage.STALL_SECONDS / 2
    progress.fetched(False)
    now[0] += rattrapage.STALL_SECONDS
    with pytest.raises(TimeoutError, match="reading t: no record from Kafka"):
        progress.fetched(False)


class _Consumer:
    """A consumer whose fetches give nothing, moving its position by `step` each time (a
    read_committed consumer over an aborted transaction's records: none handed over)."""

    def __init__(self, step: int):
        self.at, self.step = 0, step

    async def position(self, tp) -> int:
        return self.at

    async def getmany(self, *partitions, **options) -> dict:
        self.at += self.step
        return {}


@pytest.mark.parametrize("step", [1, 0])
async def test_a_fetch_that_moves_the_position_without_records_is_progress(monkeypatch, step):
    """Minutes of an aborted transaction's records, skipped, stopped a rebuild (review s67 #10)."""
    now = [0.0]
    monkeypatch.setattr(stall.time, "monotonic", lambda: now[0])
    progress, consumer = stall.Stall("reading t: no record from Kafka", 1), _Consumer(step)
    fetches = 0
    try:
        for fetches in range(1, 4):  # noqa: B007  # counted as they go
            await progress.getmany(consumer, ["t-0"])  # type: ignore[arg-type, list-item]
            now[0] += 2
    except TimeoutError:
        pass
    # Moving: every fetch goes on. Not: the second, 2 s after the first that moved nothing, stops.
    assert fetches == (3 if step else 2)
    assert consumer.at == (3 if step else 0)
