"""Live alert changes for dashboards that cannot speak Kafka (Server-Sent Events).

The transaction that raises or resolves alerts appends their events to `alert_journal` and
runs `pg_notify('alertes', <its last seq>)`. The notification only wakes the listeners: an alert
event can outgrow the 8,000 bytes PostgreSQL allows a payload, and a refused notification
would fail the whole batch. On a notification, the hub of each API replica reads the journal
rows after the last seq it delivered, once for all its clients, and fans them out.

A row's seq is its SSE `id:`. A client reconnecting with `Last-Event-ID: N` first gets the
journal rows after N that match its filters (at most `replay_max`), then the live stream,
without gap or duplicate. Bounds: at most `max_clients` streams; each has a bounded queue,
and a client that stops reading is dropped rather than slowing everyone; a comment every
`keepalive_seconds` keeps proxies from closing an idle stream; every stream ends after
`max_seconds`; each step of the hub's listening connection is bounded (`replay_timeout_ms`),
then the connection is replaced. Each ending is a final `fin` event whose `id:` is where to
resume, which is what EventSource sends back by itself when it reconnects.
"""

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import asyncpg
import structlog

from services.common.runtime.outages import EveryFew, Outage
from services.common.runtime.wake import woken
from services.common.storage import retention
from services.common.storage.db import KEEPALIVE_SETTINGS, Conn, service_session
from services.ressources import queries

CHANNEL = "alertes"
STOPPING = (
    asyncpg.PostgresConnectionError,  # a connection lost
    asyncpg.CannotConnectNowError,  # starting, in recovery
    asyncpg.AdminShutdownError,  # shutting down
    asyncpg.CrashShutdownError,
)
"""What PostgreSQL answers while it is not serving: a read to try again shortly."""
UNREACHABLE = (OSError, asyncpg.InterfaceError, asyncpg.TooManyConnectionsError, *STOPPING)
"""PostgreSQL away, starting, stopping, or out of connections."""
ALLOCATED_WAIT_SECONDS = 1.0
"""How long a stream whose replay failed waits to learn how far the journal goes."""
# The hub also reads the journal when no notification came for this long: a notification lost
# while the listening connection was being re-established delays delivery, never loses it.
POLL_SECONDS = 5.0
FETCH_ROWS = 500
START_BOUND_SECONDS = 10.0
"""The least bound of the hub's first connection and read, at the service's start."""
PURGE_PERIOD_SECONDS = 3600
PURGE_CHUNK = 10_000
JOURNAL_PART_BYTES = 64 * 1024 * 1024

log = structlog.get_logger(__name__)


async def notify(conn: Conn, events: Sequence[bytes], elsewhere: Sequence[bytes | None] = ()) -> None:
    """Inside the write transaction: journalled and announced on commit, neither on rollback.

    Transactions of several batches and re-evaluation chunks run at once (locks per UAI), but
    the hub needs seq order to be commit order: a reader that has seen seq N must never see a
    smaller seq appear later. So a transaction takes the journal's lock before its seqs are
    drawn and holds it until it ends: journalling transactions commit in the order of their
    seqs. Only their last steps (this, the outbox, the commit) wait for each other.

    `events`: the alert events' record values. They go as one JSON array, each row's ids read
    from its event: one parameter, which asyncpg sends as it is (an array parameter, it checks
    and encodes element by element). In parts of at most JOURNAL_PART_BYTES, in order: a jsonb
    array stops at 256 MiB, and one transaction's alerts may weigh more. `elsewhere`, beside each
    event: the other place it concerns (None: none), where its alert is now for a resolution
    announced where it was raised, where it was for an alerte-deplacee."""
    if not events:
        return
    places = list(elsewhere) or [None] * len(events)
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('alert-journal:' || current_schema(), 0))")
    done = 0
    for part in _parts(events, JOURNAL_PART_BYTES):
        here, done = places[done : done + len(part)], done + len(part)
        await conn.execute(  # announced with the last seq, in the same statement
            # Dated when written, under the lock (not when the transaction began, the column's
            # default): in seq order, so that the purge's cut by age is a prefix of seq (audit s69
            # F6). Read once per statement (an InitPlan), not per row.
            "WITH added AS (INSERT INTO alert_journal (event_id, alert_id, event, portee, created_at) "
            "SELECT e->>'id', e->'data'->>'alert_id', e, nullif(w.place, 'null'::jsonb), (SELECT clock_timestamp()) "
            "FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS u(e, n) "
            "JOIN jsonb_array_elements($3::jsonb) WITH ORDINALITY AS w(place, n) USING (n) "
            "ORDER BY n RETURNING seq) SELECT pg_notify($2, max(seq)::text) FROM added",
            b"".join((b"[", b",".join(part), b"]")).decode(),
            CHANNEL,
            b"".join((b"[", b",".join(p or b"null" for p in here), b"]")).decode(),
        )


