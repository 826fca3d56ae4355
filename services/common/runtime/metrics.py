"""`GET /metrics`: a service's figures in Prometheus' text format (prometheus-client), each
labelled with the service's name.

- counted as batches commit (Pipeline): events by outcome (`applied`, `stale`, `duplicate`,
  `refused` with the refusal's reason), and each batch's duration;
- read at each scrape, from the consumer: lag per partition (the partition's end, asked of
  Kafka at the scrape, minus the next offset the service will handle);
- read at each scrape, from the database: the outbox's backlog and the age of its oldest
  record, the records Kafka refused for good (`outbox_failed`), and what the service declares
  in its spec (`ServiceSpec.gauges`: ressources' open alerts by kind, its re-evaluations; read
  again once `METRICS_COUNTS_MAX_AGE_SECONDS` old);
- counted as the outbox relay publishes: records published, records set aside;
- FastStream's own consumer metrics (`faststream_*`), by its Prometheus middleware (the relay
  publishes with aiokafka directly, so its figures are the platform's, above).
"""

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from time import monotonic
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.common.storage import positions

CONTENT_TYPE = CONTENT_TYPE_LATEST
# No `<name>_created` series beside each counter and histogram (a process's start, which
# Prometheus does not use): they doubled the series scraped, and no table listed them.
disable_created_metrics()
T = TypeVar("T")

ENDS_RETRY_SECONDS = 30.0
"""After a reading of the partitions' ends that failed, the scrapes use the consumer's high
watermarks that long (Metrics.read_ends)."""
BATCH_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ANSWER_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""An HTTP answer's time to its status (a read's 5 s statement timeout, a batch's judgment and
write, a simulation's turn)."""


class HttpMetrics:
    """ASGI middleware: each answer of a service's HTTP API counted by its route (the path's
    template, `/etablissements/{uai}`: never a UAI or a query; `inconnue` for none), and its
    status, with the time to its status (a stream's, to its first byte: an SSE stream lasts up
    to SSE_MAX_SECONDS). An error no handler answered, as the 500 the server sends for it."""

    def __init__(self, app: Any, metrics: "Metrics") -> None:
        self.app = app
        self.answers = Counter(
            "feo_http_requests",
            "answers of the service's HTTP API, by route (its path's template) and status",
            ["service", "route", "status"],
            registry=metrics.registry,
        )
        self.seconds = Histogram(
            "feo_http_request_duration_seconds",
            "time from a request to its answer's status, by route",
            ["service", "route"],
            buckets=ANSWER_SECONDS,
            registry=metrics.registry,
        )
        self.service = metrics.service

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = monotonic()

        def count(status: int) -> None:
            route = getattr(scope.get("route"), "path", None) or "inconnue"
            self.answers.labels(self.service, route, str(status)).inc()
            self.seconds.labels(self.service, route).observe(monotonic() - started)

        await answered(self.app, scope, receive, send, count)


async def answered(app: Any, scope: dict, receive: Any, send: Any, count: Callable[[int], None]) -> None:
    """The ASGI `app` run on a request, `count` told its answer's status as the answer starts; an
    error no handler answered, as the 500 the server sends for it (HttpMetrics, the passerelle's
    CountRequests)."""
    started = False

    async def sending(message: dict) -> None:
        nonlocal started
        if message["type"] == "http.response.start":
            started = True
            count(message["status"])
        await send(message)

    try:
        await app(scope, receive, sending)
    except Exception:
        if not started:
            count(500)
        raise


@dataclass(frozen=True)
class Gauge:
    """One figure a service reads from its store for /metrics (ServiceSpec.gauges; Metrics.counts)."""

    name: str
    help: str
    labels: dict[str, str]
    value: float


Gauges = Callable[[Any], Awaitable[list[Gauge]]]
"""A service's own figures, read with its store (ServiceSpec.gauges)."""


