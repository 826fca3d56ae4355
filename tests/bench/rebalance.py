"""Rebalance: how long a consumer group stalls when one of its replicas is killed and restarted
(issue 10's "consumer rebalances after a kill stall a group"), with static membership
(CONSUMER_INSTANCE_ID per replica, as `./dev up` sets it) against dynamic membership, the
baseline, in the same run.

Two replicas of equipement in one group, the référentiel of U établissements loaded; lots sent
at RATE per second for DURATION seconds, lot i to établissement i mod U with its own quantity (so
each changes its profile), carrying its own trace context; KILL_AT seconds in, one replica is
SIGKILLed and restarted RESTART_AFTER seconds later, as `./dev up`'s supervisor does after its
first backoff. Per lot: from sent to its profile record read on equipement.profils (the profile
carries the lot's trace context: README, Tracing). The stall is the longest of these.
"""

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import contracts as c
from contracts.internal import PROFILS
from deploy.referentiel.generator import generate
from deploy.referentiel.publish import publish_etablissements
from harness import HEADERS, Observer, Row, Runtime, Tail, replicated
from latency import _cause, paced, percentile, trace_id
from records import lot

RATE, DURATION, KILL_AT, RESTART_AFTER, UAIS, SEED = 200, 25.0, 5.0, 1.0, 2000, 8
DRAIN_SECONDS = 120


@dataclass
class Stall:
    membership: str
    seconds: list[float]  # per lot answered, sent -> its profile read
    sent: int

    def describe(self) -> str:
        p50, worst = (percentile(self.seconds, q) * 1000 for q in (0.5, 1.0))
        late = sum(s > 1.0 for s in self.seconds)
        return f"max {worst / 1000:.1f} s (p50 {p50:,.0f} ms; {late:,} of {self.sent:,} lots over 1 s)"


async def measure(runtime: Runtime, membership: str) -> Stall:
    stage = await runtime.stage(f"rebalance-{membership}")
    etabs = [e for e in generate({"college": UAIS}, SEED) if e.ouvert]
    async with (
        replicated(stage, ("equipement",), 2, instances=membership == "static") as (first, second),
        Observer(stage) as observer,
    ):
        await publish_etablissements(stage.bootstrap, etabs, stage.topic(c.REFERENTIEL))
        await observer.wait_drained(first, DRAIN_SECONDS)
        topic, n = stage.topic(c.EQUIPEMENT), len(etabs)

        def record(i: int):
            traceparent = f"00-{trace_id(i)}-{i + 1:016x}-01".encode()
            e = etabs[i % n]  # a quantity of its own: each lot changes the profile
            return (
                topic,
                e.uai,
                lot(e, "17.1", datetime.now(UTC), quantity=1 + i),
                [*HEADERS, ("traceparent", traceparent)],
            )

        async def kill_and_restart() -> None:
            await asyncio.sleep(KILL_AT)
            await asyncio.to_thread(second.kill, "equipement")
            await asyncio.sleep(RESTART_AFTER)
            second.restart("equipement")

        async with Tail(stage, stage.topic(PROFILS)) as profiles:
            chaos = asyncio.create_task(kill_and_restart())
            sent, _ = await paced(stage.bootstrap, RATE, DURATION, record)
            await chaos
            await observer.wait_drained(first, DRAIN_SECONDS)
            await profiles.caught_up(observer)
    profiled: dict[int, float] = {}
    for at, r in profiles.records:
        profiled.setdefault(_cause(r), at)
    return Stall(membership, [profiled[i] - sent[i] for i in range(len(sent)) if i in profiled], len(sent))


async def figure(runtime: Runtime) -> list[Row]:
    print(
        f"\n== rebalance: 2 replicas of equipement, {RATE} lots/s for {DURATION:g} s, one SIGKILLed at "
        f"{KILL_AT:g} s and restarted {RESTART_AFTER:g} s later"
    )
    started = time.monotonic()
    dynamic = await measure(runtime, "dynamic")
    print(f"  dynamic membership (baseline)  {dynamic.describe()}")
    static = await measure(runtime, "static")
    print(f"  static membership              {static.describe()}   ({time.monotonic() - started:.0f} s in all)")
    worst = max(static.seconds, default=float("inf"))
    return [
        Row(
            "stall after a replica's SIGKILL and restart",
            f"static membership: {static.describe()}",
            f"dynamic: {dynamic.describe()}",
            "shorter than dynamic",
            len(static.seconds) == static.sent and worst < max(dynamic.seconds, default=float("inf")),
        )
    ]