def _parts(events: Sequence[bytes], limit: int) -> list[Sequence[bytes]]:
    """`events` cut in order into parts of at most `limit` bytes (an event larger alone is a part)."""
    parts, start, size = [], 0, 0
    for i, event in enumerate(events):
        if size and size + len(event) > limit:
            parts.append(events[start:i])
            start, size = i, 0
        size += len(event) + 1
    parts.append(events[start:])
    return parts


async def purge(pool: asyncpg.Pool, hours: float) -> int:
    """Delete the journal rows older than `hours`, always a prefix of seq; returns how many."""
    async with pool.acquire() as conn:
        cut = await conn.fetchval(
            "SELECT max(seq) FROM alert_journal WHERE created_at < now() - make_interval(secs => $1)", hours * 3600
        )
        if cut is None:
            return 0
        # The horizon first: a client resuming from before it is told it may have missed events,
        # even while (or if) the deletion below is interrupted.
        await conn.execute("UPDATE alert_journal_horizon SET purged_through = greatest(purged_through, $1)", cut)
        removed = 0
        while True:
            count = int(
                (
                    await conn.execute(
                        "DELETE FROM alert_journal WHERE seq IN "
                        f"(SELECT seq FROM alert_journal WHERE seq <= $1 ORDER BY seq LIMIT {PURGE_CHUNK})",
                        cut,
                    )
                ).split()[-1]
            )
            removed += count
            if count < PURGE_CHUNK:
                return removed


async def purge_periodically(pool: asyncpg.Pool, hours: float) -> None:
    await retention.periodically(
        "sse.journal", lambda: purge(pool, hours), PURGE_PERIOD_SECONDS, older_than_hours=hours
    )


async def purge_resolved(pool: asyncpg.Pool, days: int) -> int:
    """Delete the alerts resolved more than `days` days ago; returns how many. An alert of the
    same pair and kind raised again later starts over at cycle 1: its events' ids hold its
    raise's instant, so none is a former one's (lifecycle.event_id)."""
    return await retention.purge_expired(pool, _RESOLVED, days)


_RESOLVED = {"alertes": "NOT ouverte AND resolved_at < now() - make_interval(days => $1)"}


async def purge_resolved_periodically(pool: asyncpg.Pool, days: int) -> None:
    await retention.periodically(
        "alerts.resolved", lambda: purge_resolved(pool, days), PURGE_PERIOD_SECONDS, older_than_days=days
    )


class _Item(NamedTuple):
    seq: int
    frame: str


_DROPPED = object()  # the hub gave up on this client (its queue was full)
_STOPPED = object()  # the hub is stopping


@dataclass(eq=False)
class Subscription:
    filter: queries.AlertFilter
    queue: asyncio.Queue
    start: int
    """The hub's position when the client subscribed: its live items are the rows after it."""
    flushed: bool = field(default=False)
    """Items were thrown away: the client's resume point is what it really received."""


def _frame(seq: int | None, name: str, data: str) -> str:
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {name}\ndata: {data}\n\n"


def _alert_frame(seq: int, event_json: str) -> tuple[dict, str]:
    event = json.loads(event_json)
    # fr.education.alertes.alerte-levee.v1 -> alerte-levee
    return event, _frame(seq, event["type"].split(".")[-2], event_json)


