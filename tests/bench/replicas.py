"""Replicas: N replicas of one service in one consumer group (same database schema), on the
same pre-filled topic as the ingress figure, against one replica in the same run.

Also how much of the services' transaction time is spent waiting on a lock, measured from
outside: pg_stat_activity sampled every 20 ms while they consume, counting the stage
database's backends inside a transaction, and of those the ones waiting on any lock (the keys'
row locks, the writer lock's shared mode; the outbox relay only tries its own, it never waits).
"""

import asyncio
from dataclasses import dataclass

import asyncpg

import ingress
from harness import Observer, Row, Runtime, replicated

SAMPLE_SECONDS = 0.02
GROWTH_TARGET = 1.2
LOCK_WAIT_TARGET = 0.05
SAMPLE = """
SELECT count(*) FILTER (WHERE xact_start IS NOT NULL),
       count(*) FILTER (WHERE xact_start IS NOT NULL AND wait_event_type = 'Lock')
FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
"""


@dataclass
class LockWaits:
    in_transaction: int = 0  # backend samples inside a transaction
    waiting: int = 0  # of those, waiting on a lock (a row's, an advisory one)

    @property
    def share(self) -> float:
        return self.waiting / self.in_transaction if self.in_transaction else 0.0

    async def sample(self, database_url: str, stop: asyncio.Event) -> None:
        conn = await asyncpg.connect(database_url)
        try:
            while not stop.is_set():
                row = await conn.fetchrow(SAMPLE)
                assert row is not None, "an aggregate answers one row"
                self.in_transaction += row[0]
                self.waiting += row[1]
                await asyncio.sleep(SAMPLE_SECONDS)
        finally:
            await conn.close()


async def measure(runtime: Runtime, service: str, events: int, count: int) -> tuple[ingress.Rate, LockWaits]:
    stage = await ingress.prefilled(runtime, service, events)
    topic = stage.topic(ingress.DECLARES[service])
    waits, stop = LockWaits(), asyncio.Event()
    async with replicated(stage, (service,), count) as replicas, Observer(stage) as observer:
        sampler = asyncio.create_task(waits.sample(stage.database_url, stop))
        pids = [pid for procs in replicas for pid in procs.pids()]
        try:
            rate = await ingress.consumption_rate(observer, stage.group(service), topic, events, pids)
        finally:
            stop.set()
            await sampler
    return rate, waits


async def figure(runtime: Runtime, service: str, events: int, replicas: int) -> list[Row]:
    print(f"\n== replicas: {service}, 1 then {replicas} replicas in one group, {events:,} events each")
    one_rate, one_waits = await measure(runtime, service, events, 1)
    one = one_rate.per_second
    print(f"  1 replica   {one:9,.0f} ev/s   lock wait {one_waits.share:6.1%} of transaction time   "
          f"CPU per event {one_rate.cpu_per_event * 1e6:.0f} µs   "
          f"machine busy {one_rate.machine_busy:.0%}")  # fmt: skip
    many_rate, many_waits = await measure(runtime, service, events, replicas)
    many = many_rate.per_second
    print(f"  {replicas} replicas  {many:9,.0f} ev/s   lock wait {many_waits.share:6.1%} of transaction time   "
          f"CPU per event {many_rate.cpu_per_event * 1e6:.0f} µs (all replicas)   "
          f"machine busy {many_rate.machine_busy:.0%}   ({many / one:.2f}x one replica)")  # fmt: skip
    return [
        Row(
            f"{replicas} replicas of {service}, one group",
            f"{many:,.0f} ev/s = {many / one:.2f}x",
            f"one replica {one:,.0f} ev/s (machine {one_rate.machine_busy:.0%} busy)",
            f">= {GROWTH_TARGET}x one replica",
            many / one >= GROWTH_TARGET,
        ),
        Row(
            f"lock wait, {replicas} replicas",
            f"{many_waits.share:.1%} of tx time",
            f"one replica {one_waits.share:.1%}",
            f"~0 (<= {LOCK_WAIT_TARGET:.0%})",
            many_waits.share <= LOCK_WAIT_TARGET,
        ),
    ]
