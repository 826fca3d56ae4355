"""How a loop that retries says that PostgreSQL is away, once, not at every round; and how a
request answered 503 says why, at most every few seconds.

The batches say an outage their own way (pipeline.py: /health's `batches_failing` is that
state); the loops beside them (the outbox relay, ressources' re-evaluations and its live
stream's journal reader, the revival of records waiting for their établissement, the purges)
say it with an `Outage`: the first failure while PostgreSQL (or what else `away` names) is away
a warning without a traceback (its `error` and `detail`), the next ones at DEBUG, then one
`…recovered` line once a round goes through. A failure of another kind is an ERROR with its
traceback each time: a fault to look at, not a state that passes.

A request answered 503 (or a stream's replay cut short) says why with an `EveryFew`: at most
one line in `LINE_SECONDS`, with how many requests met the same since the line before
(`autres_requetes`). Each request comes from outside, so PostgreSQL, Kafka or the identity
provider away, or anyone repeating a request that fails, wrote a line per request."""

import math
import time
from typing import Any

from services.common.runtime.secrets import redact
from services.common.storage.db import DATABASE_AWAY


class Outage:
    """`failed` from inside the `except` that caught the failure (its traceback is the one said)."""

    def __init__(
        self,
        log: Any,
        event: str,
        recovered: str,
        hint: str,
        away: tuple[type[BaseException], ...] = DATABASE_AWAY,
    ):
        self._log, self.event, self.recovered, self.hint, self._away = log, event, recovered, hint, away
        self._since: float | None = None
        self._said_as: str | None = None

    def failed(self, exc: BaseException, state: tuple[str, str] | None = None, **fields: Any) -> None:
        """`state`: the event and hint of the state `exc` tells, when not this outage's own; a
        state said is said again when it changes (Kafka back, PostgreSQL now refusing writes)."""
        event, hint = state or (self.event, self.hint)
        if not isinstance(exc, self._away):
            self._log.exception(event, **fields)
            return
        self._since = self._since or time.monotonic()
        if event != self._said_as:
            self._said_as = event
            self._log.warning(event, error=type(exc).__name__, detail=redact(str(exc)), hint=hint, **fields)
        else:
            self._log.debug(event, error=type(exc).__name__, **fields)

    def succeeded(self) -> None:
        """A round went through: the outage said over, if one was said."""
        if self._since is not None:
            self._log.info(self.recovered, after_s=round(time.monotonic() - self._since, 1))
            self._since = self._said_as = None


LINE_SECONDS = 10.0
"""A request's 503 line (`EveryFew`) at most once in that many seconds."""


class EveryFew:
    """A line said at most once every `seconds`: `due()` is None when not, else how many were
    not said since the last one."""

    def __init__(self, seconds: float = LINE_SECONDS) -> None:
        self.seconds, self._said_at, self._unsaid = seconds, -math.inf, 0

    def due(self) -> int | None:
        now = time.monotonic()
        if now - self._said_at < self.seconds:
            self._unsaid += 1
            return None
        unsaid, self._said_at, self._unsaid = self._unsaid, now, 0
        return unsaid

    def say(self, log_method: Any, event: str, **fields: Any) -> None:
        """`log_method(event, …, autres_requetes=…)` when due."""
        if (unsaid := self.due()) is not None:
            log_method(event, **fields, autres_requetes=unsaid)
