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
    progress.fetched(10)
    now[0] += rattrapage.STALL_SECONDS * 3  # the batches handled meanwhile
    progress.fetched(0)
    now[0] += rattrapage.STALL_SECONDS / 2
    progress.fetched(0)
    now[0] += rattrapage.STALL_SECONDS
    with pytest.raises(TimeoutError, match="reading t: no record from Kafka"):
        progress.fetched(0)
