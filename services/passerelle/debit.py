"""Per-declarant rate limit: a token bucket per token subject, in this replica's memory; and
the requests under way, per subject and in all (`EnCours`).

Each subject's bucket holds at most `burst` events and refills at `rate` events per second; a
request takes as many as it carries events, or none when there are not enough, and is then told
how long to wait. Per replica: N replicas behind a load balancer let a subject through N times
as fast (the README says so).
"""

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float


class Debit:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self._rate, self._burst, self._clock = rate, burst, clock
        self._buckets: dict[str, _Bucket] = {}
        self._told: dict[str, float] = {}
        """Per subject, until when a request refused after its body was read was told to wait."""

    def _tokens(self, bucket: _Bucket, now: float) -> float:
        """What `bucket` holds at `now`: refilled at the rate since it was counted, up to the burst."""
        return min(self._burst, bucket.tokens + (now - bucket.at) * self._rate)

    def waiting(self, subject: str) -> float:
        """0 when `subject` may send at least one event now (nothing is counted), else the
        seconds to wait: a request is refused before its body is read."""
        now = self._clock()
        bucket = self._buckets.get(subject)
        tokens = self._burst if bucket is None else self._tokens(bucket, now)
        told = self._told.get(subject, now) - now
        if told <= 0:
            self._told.pop(subject, None)
        return max(told, 0.0 if tokens >= 1 else (1 - tokens) / self._rate)

    def _counted(self, subject: str) -> _Bucket:
        """`subject`'s bucket, counted now."""
        now = self._clock()
        bucket = self._buckets.setdefault(subject, _Bucket(self._burst, now))
        bucket.tokens, bucket.at = self._tokens(bucket, now), now
        return bucket

    def take(self, subject: str, events: int) -> float:
        """0 when `subject` may send `events` now (they are counted), else the seconds to wait,
        until when its next request is refused before its body is read (`waiting`): the body
        of one sent again at once was read and split again for nothing, as often as it came."""
        bucket = self._counted(subject)
        if events <= bucket.tokens:
            bucket.tokens -= events
            return 0.0
        wait = (events - bucket.tokens) / self._rate
        self._told[subject] = self._clock() + wait
        return wait

    def spend(self, subject: str, events: int) -> None:
        """`events` taken from `subject`'s bucket, into debt by as many at most: a request that
        cost as much without carrying them (its body refused whole). Emptied only, the bucket
        let the next such request through once it held one event again (half a millisecond at
        2,000 a second): in debt, the subject waits as long as for `events` more."""
        bucket = self._counted(subject)
        bucket.tokens = min(bucket.tokens, max(-float(events), bucket.tokens - events))  # never a debt lessened


def retry_after(seconds: float) -> str:
    """A Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


class EnCours:
    """The requests a replica handles at once, each holding its body (up to
    PASSERELLE_MAX_BODY_BYTES) from its reading to its answer: at most `per_subject` of one token
    subject, so that one client cannot take the replica's memory, and `total` over all subjects,
    which bounds it. While other subjects have requests under way, the last `reserve` places (a
    quarter of them) go only to a subject with none: two clients each at their bound took every
    place (4 + 4 of 8 by default), every other partner refused for as long as their slow bodies
    came. A request past any of these is refused before its body is read (`refus`)."""

    def __init__(self, per_subject: int, total: int):
        self.per_subject, self.total = per_subject, total
        self.reserve = max(total // 4, min(1, total - 1))
        self._held: Counter[str] = Counter()
        self._all = 0

    def refus(self, subject: str) -> str | None:
        """None when a request of `subject` may be handled now; else which bound it meets:
        `"sujet"` (its own requests), `"reserve"` (it has some under way, others too, and the
        places left are kept for those with none) or `"total"` (every subject's)."""
        held = self._held[subject]
        if held >= self.per_subject:
            return "sujet"
        if self._all >= self.total:
            return "total"
        if held and held < self._all and self._all >= self.total - self.reserve:
            return "reserve"
        return None

    @contextmanager
    def tenue(self, subject: str) -> Iterator[None]:
        """A request of `subject` counted while the block runs (its subject forgotten at 0)."""
        self._held[subject] += 1
        self._all += 1
        try:
            yield
        finally:
            self._all -= 1
            self._held[subject] -= 1
            if not self._held[subject]:
                del self._held[subject]
