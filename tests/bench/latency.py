"""Latency: ingress -> alert at a steady rate, the three services running (issue 8's third figure).

Setup, per rate on a fresh stage: U open collèges, each with one lot of tablets a resource
accepts (iPadOS 17.1, the resource wants >= 15), the resource, a subscription from each. Then
a collectivité's producer sends, at the rate, lots that flip one collège after another
between iPadOS 12.5 and 17.1: each flip raises or resolves an `equipement-incompatible` alert.
Each lot carries its own W3C trace context, which equipement's profile and ressources' alert
carry on (README, Tracing), so a dashboard's consumer of alertes.compatibilite.v1 knows which
lot caused each alert.

A lot's latency is from the moment it was sent to the first alert of its collège caused by
it or by a later lot of that collège: when two flips of one collège meet in one batch (a
backlog longer than U / rate seconds), the second's alert is the platform's answer to both.
The measure starts after a ramp-up: the same traffic for `ramp` seconds, whose lots are
reported apart. A freshly started platform's first alerts wait longer (up to about a second:
the ressources relay's first rounds to the alert topics took 0.3-0.65 s for the broker to
acknowledge), which is its start, not its steady rate.
Baseline, on the same broker at the same rate just before: a plain record's produce -> consume
latency. Keeps up: the backlog (consumer lags, outboxes) is drained within KEEP_UP_SECONDS of
the producer stopping, and the lots of the last quarter of the run waited at most PACE_GROWTH
times as long as those of the first, or at most PACE_SLACK longer (p50): a platform falling
behind drains a short run's backlog soon enough, but its latency grows all along, by seconds
over a run; at tens of milliseconds, two quarters' p50 differ by tens of milliseconds either
way with the machine's load (35 -> 58 ms, 69 -> 44 ms at 200 ev/s, each run draining in 0.7 s).
Where the time goes, per lot answered by its own alert: from the lot sent to its profile record
read on equipement.profils (equipement's hop, its relay included), then to its alert read
(ressources' hop), each read by the bench as a dashboard would.
"""

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer

import contracts as c
from contracts import Etablissement
from contracts.internal import PROFILS
from deploy.local.processes import ServiceProcesses
from deploy.referentiel.generator import generate
from deploy.referentiel.publish import publish_etablissements
from deploy.topology import TopicSpec
from harness import FLOW, HEADERS, Observer, Row, Runtime, Stage, Tail, jit_cpu_seconds, produce, running
from records import abonnement, lot, ressource
from services.common.messaging.connection import kafka_options

RESOURCE = "ark:/67375/bench-latence"
COMPATIBLE, INCOMPATIBLE = "17.1", "12.5"  # the resource wants iPadOS >= 15
SEED = 8
PLAIN = TopicSpec("bench.plain", 6)
P99_TARGETS = {200: 0.150, 1000: 0.500}  # seconds; at other rates the target is to keep up
KEEP_UP_SECONDS = 5.0
PACE_GROWTH = 1.5  # keeping up: the last quarter's p50 at most this many times the first's,
PACE_SLACK = 0.100  # or at most this many seconds longer
WARM_UP_ROUND = 10.0  # seconds of traffic between two looks at the broker's JIT compilers
JIT_SETTLED = 0.05  # of a core: below it over a round, the compilers are done with this traffic
SETUP_TIMEOUT = 600
Record = tuple[str, str, bytes, list[tuple[str, bytes]]]  # topic, key, value, headers


async def prepare(stage: Stage, procs: ServiceProcesses, uais: int) -> list[Etablissement]:
    """The référentiel first (a lot about a UAI not yet known is refused), then the lots, then
    the resource and its subscriptions (evaluated on known lots: no alert before the measure)."""
    etabs = [e for e in generate({"college": uais}, SEED) if e.ouvert]
    async with Observer(stage) as observer:
        await publish_etablissements(stage.bootstrap, etabs, stage.topic(c.REFERENTIEL))
        await observer.wait_drained(procs, SETUP_TIMEOUT)
        await produce(stage.bootstrap, stage.topic(c.EQUIPEMENT), [(e.uai, lot(e, COMPATIBLE)) for e in etabs])
        await observer.wait_drained(procs, SETUP_TIMEOUT)
        catalogue = [ressource(RESOURCE, "15"), *(abonnement(RESOURCE, e) for e in etabs)]
        await produce(stage.bootstrap, stage.topic(c.CATALOGUE), catalogue)
        await observer.wait_drained(procs, SETUP_TIMEOUT)
    return etabs


