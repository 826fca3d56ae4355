"""The service's metrics: what a batch, a refusal and the consumer make of them (no broker here;
tests/integration/test_metrics.py scrapes a running service)."""

import asyncio

from aiokafka import ConsumerRecord, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from services.common.runtime import metrics as metrics_module
from services.common.runtime.metrics import Gauge, Metrics


def scraped(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }


def record(topic: str, partition: int, offset: int) -> ConsumerRecord:
    return ConsumerRecord(topic, partition, offset, 0, 0, None, b"{}", None, 0, 2, [])


class Consumer:
    """What the metrics read of aiokafka's consumer: its assignment, its high watermarks (moved
    as it fetches) and the partitions' ends as Kafka says them now (`ends`: None, Kafka away)."""

    def __init__(self, highwater: dict[TopicPartition, int | None], ends: dict[TopicPartition, int] | None = None):
        self._highwater, self.ends, self.asked = highwater, ends, 0
        self._closed = False
        self._fetcher = self  # aiokafka's, whose end_offsets takes the caller's bound

    async def end_offsets(self, partitions: list[TopicPartition], timeout_ms: int) -> dict[TopicPartition, int]:
        assert timeout_ms == 1000, "bounded by the scrape's wait"
        self.asked += 1
        if self.ends is None:
            raise ConnectionError("Kafka away")
        return {tp: self.ends[tp] for tp in partitions}

    def assignment(self) -> set[TopicPartition]:
        return set(self._highwater)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self._highwater[tp]


def test_batches_count_each_outcome_and_reason_and_their_duration():
    metrics = Metrics("equipement")
    metrics.batch(applied=3, stale=1, duplicates=0, refused={"json-invalide": 2}, seconds=0.02)
    metrics.batch(applied=1, stale=0, duplicates=2, refused={"uai-inconnu": 1}, seconds=0.3)
    metrics.refused("donnees-invalides")  # a record PostgreSQL refused, isolated
    got = scraped(metrics)
    events = {labels: v for (name, labels), v in got.items() if name == "feo_events_total"}
    assert events == {
        (("outcome", "applied"), ("reason", ""), ("service", "equipement")): 4,
        (("outcome", "stale"), ("reason", ""), ("service", "equipement")): 1,
        (("outcome", "duplicate"), ("reason", ""), ("service", "equipement")): 2,
        (("outcome", "refused"), ("reason", "json-invalide"), ("service", "equipement")): 2,
        (("outcome", "refused"), ("reason", "uai-inconnu"), ("service", "equipement")): 1,
        (("outcome", "refused"), ("reason", "donnees-invalides"), ("service", "equipement")): 1,
    }
    assert got[("feo_batch_duration_seconds_count", (("service", "equipement"),))] == 2
    assert got[("feo_batch_duration_seconds_sum", (("service", "equipement"),))] == 0.32
    assert got[("feo_batch_duration_seconds_bucket", (("le", "0.025"), ("service", "equipement")))] == 1


def test_lag_is_the_high_watermark_past_the_next_offset_to_handle():
    metrics = Metrics("formation")
    a, b, c = TopicPartition("t", 0), TopicPartition("t", 1), TopicPartition("u", 0)
    metrics.watch(lambda: Consumer({a: 10, b: 7, c: None}))
    assert metrics.lag() == {}, "no position known before the assignment"
    metrics.resumed({a: 4, b: 7, c: 0})
    assert metrics.lag() == {("t", 0): 6, ("t", 1): 0}, "a partition not fetched yet has no high watermark"
    metrics.handled([record("t", 0, 4), record("t", 0, 8), record("t", 0, 5)])
    assert metrics.lag() == {("t", 0): 1, ("t", 1): 0}
    lags = {labels: v for (name, labels), v in scraped(metrics).items() if name == "feo_consumer_lag"}
    assert lags == {
        (("partition", "0"), ("service", "formation"), ("topic", "t")): 1,
        (("partition", "1"), ("service", "formation"), ("topic", "t")): 0,
    }