class _Scraped(Collector):
    """What the last refresh read (database) and what the consumer says now (lag)."""

    def __init__(self, metrics: "Metrics"):
        self._metrics = metrics
        self.gauges: list[Gauge] = []

    def collect(self) -> Iterable[Metric]:
        families: dict[str, GaugeMetricFamily] = {}
        service = self._metrics.service
        for g in self.gauges:
            family = families.get(g.name)
            if family is None:
                family = families[g.name] = GaugeMetricFamily(g.name, g.help, labels=["service", *g.labels])
            family.add_metric([service, *g.labels.values()], g.value)
        lag = GaugeMetricFamily(
            "feo_consumer_lag",
            "records of a partition not yet handled: its end minus the next offset to handle",
            labels=["service", "topic", "partition"],
        )
        for (topic, partition), value in sorted(self._metrics.lag().items()):
            lag.add_metric([service, topic, str(partition)], value)
        assigned = GaugeMetricFamily(
            "feo_consumer_assigned_partitions",
            "partitions of a topic this process's consumer holds now (summed over the replicas: every partition "
            "of the topic; 0 everywhere: nothing reads it, its lag series gone with its partitions)",
            labels=["service", "topic"],
        )
        for topic, count in sorted(self._metrics.assigned().items()):
            assigned.add_metric([service, topic], count)
        failing_seconds = _seconds(
            "feo_batches_failing_seconds",
            "how long the batches have failed one after another (0: the latest committed)",
            service,
            self._metrics.failing,
        )
        unpositioned = _seconds(
            "feo_positions_unreadable_seconds",
            "how long the stored positions of the partitions assigned have been unreadable, the partitions "
            "paused meanwhile (0: read)",
            service,
            self._metrics.positions_failing,
        )
        held = GaugeMetricFamily(
            "feo_unreadable_batch_offset",
            "offset of the batch a partition waits at, which the broker served damaged (read again every minute)",
            labels=["service", "topic", "partition"],
        )
        for h in self._metrics.unreadable():
            held.add_metric([service, h["topic"], str(h["partition"])], h["offset"])
        own = []
        if (age := self._metrics.counts_age()) is not None:
            own = [
                GaugeMetricFamily(
                    "feo_counts_age_seconds",
                    "age of the service's own counts served (ressources: feo_alerts_open, feo_reevaluations_*), "
                    "counted again once METRICS_COUNTS_MAX_AGE_SECONDS old: growing past it, they cannot be "
                    "counted (metrics.counts_unread in the log)",
                    labels=["service"],
                )
            ]
            own[0].add_metric([service], round(age, 3))
        return [*families.values(), lag, assigned, failing_seconds, unpositioned, held, *own]


@dataclass(frozen=True)
class Failing:
    since: datetime
    at: float
    """monotonic() then."""
    error: str
    partitions: frozenset[tuple[str, int]] = frozenset()
    """The partitions of the batches that failed (topic, partition)."""
    latest: tuple[dict[str, str | int], ...] = ()
    """Where the latest batch that failed is (`_extent`): what an operator skips a record by."""
    said: bool = False
    """Whether PostgreSQL's being away was said for these failures (once: Pipeline.handle)."""

    def seconds(self) -> float:
        return round(monotonic() - self.at, 1)

    def only(self, partitions: frozenset[tuple[str, int]], **changes: Any) -> "Failing":
        """These failures, of these of their partitions only (`latest` too)."""
        latest = tuple(where for where in self.latest if (where["topic"], where["partition"]) in partitions)
        return replace(self, partitions=partitions, latest=latest, **changes)

    @staticmethod
    def again(before: "Failing | None", error: str, records: Sequence[ConsumerRecord] = ()) -> "Failing":
        """Failing once more, with this error, for a batch of these `records`: since the first of
        the failures in a row."""
        partitions = frozenset((r.topic, r.partition) for r in records)
        latest = tuple(_extent(records))
        if before is None:
            return Failing(datetime.now(UTC), monotonic(), error, partitions, latest)
        return replace(before, error=error, partitions=before.partitions | partitions, latest=latest)


def _extent(records: Iterable[ConsumerRecord]) -> list[dict[str, str | int]]:
    """Where a batch of `records` is: per partition, its topic, number, and first and last offsets."""
    spans: dict[tuple[str, int], tuple[int, int]] = {}
    for r in records:
        first, last = spans.get((r.topic, r.partition), (r.offset, r.offset))
        spans[(r.topic, r.partition)] = (min(first, r.offset), max(last, r.offset))
    return [
        {"topic": topic, "partition": partition, "first_offset": first, "last_offset": last}
        for (topic, partition), (first, last) in sorted(spans.items())
    ]


