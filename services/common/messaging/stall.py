"""A read of Kafka to a known end (a catch-up, a scan of DLQs) that the broker stops feeding."""

import time


class Stall:
    """Fed the count of each fetch: TimeoutError once fetches have brought no record for
    `seconds` in a row while some are left (the time spent handling what came before does not
    count: the first empty fetch starts it)."""

    def __init__(self, nothing: str, seconds: float):
        """`nothing`: what the error says first (`replaying t: no record from Kafka`)."""
        self.nothing, self.seconds = nothing, seconds
        self.empty_since: float | None = None

    def fetched(self, records: int) -> None:
        now = time.monotonic()
        if records:
            self.empty_since = None
        elif self.empty_since is None:
            self.empty_since = now
        elif now - self.empty_since > self.seconds:
            raise TimeoutError(f"{self.nothing} for {self.seconds:g} s, with some left to read")