def _resume_at(seq: int) -> str:
    """A frame of an `id:` alone: where the client resumes if the stream is cut, no event fired."""
    return f"id: {seq}\n\n"


def _incomplete(reason: str, last_event_id: int, message: str, **more: int) -> str:
    """The notice that a replay after `last_event_id` misses events (no `id:`: nothing to resume at)."""
    body = {"raison": reason, "last_event_id": last_event_id, **more, "message": message}
    return _frame(None, "reprise-incomplete", json.dumps(body, ensure_ascii=False))


RECONNECT_MS = 3000
"""The wait before EventSource opens a closed stream again, told at every stream's start (the
browsers' own default, 3–5 s), restoring it after a catch-up's."""
CATCH_UP_RECONNECT_MS = 250
"""That wait after a stream ended for the client to catch up (a replay past SSE_REPLAY_MAX, a
client too slow): at the browser's default, a national fan-out's 30,000–60,000 events took
30–60 reconnections of 3–5 s each."""


def _fin(reason: str, message: str, resume_at: int | None, reconnect_ms: int | None = None) -> str:
    body = {"raison": reason, "message": message, "reconnecter": True, "last_event_id": resume_at}
    retry = f"retry: {reconnect_ms}\n" if reconnect_ms is not None else ""
    return retry + _frame(resume_at, "fin", json.dumps(body, ensure_ascii=False))


def refusal(reason: str, message: str, last_event_id: int, reconnect_ms: int) -> str:
    """The whole stream a refused EventSource is sent in place of a 503, which it would take as
    final (the HTML standard fails the connection on any status but 200, `Retry-After` unread): a
    `fin` that has it reconnect after `reconnect_ms` from `last_event_id` (the Last-Event-ID it
    sent, else the hub's position: what is committed while it waits comes then), given back as
    its `id:` (a stream's last event id is what its events say: without one, a browser reading
    the standard to the letter resumed from nothing)."""
    return _fin(reason, message, last_event_id, reconnect_ms)