async def paced(
    bootstrap: str, rate: int, duration: float, record: Callable[[int], Record]
) -> tuple[list[float], float]:
    """Sends record(0), record(1)… at `rate` per second for `duration`; the moment each was
    handed to the producer, and the rate achieved (the producer may fall short of the target)."""
    producer = AIOKafkaProducer(**kafka_options(bootstrap), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent, pending = [], []
        start = time.monotonic()
        for i in range(round(rate * duration)):
            if (delay := start + i / rate - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            topic, key, value, headers = record(i)
            sent.append(time.monotonic())
            pending.append(await producer.send(topic, value, key=key.encode(), headers=headers))
        await asyncio.gather(*pending)
        return sent, len(sent) / max(sent[-1] - sent[0], 1e-9)
    finally:
        await producer.stop()


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank); infinite when nothing was measured."""
    if not values:
        return math.inf
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class Latencies:
    seconds: list[float]
    sent: int
    achieved_rate: float
    own_alerts: int = 0  # lots whose own alert arrived (the rest were answered by a later lot's)
    unanswered: int = 0  # lots no alert answered (a backlog left, or flips that cancelled out in one batch)
    drained_after: float | None = None  # seconds after the producer stopped; None: not within the timeout
    hops: list[tuple[float, float]] = field(default_factory=list)
    """Per lot with its own alert: lot sent -> its profile read (equipement), -> its alert read (ressources)."""
    by_lot: list[tuple[int, float]] = field(default_factory=list)
    """(lot's index in send order, its latency) of each answered lot."""

    def trend(self) -> tuple[float, float]:
        """The p50 of the first and of the last quarter of the lots sent: close when the platform
        keeps pace; growing when it falls behind, even if its backlog drains soon after a short run."""
        quarter = self.sent / 4
        first = [s for i, s in self.by_lot if i < quarter]
        last = [s for i, s in self.by_lot if i >= self.sent - quarter]
        return percentile(first, 0.5), percentile(last, 0.5)

    def hops_described(self) -> str:
        if not self.hops:
            return "-"
        ms = [[percentile([h[k] for h in self.hops], q) * 1000 for q in (0.5, 0.99)] for k in (0, 1)]
        return (
            f"lot -> profile p50 {ms[0][0]:,.0f} ms p99 {ms[0][1]:,.0f} ms; "
            f"profile -> alert p50 {ms[1][0]:,.0f} ms p99 {ms[1][1]:,.0f} ms"
        )

    def describe(self) -> str:
        p50, p99, worst = (percentile(self.seconds, q) * 1000 for q in (0.5, 0.99, 1.0))
        return f"p50 {p50:7,.0f} ms   p99 {p99:7,.0f} ms   max {worst:7,.0f} ms"


async def plain(stage: Stage, rate: int, duration: float) -> Latencies:
    """A plain record's produce -> consume latency, on the stage's broker at `rate`."""
    topic = stage.topic(PLAIN.name)
    async with Tail(stage, topic) as tail, Observer(stage) as observer:
        sent, achieved = await paced(stage.bootstrap, rate, duration, lambda i: (topic, str(i), str(i).encode(), []))
        await tail.caught_up(observer)
    return Latencies([at - sent[int(r.value)] for at, r in tail.records], len(sent), achieved)


def trace_id(i: int) -> str:
    return f"{i + 1:032x}"


def flips(stage: Stage, etabs: list[Etablissement], first: int = 0) -> Callable[[int], Record]:
    """The i-th lot sent: lot `first + i` of the sequence that flips each collège in turn, from
    the compatible lot `prepare` gave it; its trace context names `i`."""
    topic, n = stage.topic(c.EQUIPEMENT), len(etabs)

    def flip(i: int) -> Record:
        e, version = etabs[(first + i) % n], INCOMPATIBLE if ((first + i) // n) % 2 == 0 else COMPATIBLE
        traceparent = f"00-{trace_id(i)}-{i + 1:016x}-01".encode()
        return topic, e.uai, lot(e, version, datetime.now(UTC)), [*HEADERS, ("traceparent", traceparent)]

    return flip


async def warm_up(runtime: Runtime, rate: int, uais: int, limit: float, drain: float) -> None:
    """A JVM compiles a program's hot paths during its first minutes of traffic: the broker's
    JIT compiler threads then take a third to a half of a core of this 2-core machine, which
    the measure would pay for (a production broker has long been through it). So before the
    first measure, the same workload at the first rate on a stage of its own, in rounds of
    WARM_UP_ROUND seconds, until a round leaves the compilers under JIT_SETTLED of a core, or
    `limit` seconds have been played."""
    if limit <= 0 or runtime.kafka.pid is None:
        return
    stage = await runtime.stage("latency-warm-up")
    async with running(stage, FLOW) as procs:
        etabs = await prepare(stage, procs, uais)
        played, share = 0.0, 1.0
        while played < limit and share >= JIT_SETTLED:
            seconds = min(WARM_UP_ROUND, limit - played)
            jit = _jit_share(runtime)
            await paced(stage.bootstrap, rate, seconds, flips(stage, etabs, round(played * rate)))
            share, played = jit(), played + seconds
        async with Observer(stage) as observer:
            await observer.wait_drained(procs, drain)
    settled = "settled" if share < JIT_SETTLED else f"not settled within --warm-up {limit:g} s"
    print(f"  warm-up: {played:g} s of lots at {rate:,} ev/s, not measured; the broker's JIT compilers "
          f"{settled} ({share:.1%} of a core over the last round)")  # fmt: skip


async def platform(
    stage: Stage,
    procs: ServiceProcesses,
    etabs: list[Etablissement],
    rate: int,
    duration: float,
    drain: float,
    ramp: float,
) -> tuple[Latencies, Latencies]:
    """The lots of the first `ramp` seconds (the ramp-up), then those of the `duration` seconds
    after them (the measure), all sent at `rate` in one go."""
    flip, n = flips(stage, etabs), len(etabs)
    async with (
        Tail(stage, stage.topic(c.ALERTES)) as tail,
        Tail(stage, stage.topic(PROFILS)) as profiles,
        Observer(stage) as observer,
    ):
        sent, achieved = await paced(stage.bootstrap, rate, ramp + duration, flip)
        try:
            drained_after: float | None = await observer.wait_drained(procs, drain)
        except TimeoutError:
            drained_after = None
        await tail.caught_up(observer)
        await profiles.caught_up(observer)
    # The alerts of each collège, by the index of the lot that caused them.
    answers: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for at, record in tail.records:
        cause = _cause(record)
        if 0 <= cause < len(sent):
            answers[cause % n].append((cause, at))
    profiled: dict[int, float] = {}  # lot -> when its profile record was read (equipement's answer)
    for at, record in profiles.records:
        profiled.setdefault(_cause(record), at)
    if tail.records and not answers:
        raise RuntimeError(
            f"none of the {len(tail.records):,} alerts carries the trace context of a lot sent: the bench "
            "matches alerts to lots by it (traceparent header, README: Tracing)"
        )
    measured_from = round(ramp * rate)  # the first lot of the measure
    result = Latencies([], len(sent) - measured_from, achieved, drained_after=drained_after)
    ramp_up = Latencies([], measured_from, achieved, drained_after=drained_after)
    for first in range(n):
        alerts = iter(sorted(answers[first]))
        answer = next(alerts, None)
        for i in range(first, len(sent), n):  # this collège's lots, in order
            while answer is not None and answer[0] < i:
                answer = next(alerts, None)
            part, index = (result, i - measured_from) if i >= measured_from else (ramp_up, i)
            if answer is None:
                part.unanswered += 1
                if drained_after is None:
                    part.seconds.append(math.inf)  # still in the backlog: later than anything measured
                continue
            part.own_alerts += answer[0] == i
            part.seconds.append(answer[1] - sent[i])
            part.by_lot.append((index, answer[1] - sent[i]))
            if answer[0] == i and i in profiled:
                part.hops.append((profiled[i] - sent[i], answer[1] - profiled[i]))
    return ramp_up, result


def _cause(record) -> int:
    """The index of the lot whose trace context a record carries (-1: none)."""
    traceparent = dict(record.headers).get("traceparent", b"").decode()
    return int(traceparent.split("-")[1], 16) - 1 if traceparent.count("-") == 3 else -1


async def figure(
    runtime: Runtime, rates: list[int], duration: float, uais: int, drain: float, warm: float, ramp: float
) -> list[Row]:
    print(
        f"\n== latency: ingress -> alert, {duration:g} s at each rate after {ramp:g} s of ramp-up, "
        f"{uais:,} collèges flipped in turn"
    )
    await warm_up(runtime, rates[0], uais, warm, drain)
    rows = []
    for rate in rates:
        stage = await runtime.stage(f"latency-{rate}", extra_topics=[PLAIN])
        async with running(stage, FLOW) as procs:  # partners on Kafka: no passerelle
            etabs = await prepare(stage, procs, uais)
            baseline = await plain(stage, rate, duration)
            jit_since = _jit_share(runtime)
            ramp_up, measured = await platform(stage, procs, etabs, rate, duration, drain, ramp)
            jit = jit_since()
        drained = "not drained" if measured.drained_after is None else f"drained {measured.drained_after:.1f} s after"
        print(f"  {rate:5,} ev/s  plain record   {baseline.describe()}   ({baseline.achieved_rate:,.0f} ev/s sent)")
        print(f"  {rate:5,} ev/s  lot -> alert   {measured.describe()}   ({measured.achieved_rate:,.0f} ev/s sent; "
              f"{measured.own_alerts:,} of {measured.sent:,} lots had their own alert, {measured.unanswered:,} none; "
              f"backlog {drained})")  # fmt: skip
        print(f"  {rate:5,} ev/s  where: {measured.hops_described()}; the broker's JIT compilers {jit:.0%} of a core")
        if ramp_up.sent:
            print(f"  {rate:5,} ev/s  ramp-up, not in the figure: {ramp_up.describe()}; {ramp_up.hops_described()}")
        first, last = measured.trend()
        print(f"  {rate:5,} ev/s  over the run: p50 of the first quarter of lots {_ms(first)}, of the last {_ms(last)}")
        p99, base = percentile(measured.seconds, 0.99), percentile(baseline.seconds, 0.99)
        drains = measured.drained_after is not None and measured.drained_after <= KEEP_UP_SECONDS
        keeps_up = drains and (last <= PACE_GROWTH * first or last - first <= PACE_SLACK)
        if rate in P99_TARGETS:
            target, ok = f"<= {P99_TARGETS[rate] * 1000:.0f} ms, keeps up", keeps_up and p99 <= P99_TARGETS[rate]
        else:
            target = (
                f"keeps up (drained <= {KEEP_UP_SECONDS:g} s, p50 at most x{PACE_GROWTH:g} "
                f"or +{PACE_SLACK * 1000:.0f} ms over the run)"
            )
            ok = keeps_up
        rows.append(
            Row(
                f"ingress -> alert p99 at {rate:,} ev/s",
                f"{_ms(p99)}, {drained}, p50 {_ms(first)} -> {_ms(last)}",
                f"plain record {_ms(base)}",
                target,
                ok,
            )
        )
    return rows


def _jit_share(runtime: Runtime) -> Callable[[], float]:
    """From now until it is called, the share of a core the broker's JIT compilers used."""
    pid, since = runtime.kafka.pid, time.monotonic()
    before = jit_cpu_seconds(pid) if pid else 0.0
    return lambda: (jit_cpu_seconds(pid) - before) / max(time.monotonic() - since, 1e-3) if pid else 0.0


def _ms(seconds: float) -> str:
    return "> drain timeout" if math.isinf(seconds) else f"{seconds * 1000:,.0f} ms"