async def test_lag_counts_to_the_end_kafka_gives_at_the_scrape_past_a_high_watermark_not_fetched(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(metrics_module, "monotonic", lambda: now[0])
    metrics = Metrics("formation")
    a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    consumer = Consumer({a: 10, b: None}, ends={a: 25, b: 3})
    metrics.watch(lambda: consumer)
    metrics.resumed({a: 4, b: 0})
    await metrics.read_ends(within=1)
    assert metrics.lag() == {("t", 0): 21, ("t", 1): 3}, "records not fetched (paused, or behind a batch) count"
    consumer.ends = None
    await metrics.read_ends(within=1)
    assert metrics.lag() == {("t", 0): 6}, "Kafka away: the high watermarks alone, never the ends read before"
    consumer.ends = {a: 30, b: 3}
    now[0] += metrics_module.ENDS_RETRY_SECONDS - 1
    await metrics.read_ends(within=1)
    assert (consumer.asked, metrics.lag()) == (2, {("t", 0): 6}), "not asked again so soon (its tries: errors)"
    now[0] += 1
    await metrics.read_ends(within=1)
    assert (consumer.asked, metrics.lag()) == (3, {("t", 0): 26, ("t", 1): 3})
    consumer._closed = True  # stopping: its client would open a connection nothing closes
    await metrics.read_ends(within=1)
    assert (consumer.asked, metrics.lag()) == (3, {("t", 0): 6})


async def test_a_scrape_s_ends_are_not_emptied_by_another_scrape_reading_them_again():
    metrics = Metrics("formation")
    a = TopicPartition("t", 0)
    consumer = Consumer({a: 10}, ends={a: 100})
    metrics.watch(lambda: consumer)
    metrics.resumed({a: 0})
    await metrics.read_ends(within=1)
    other = asyncio.create_task(metrics.read_ends(within=1))  # a second scrape, its reading under way
    await asyncio.sleep(0)
    assert metrics.lag() == {("t", 0): 100}, "the first scrape renders what it read"
    await other


def test_the_counts_age_grows_from_the_start_until_a_first_count(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(metrics_module, "monotonic", lambda: now[0])
    metrics = Metrics("ressources")
    assert metrics.counts_age() is None, "no counts of its own: no age"
    metrics.want_counts()
    now[0] += 400  # every count failed since the start
    assert metrics.counts_age() == 400
    assert scraped(metrics)[("feo_counts_age_seconds", (("service", "ressources"),))] == 400


def test_a_partition_given_away_has_no_lag_until_resumed_where_its_positions_say():
    metrics = Metrics("formation")
    a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    metrics.watch(lambda: Consumer({a: 10, b: 10}))
    metrics.resumed({a: 4, b: 2})
    metrics.reassigned({a})  # b went to another replica, which handled it meanwhile, then came back
    assert metrics.lag() == {("t", 0): 6}, "b's old position would say 8 records wait"
    metrics.resumed({b: 9})
    assert metrics.lag() == {("t", 0): 6, ("t", 1): 1}


def test_no_consumer_yet_no_lag():
    assert Metrics("ressources").lag() == {}


async def test_the_figures_read_at_a_scrape_are_served_with_the_service_label():
    metrics = Metrics("ressources")

    async def read() -> list[Gauge]:
        return [
            Gauge("feo_alerts_open", "open alerts, by kind", {"kind": "equipement-incompatible"}, 3),
            Gauge("feo_alerts_open", "open alerts, by kind", {"kind": "formation-insuffisante"}, 0),
            Gauge("feo_outbox_pending", "records in the outbox", {}, 12),
        ]

    await metrics.refresh(read)
    got = scraped(metrics)
    assert got[("feo_alerts_open", (("kind", "equipement-incompatible"), ("service", "ressources")))] == 3
    assert got[("feo_alerts_open", (("kind", "formation-insuffisante"), ("service", "ressources")))] == 0
    assert got[("feo_outbox_pending", (("service", "ressources"),))] == 12


def test_relay_rounds_count_what_went_out_and_what_was_set_aside():
    metrics = Metrics("formation")
    metrics.published(500, 0)
    metrics.published(12, 1)
    metrics.published(0, 0)
    relayed = {labels: v for (name, labels), v in scraped(metrics).items() if name == "feo_outbox_relayed_total"}
    assert relayed == {
        (("outcome", "published"), ("service", "formation")): 512,
        (("outcome", "failed"), ("service", "formation")): 1,
    }


async def test_the_service_s_own_counts_are_read_again_only_once_those_kept_are_old_enough(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(metrics_module, "monotonic", lambda: now[0])
    metrics, reads = Metrics("ressources"), []

    async def read() -> list[Gauge]:
        reads.append(now[0])
        return [Gauge("feo_alerts_open", "open alerts, by kind", {"kind": "ent-indisponible"}, len(reads))]

    first = await metrics.counts(read, 30)
    now[0] += 29.9
    assert await metrics.counts(read, 30) == first and reads == [1000.0]  # kept
    now[0] += 0.1
    assert (await metrics.counts(read, 30))[0].value == 2  # 30 s old: read again
    assert (await metrics.counts(read, 0))[0].value == 3  # 0: at every scrape
    assert (await metrics.counts(read, 0))[0].value == 4


async def test_two_scrapes_at_once_share_one_count():
    metrics, reads, go = Metrics("ressources"), [], asyncio.Event()

    async def read() -> list[Gauge]:
        reads.append(1)
        await go.wait()  # a slow count: the second scrape comes meanwhile
        return [Gauge("feo_alerts_open", "open alerts, by kind", {"kind": "ent-indisponible"}, len(reads))]

    both = asyncio.gather(metrics.counts(read, 30), metrics.counts(read, 30))
    await asyncio.sleep(0)
    go.set()
    first, second = await both
    assert reads == [1] and first == second


def test_batches_failing_are_kept_through_a_rebalance_while_one_of_their_partitions_stays():
    """Each replica's partitions are assigned again at every rebalance (a rollout's): clearing
    the failures at each made an alert on their duration start again for good, while the same
    batches kept failing here (review helper-183 #3). Those of a partition gone are another
    replica's to commit: cleared once none of theirs is here."""
    metrics = Metrics("equipement")
    first = metrics.batch_failed("DiskFullError", [record("t", 1, 0)])
    metrics.batch_failed("DiskFullError", [record("t", 3, 0)])
    metrics.reassigned([TopicPartition("t", 1), TopicPartition("t", 5)])
    assert metrics.failing is not None and metrics.failing.since == first.since, "partition 1 stayed here"
    assert metrics.failing.partitions == {("t", 1)}, "partition 3's is no longer this replica's"
    metrics.reassigned([TopicPartition("t", 0), TopicPartition("t", 2), TopicPartition("u", 1)])
    assert metrics.failing is None, "neither is here any more: another replica's to commit"


def test_failures_in_a_row_end_once_each_of_their_partitions_committed():
    """A partition stuck at a record the code fails on while the replica's others commit: each
    commit between ended the failures (review s70 3 #6: `batch.recovered` every second, the
    failing seconds back to 0, /health saying nothing amiss between two)."""
    metrics = Metrics("equipement")
    first = metrics.batch_failed("RuntimeError", [record("t", 1, 7), record("t", 2, 3)])
    assert metrics.batch(1, 0, 0, {}, 0.01, [record("t", 2, 3), record("t", 3, 0)]) is None
    assert metrics.failing is not None and metrics.failing.since == first.since
    assert metrics.failing.partitions == {("t", 1)}
    assert [(w["partition"], w["first_offset"]) for w in metrics.failing.latest] == [(1, 7)], "/health's"
    metrics.batch_failed("RuntimeError", [record("t", 1, 7)])
    ended = metrics.batch(1, 0, 0, {}, 0.01, [record("t", 1, 7)])
    assert ended is not None and ended.since == first.since and metrics.failing is None
    assert metrics.batch(1, 0, 0, {}, 0.01, [record("t", 1, 8)]) is None, "said once"


def test_a_failure_s_traceback_is_not_kept_unsaid_by_another_type_s(monkeypatch):
    """Once a minute at most per type of error: one for the whole pipeline let a stuck
    partition's failures hide another's for as long (review s70 3 #6)."""
    from services.common import pipeline

    clock = [1000.0]
    monkeypatch.setattr(pipeline.time, "monotonic", lambda: clock[0])
    tracebacks = pipeline.Tracebacks()
    assert tracebacks.due("RuntimeError") == 0
    clock[0] += 1
    assert tracebacks.due("RuntimeError") is None
    assert tracebacks.due("KeyError") == 0, "another type's first is said"
    clock[0] += pipeline.FAILED_LINE_SECONDS
    assert tracebacks.due("RuntimeError") == 1, "with how many were not said"
    assert tracebacks.due("KeyError") == 0