def _seconds(name: str, meaning: str, service: str, failing: Failing | None) -> GaugeMetricFamily:
    """How long something has failed in a row (0: it is not failing)."""
    gauge = GaugeMetricFamily(name, meaning, labels=["service"])
    gauge.add_metric([service], failing.seconds() if failing is not None else 0)
    return gauge


class Metrics:
    """A service's metrics, in a registry of its own (several services may share a process in tests)."""

    def __init__(self, service: str):
        self.service = service
        self.registry = CollectorRegistry()
        self._events = Counter(
            "feo_events",
            "events of the consumed topics, by outcome (applied, stale, duplicate, refused) and refusal reason",
            ["service", "outcome", "reason"],
            registry=self.registry,
        )
        self._revived = Counter(
            "feo_revived",
            "records refused uai-inconnu judged again once their établissement came, by outcome "
            "(applied, stale, duplicate, refused) and refusal reason",
            ["service", "outcome", "reason"],
            registry=self.registry,
        )
        self._batches = Histogram(
            "feo_batch_duration_seconds",
            "time to handle one batch, from its records received to its transaction committed",
            ["service"],
            buckets=BATCH_SECONDS,
            registry=self.registry,
        )
        self._relayed = Counter(
            "feo_outbox_relayed",
            "outbox rows the relay published to Kafka (outcome published) or set aside (outcome failed)",
            ["service", "outcome"],
            registry=self.registry,
        )
        self._failed = Counter(
            "feo_batches_failed",
            "batches whose transaction failed and which are taken again (PostgreSQL refusing writes: a full disk, "
            "a read-only server)",
            ["service"],
            registry=self.registry,
        )
        self._lost = Counter(
            "feo_records_lost",
            "records of a consumed topic deleted before this service read them (a position below the "
            "partition's log start: /health's positions_out_of_range says where)",
            ["service", "topic"],
            registry=self.registry,
        )
        self.failing: Failing | None = None
        """Since when batches fail one after another (None: the latest committed)."""
        self.positions_failing: Failing | None = None
        """Since when the stored positions of assigned partitions cannot be read, the partitions
        paused meanwhile (None: read at the latest assignment)."""
        self._scraped = _Scraped(self)
        self.registry.register(self._scraped)
        self._next: dict[tuple[str, int], int] = {}
        self._ends: dict[TopicPartition, int] = {}
        self._ends_after = 0.0  # monotonic(): Kafka not asked before then (a reading failed)
        self._counts_wanted_at: float | None = None
        self._consumer: Callable[[], AIOKafkaConsumer | None] = lambda: None
        self.topics: tuple[str, ...] = ()
        self.unreadable: Callable[[], list[dict[str, Any]]] = list
        self._counts: list[Gauge] = []
        self.kept_outbox: list[Gauge] = []
        """The outbox's figures as last read from the database (health.database_gauges)."""
        self._counted_at: float | None = None
        self._counting = asyncio.Lock()
        self._reading: dict[str, asyncio.Task] = {}

    def batch(
        self,
        applied: int,
        stale: int,
        duplicates: int,
        refused: dict[str, int],
        seconds: float,
        records: Sequence[ConsumerRecord] | None = None,
    ) -> Failing | None:
        """A committed batch's outcomes and duration, and its records `committed`."""
        self._outcomes(self._events, applied, stale, duplicates, refused)
        self._batches.labels(self.service).observe(seconds)
        return self.committed(records)

    def committed(self, records: Sequence[ConsumerRecord] | None = None) -> Failing | None:
        """These records' partitions (None: all) no longer fail; the failures in a row this ends,
        once none of their partitions is left (a partition stuck at a record the code fails on
        while the others commit fails on: each commit between ended them, said `batch.recovered`
        every second and set feo_batches_failing_seconds back to 0). A commit says PostgreSQL
        answers: its being away is said again when it next is."""
        failing = self.failing
        if failing is None:
            return None
        left = failing.partitions - {(r.topic, r.partition) for r in records} if records is not None else frozenset()
        if left:
            self.failing = failing.only(left, said=False)
            return None
        self.failing = None
        return failing

    def batch_failed(self, error: str, records: Sequence[ConsumerRecord] = ()) -> Failing:
        """A batch of `records` whose transaction failed (it is taken again): counted, and since
        when batches fail one after another, with the latest error's type, until one commits."""
        self._failed.labels(self.service).inc()
        self.failing = Failing.again(self.failing, error, records)
        return self.failing

    def said_away(self) -> None:
        """That PostgreSQL is away was said for the batches failing now."""
        if self.failing is not None:
            self.failing = replace(self.failing, said=True)

    def reassigned(self, assigned: Iterable[TopicPartition]) -> None:
        """The consumer's partitions assigned again: batches that failed here, their partitions
        now another replica's, are that one's to commit or fail, this one idle meanwhile (its
        gauge grew for good, /health said batches failing). Kept while one of them is still here
        (each replica's partitions are assigned again at every rebalance: a rollout's)."""
        held = {(tp.topic, tp.partition) for tp in assigned}
        if self.failing is not None:
            kept = self.failing.partitions & held
            self.failing = self.failing.only(kept) if kept else None
        # Where this replica stopped on a partition it gave away is not where it resumes once it
        # is back (another replica went on meanwhile): no lag until `resumed` says.
        self._next = {key: offset for key, offset in self._next.items() if key in held}

    def positions_unreadable(self, error: str) -> None:
        """The stored positions could not be read at an assignment (taken again): since when."""
        self.positions_failing = Failing.again(self.positions_failing, error)

    def positions_read(self) -> None:
        self.positions_failing = None

    def records_lost(self, topic: str, count: int) -> None:
        """A position outside its partition's log (consumer.HorsLimites): `count` records gone."""
        self._lost.labels(self.service, topic).inc(count)

    def revived(self, applied: int, stale: int, duplicates: int, refused: dict[str, int]) -> None:
        """A revival's outcomes (Pipeline.revive): apart from `feo_events`, which counted each
        of these records once already, refused."""
        self._outcomes(self._revived, applied, stale, duplicates, refused)

    def _outcomes(self, counter: Counter, applied: int, stale: int, duplicates: int, refused: dict[str, int]) -> None:
        for outcome, count in (("applied", applied), ("stale", stale), ("duplicate", duplicates)):
            if count:
                counter.labels(self.service, outcome, "").inc(count)
        for reason, count in refused.items():
            counter.labels(self.service, "refused", reason).inc(count)

    def published(self, done: int, failed: int) -> None:
        """One relay round: records published, records Kafka refused for good (outbox_failed)."""
        if done:
            self._relayed.labels(self.service, "published").inc(done)
        if failed:
            self._relayed.labels(self.service, "failed").inc(failed)

    def refused(self, reason: str) -> None:
        self._events.labels(self.service, "refused", reason).inc()

    def handled(self, records: Sequence[ConsumerRecord]) -> None:
        """These records are committed: each partition's next offset to handle is past them."""
        for key, end in positions.ends(records).items():
            if self._next.get(key, -1) < end:
                self._next[key] = end

    def resumed(self, positions: dict[TopicPartition, int]) -> None:
        """Partitions assigned, each to resume at its stored position."""
        for tp, offset in positions.items():
            self._next[(tp.topic, tp.partition)] = offset

    def watch(
        self,
        consumer: Callable[[], AIOKafkaConsumer | None],
        unreadable: Callable[[], list[dict[str, Any]]] = list,
        topics: Sequence[str] = (),
    ) -> None:
        """Where the consumer is found once started (FastStream creates it), the partitions it
        holds at a batch it could not read (consumer.Unreadable), and the topics it reads."""
        self._consumer, self.unreadable, self.topics = consumer, unreadable, tuple(topics)

    def assigned(self) -> dict[str, int]:
        """Per topic the service reads, how many of its partitions the consumer holds now (0
        for each while it holds none: not running, or its group gave them to other replicas)."""
        consumer = self._consumer()
        held: dict[str, int] = dict.fromkeys(self.topics, 0)
        for tp in consumer.assignment() if consumer is not None else ():
            held[tp.topic] = held.get(tp.topic, 0) + 1
        return held

    async def read_ends(self, within: float) -> None:
        """Each assigned partition's end, asked of Kafka for the scrape that follows. The high
        watermark the consumer keeps moves only when it fetches the partition: not while the
        partition is paused (its position unreadable, a batch held unreadable), nor while a batch
        that fails again and again holds the records fetched after it, when records pile up.
        Kafka away or slow: the consumer's high watermarks alone (/health says Kafka away), and
        Kafka not asked again for ENDS_RETRY_SECONDS (each try is aiokafka's connection errors
        in the log, beside the consumer's own)."""
        consumer = self._consumer()
        ends: dict[TopicPartition, int] = {}
        if consumer is None or consumer._closed:  # stopping: a reading would open a connection left open
            self._ends = ends
            return
        assigned = sorted(consumer.assignment())
        if assigned and monotonic() >= self._ends_after:
            # aiokafka's own bound (the consumer's request_timeout_ms, 40 s): its tries went on
            # past the scrape's. At most one reading at a time, shared by the scrapes.
            fetcher = consumer._fetcher
            read = lambda: fetcher.end_offsets(assigned, int(within * 1000))  # noqa: E731
            try:
                ends = await self.shared("ends", read, within=within)
            except Exception:  # the scrape answers with what the consumer knows
                self._ends_after = monotonic() + ENDS_RETRY_SECONDS
        self._ends = ends  # after the wait: another scrape's reading never empties this one's

    def lag(self) -> dict[tuple[str, int], int]:
        """Per assigned partition whose end and position are known."""
        consumer = self._consumer()
        if consumer is None:
            return {}
        out = {}
        for tp in consumer.assignment():
            ends = [e for e in (self._ends.get(tp), consumer.highwater(tp)) if e is not None]
            position = self._next.get((tp.topic, tp.partition))
            if ends and position is not None:
                out[(tp.topic, tp.partition)] = max(0, max(ends) - position)
        return out

    async def counts(self, read: Callable[[], Awaitable[list[Gauge]]], max_age: float) -> list[Gauge]:
        """The service's own figures (ServiceSpec.gauges), read again only once those kept are
        `max_age` seconds old: ressources' open alerts by kind are a count over every open alert
        (at 900,000 alerts, half of them open, a quarter of a second of two PostgreSQL workers),
        which every scrape of every Prometheus would otherwise pay."""
        async with self._counting:  # two scrapes at once: one count, both served it
            if self._counted_at is None or monotonic() - self._counted_at >= max_age:
                self._counts = await read()
                self._counted_at = monotonic()
            return self._counts

    def want_counts(self) -> None:
        """The service has counts of its own (ServiceSpec.gauges): their age is told from now,
        counted or not (never counted, it grows from the start)."""
        self._counts_wanted_at = self._counts_wanted_at or monotonic()

    def counts_age(self) -> float | None:
        """Seconds since the counts served were read, else since they were first wanted (None: the
        service has none)."""
        since = self._counted_at or self._counts_wanted_at
        return None if since is None else monotonic() - since

    @property
    def kept_counts(self) -> list[Gauge]:
        """The service's own figures as last counted (none before a first count)."""
        return self._counts

    async def shared(self, what: str, read: Callable[[], Coroutine[Any, Any, T]], within: float) -> T:
        """`read()`'s result, for this caller and every other that asks for `what` while it runs:
        /health and /metrics answer anyone who reaches the port, and however many requests come
        at once, each kind reads the database once at a time (a connection of the service's
        pool), the others left to its transactions. Each caller waits `within` seconds at most
        (TimeoutError): a read stuck on a database that stopped answering mid-query (asyncpg then
        waits for its cancellation without a bound) stays the one shared. A caller that goes
        away does not cancel it."""
        task = self._reading.get(what)
        if task is None or task.done():
            task = self._reading[what] = asyncio.create_task(read(), name=f"{self.service}-{what}")
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved, whoever waits
        async with asyncio.timeout(within):
            return await asyncio.shield(task)

    async def refresh(self, read: Callable[[], Awaitable[list[Gauge]]]) -> None:
        """The figures read from the database, kept for the scrape that follows."""
        self._scraped.gauges = await read()

    def render(self) -> bytes:
        return generate_latest(self.registry)