class AlertHub:
    def __init__(
        self,
        database_url: str,
        schema: str,
        pool: asyncpg.Pool,
        *,
        max_clients: int = 100,
        queue_size: int = 1000,
        keepalive_seconds: float = 15,
        max_seconds: float = 3600,
        replay_max: int = 1000,
        replay_timeout_ms: int = 5000,
    ):
        self._url, self._schema, self._pool = database_url, schema, pool
        self.max_clients, self.queue_size, self.replay_max = max_clients, queue_size, replay_max
        self.replay_timeout_ms = replay_timeout_ms
        self.keepalive_seconds, self.max_seconds = keepalive_seconds, max_seconds
        self._conn: asyncpg.Connection | None = None
        self._clients: set[Subscription] = set()  # those the live events go to
        self._places: set[Subscription] = set()  # those whose stream has not ended (max_clients)
        self._position = 0  # the last journal seq fanned out
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopped = False
        self._outage = Outage(
            log,
            "sse.journal_read_failed",
            "sse.journal_read_recovered",
            "PostgreSQL away: the live streams wait, and are sent what was journalled once it is back",
        )
        self._replay_cut_said = EveryFew()  # each reconnecting client's: as many as dashboards

    @property
    def clients(self) -> int:
        """Streams holding a place: a client dropped for reading too slowly keeps its own until
        its stream has ended (its final event sent, or the connection cut), else a client that
        never reads would take a place again after each drop while its connections stayed open."""
        return len(self._places)

    @property
    def stopping(self) -> bool:
        """Stopped, or stopping: no new stream (the service's stop)."""
        return self._stopped

    @property
    def listening(self) -> int:
        """Streams the live events go to (a dropped client's no longer)."""
        return len(self._clients)

    @property
    def position(self) -> int:
        return self._position

    async def start(self) -> None:
        # Listen before reading the position: a row committed in between is announced. Bounded
        # by START_BOUND_SECONDS at least: a new session (a process forked, the password
        # checked) on a loaded host may take longer than a read bound chosen short, and the
        # service's startup failed on it; the pump's reconnections are retried, this is not.
        self._conn = await self._connect(START_BOUND_SECONDS)
        async with self._bounded(START_BOUND_SECONDS):
            # Past what was purged, as the list's `last_event_id` (a journal emptied by its purge
            # started the stream at 0, and every client resuming from the list was told of a purge).
            self._position = await queries.journal_position(self._conn)
        self._task = asyncio.create_task(self._pump(), name="sse-hub")

    def _bounded(self, at_least: float = 0.0) -> asyncio.Timeout:
        """The bound of each step on the listening connection (`replay_timeout_ms`, as the read
        API's statements, or `at_least` seconds): a connection whose peer went away without
        closing it (a failover, a network cut) would otherwise hold the live stream until TCP
        gives up, many minutes later."""
        return asyncio.timeout(max(self.replay_timeout_ms / 1000, at_least))

    async def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._conn is not None and not self._conn.is_closed():
            try:
                async with self._bounded():
                    await self._conn.close()
            except Exception:  # the peer gone without a word: the connection is aborted
                self._drop_connection()
        for sub in list(self._clients):
            self._end(sub, _STOPPED)

    async def _connect(self, at_least: float = 0.0) -> asyncpg.Connection:
        async with self._bounded(at_least):
            conn = await asyncpg.connect(
                self._url,
                server_settings={
                    "search_path": self._schema,
                    "application_name": f"feo-{self._schema}-sse",
                    # A read given up here ends on the server too, not after it, on every round.
                    "statement_timeout": str(self.replay_timeout_ms),
                    # Given up by the server about a minute after this host is lost, as a pool's
                    # sessions are (service_session too): a listener that reads nothing holds
                    # the cluster's NOTIFY queue from being truncated past it (review s69 #11).
                    **KEEPALIVE_SETTINGS,
                },
            )
        try:
            async with self._bounded(at_least):
                await service_session(conn)
                await conn.add_listener(CHANNEL, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        return conn

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, _payload: object) -> None:
        self._wake.set()  # the payload (a seq) is not trusted: the journal says what is new

    async def _pump(self) -> None:
        while True:
            await woken(self._wake, POLL_SECONDS)
            step = "connect"
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await self._connect()
                step = "read"
                await self._deliver()
                self._outage.succeeded()
            except asyncio.CancelledError:
                raise
            except TimeoutError as exc:
                # Not closed: a close waits for the peer. A new connection reads on from the
                # position, so nothing journalled meanwhile is lost: at once after a read that
                # stalled, at the next round after a connection that could not be made (PostgreSQL
                # out of reach, said once as any outage).
                self._drop_connection()
                if step == "read":
                    log.warning("sse.journal_stalled", step=step, limit_ms=self.replay_timeout_ms)
                    self._wake.set()
                else:
                    self._outage.failed(exc)
            except Exception as exc:
                self._outage.failed(exc)
                self._drop_connection()

    def _drop_connection(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            self._conn.terminate()
        self._conn = None

    async def _deliver(self) -> None:
        conn = self._conn
        assert conn is not None, "connected by _pump"
        if not self._clients:
            # Nobody to hand the rows to: the position moves to the journal's last seq without
            # reading them (every alert of a busy moment would be read and decoded for nothing).
            # A client that subscribed during this read starts at the former position: then
            # the rows are read and fanned out as usual.
            async with self._bounded():
                latest = await queries.journal_position(conn)
            if not self._clients:
                self._position = max(self._position, latest)
                return
        while True:
            async with self._bounded():
                rows = await conn.fetch(
                    "SELECT seq, event, portee FROM alert_journal WHERE seq > $1 ORDER BY seq LIMIT $2",
                    self._position,
                    FETCH_ROWS,
                )
            self._fan_out(rows)
            if len(rows) < FETCH_ROWS:
                return

    def _fan_out(self, rows: list[asyncpg.Record]) -> None:
        # No await from here to the position update: a client subscribing in between gets
        # every row after its `start` live, and the rows up to it by replay.
        for row in rows:
            event, frame = _alert_frame(row["seq"], row["event"])
            item = _Item(row["seq"], frame)
            data = event.get("data") or {}
            now_at = None if row["portee"] is None else {**data, **json.loads(row["portee"])}
            for sub in list(self._clients):
                if sub.filter.matches(data) or (now_at is not None and sub.filter.matches(now_at)):
                    try:
                        sub.queue.put_nowait(item)
                    except asyncio.QueueFull:
                        self._clients.discard(sub)
                        self._end(sub, _DROPPED)
                        log.warning("sse.client_dropped", reason="slow reader", queue_size=self.queue_size)
            self._position = row["seq"]

    def _end(self, sub: Subscription, sentinel: object) -> None:
        if sub.queue.full():
            sub.flushed = True
            while not sub.queue.empty():
                sub.queue.get_nowait()
        sub.queue.put_nowait(sentinel)

    def subscribe(self, f: queries.AlertFilter) -> Subscription | None:
        """A place among the clients, or None when they are `max_clients` already."""
        if self._stopped or len(self._places) >= self.max_clients:
            return None
        sub = Subscription(f, asyncio.Queue(self.queue_size), self._position)
        self._clients.add(sub)
        self._places.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """The client's stream has ended: its place is free."""
        self._clients.discard(sub)
        self._places.discard(sub)

    async def _replay(self, sub: Subscription, last_event_id: int) -> queries.Replay | None:
        """The journal after `last_event_id` for this client, or None when it could not be read
        within `replay_timeout_ms` (a connection, then its statements, each of which the server
        stops past as long: API_STATEMENT_TIMEOUT_MS) or PostgreSQL could not be reached. The
        stream has begun (its status is sent): that is told in the stream, the live events follow."""
        try:
            async with asyncio.timeout(self.replay_timeout_ms / 1000), self._pool.acquire() as conn:
                return await queries.journal_replay(conn, last_event_id, sub.start, sub.filter, self.replay_max)
        except (TimeoutError, asyncpg.QueryCanceledError, *UNREACHABLE) as e:
            self._replay_cut_said.say(
                log.warning, "sse.reprise_interrompue", error=type(e).__name__, limit_ms=self.replay_timeout_ms
            )
            return None

    async def _allocated(self) -> int | None:
        """The highest id the journal handed out, read at once (None when it cannot be: a replay
        that could not be read either)."""
        try:
            async with asyncio.timeout(ALLOCATED_WAIT_SECONDS), self._pool.acquire() as conn:
                return await queries.journal_allocated(conn)
        except (TimeoutError, asyncpg.QueryCanceledError, *UNREACHABLE):
            return None

    async def _handed_out(self, last_event_id: int) -> bool | None:
        """Whether the journal has handed out `last_event_id` (a row this hub has seen, or one
        another replica's had, this hub behind it); None when PostgreSQL cannot tell."""
        if last_event_id <= self._position:
            return True
        allocated = await self._allocated()
        return None if allocated is None else last_event_id <= allocated

    def _resume_point(self, sub: Subscription, delivered: int) -> int:
        """Where the client resumes: once its queue is drained, it has seen (or filtered out)
        every row the hub fanned out, so past the hub's position; else its last delivered row."""
        if sub.queue.empty() and not sub.flushed:
            return max(delivered, self._position)
        return delivered

    async def events(self, sub: Subscription, last_event_id: int | None) -> AsyncIterator[str]:
        """The SSE frames of one client: the replay after `last_event_id` if any, then live
        events, keep-alive comments (with the resume point), and a final `fin` event."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_seconds
        position = sub.start
        # A Last-Event-ID that PostgreSQL, away, could neither confirm nor refute: the live rows up
        # to it are held until the hub's next reading (PostgreSQL back) tells; never a lower
        # resume point told meanwhile (the client had it from a replica ahead of this hub).
        unsure = 0
        # Every stream says where it is (an `id:` alone sets EventSource's last event id, firing
        # no event): one that had received no event yet, cut without its `fin` (a replica killed,
        # a proxy's reset), was reopened without Last-Event-ID, from the hub's position then, and
        # the alerts of the cut were never sent.
        yield f": flux des alertes\nretry: {RECONNECT_MS}\n" + (_resume_at(position) if last_event_id is None else "\n")
        if last_event_id is not None:
            replay = await self._replay(sub, last_event_id)
            if replay is None:
                yield _incomplete(
                    "reprise-interrompue",
                    last_event_id,
                    f"la reprise après Last-Event-ID {last_event_id} n'a pas pu être lue en {self.replay_timeout_ms} "
                    "ms (API_STATEMENT_TIMEOUT_MS) : relire l'état avec GET /alertes ; le flux reprend à partir de "
                    "maintenant",
                )
                # A row the journal handed out: the live ones up to it were delivered already. Not
                # past what it handed out: a stream skipping rows up to a bogus id would deliver nothing.
                handed_out = await self._handed_out(last_event_id)
                if handed_out:
                    position = max(last_event_id, sub.start)
                elif handed_out is None:
                    unsure = last_event_id
                yield _resume_at(max(position, unsure))
            elif last_event_id > replay.last_allocated:
                yield _incomplete(
                    "identifiant-inconnu",
                    last_event_id,
                    f"Last-Event-ID {last_event_id} est inconnu de ce journal : relire l'état avec "
                    "GET /alertes ; le flux reprend à partir de maintenant",
                )
                yield _resume_at(position)  # not the unknown id again at the next reconnection
            else:
                if last_event_id < replay.purged_through:
                    yield _incomplete(
                        "journal-purge",
                        last_event_id,
                        f"les événements jusqu'au n° {replay.purged_through} ont été purgés du "
                        f"journal : des changements après Last-Event-ID {last_event_id} peuvent "
                        "manquer ; relire l'état avec GET /alertes",
                        premier_conserve=replay.purged_through + 1,
                    )
                for seq, event_json in replay.rows[: self.replay_max]:
                    yield _alert_frame(seq, event_json)[1]
                    position = seq
                if len(replay.rows) > self.replay_max:
                    yield _fin(
                        "reprise-trop-longue",
                        f"reprise limitée à {self.replay_max} événements : se "
                        f"reconnecter avec Last-Event-ID: {position} pour la suite",
                        position,
                        CATCH_UP_RECONNECT_MS,
                    )
                    return
                position = max(last_event_id, sub.start)
        while True:
            left = deadline - loop.time()
            if left <= 0:
                at = max(self._resume_point(sub, position), unsure)
                yield _fin(
                    "duree-maximale",
                    f"durée maximale d'un flux atteinte ({self.max_seconds:g} s) : se "
                    f"reconnecter avec Last-Event-ID: {at} pour reprendre sans perte",
                    at,
                )
                return
            try:  # not wait_for: in Python 3.11 it may swallow the cancellation of a disconnection
                async with asyncio.timeout(min(self.keepalive_seconds, left)):
                    item = await sub.queue.get()
            except TimeoutError:
                if loop.time() < deadline:  # its queue empty: past every row the hub fanned out
                    yield ": keep-alive\n" + _resume_at(max(self._resume_point(sub, position), unsure))
                continue
            if item is _DROPPED:
                at = max(position, unsure)
                yield _fin(
                    "client-trop-lent",
                    f"client trop lent : plus de {self.queue_size} événements en "
                    f"attente ; se reconnecter avec Last-Event-ID: {at} pour reprendre sans perte",
                    at,
                    CATCH_UP_RECONNECT_MS,
                )
                return
            if item is _STOPPED:
                at = max(self._resume_point(sub, position), unsure)
                yield _fin(
                    "arret-du-service",
                    f"le service s'arrête : se reconnecter avec Last-Event-ID: {at} pour reprendre sans perte",
                    at,
                )
                return
            if unsure and item.seq <= unsure:  # the hub has read the journal again: PostgreSQL answers
                # Else a bogus id, or PostgreSQL unable to tell even now (out of connections, say):
                # its rows are delivered, at least once.
                if await self._handed_out(unsure):
                    position = max(position, unsure)
                unsure = 0
            if item.seq > position:  # else replayed already (Last-Event-ID ahead of this replica)
                yield item.frame
                position = item.seq
