"""Live alert changes for dashboards that cannot speak Kafka (Server-Sent Events).

The handler that raises or resolves an alert also runs `pg_notify('alertes', event)` in its
transaction, so PostgreSQL delivers exactly what was committed, once, to every replica of
the API listening on the channel. Each SSE client has a bounded queue: a client that stops
reading is dropped rather than slowing everyone.
"""

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import asyncpg
import structlog

CHANNEL = "alertes"
QUEUE_SIZE = 1000
KEEPALIVE_SECONDS = 15

log = structlog.get_logger(__name__)


async def notify(conn: asyncpg.Connection, events: list[bytes]) -> None:
    """Inside the write transaction: delivered on commit, dropped on rollback."""
    if events:
        await conn.executemany("SELECT pg_notify($1, $2)", [(CHANNEL, e.decode()) for e in events])


class AlertHub:
    def __init__(self, database_url: str):
        self._url = database_url
        self._conn: asyncpg.Connection | None = None
        self._clients: set[asyncio.Queue] = set()

    async def start(self) -> None:
        self._conn = await asyncpg.connect(self._url)
        await self._conn.add_listener(CHANNEL, self._on_notify)

    async def stop(self) -> None:
        if self._conn is not None:
            await self._conn.close()
        for queue in self._clients:
            queue.put_nowait(None)

    def _on_notify(self, _conn, _pid, _channel, payload: str) -> None:
        for queue in list(self._clients):
            try:
                queue.put_nowait(payload)
            except asyncio.QueueFull:  # a client that stopped reading: end its stream
                self._clients.discard(queue)
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(None)
                log.warning("sse.client_dropped", reason="slow reader")

    async def events(self, keep: Callable[[dict], bool]) -> AsyncIterator[str]:
        """SSE frames of the alert events `keep` accepts, with keep-alive comments."""
        queue: asyncio.Queue = asyncio.Queue(QUEUE_SIZE)
        self._clients.add(queue)
        try:
            yield ": flux des alertes\n\n"
            while True:
                try:
                    payload = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if payload is None:
                    return
                event = json.loads(payload)
                if keep(event):
                    name = event["type"].split(".")[-2]
                    yield f"id: {event['id']}\nevent: {name}\ndata: {payload}\n\n"
        finally:
            self._clients.discard(queue)
