"""The relay's round, with a broker that fails one batch of a partition and acknowledges a later
one of the same partition: both count as failed, so that partition's records go out again in
their order next round (a key's records never end reordered); other partitions are done. A
batch refused for good is set aside alone: those behind it are judged by their own outcome."""

import asyncio
import time
from types import SimpleNamespace

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, UnknownTopicOrPartitionError

from services.common.messaging import outbox


class Builder:
    def __init__(self, limit: int):
        self.records: list[bytes] = []
        self._limit = limit

    def append(self, timestamp, key, value, headers):
        if len(self.records) == self._limit:
            return None  # full: the relay starts another batch
        self.records.append(value)
        return object()

    def close(self) -> None:
        pass


class Producer:
    """Partitions 0 and 1; batches of two records; the first batch sent to partition 0 fails with `error`."""

    def __init__(self, error: Exception) -> None:
        self.sent: list[tuple[int, list[bytes]]] = []
        self.error = error

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1}

    def create_batch(self) -> Builder:
        return Builder(2)

    async def send_batch(self, builder: Builder, topic: str, partition: int) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        first_of_partition_0 = partition == 0 and not any(p == 0 for p, _ in self.sent)
        self.sent.append((partition, builder.records))
        if first_of_partition_0:
            future.set_exception(self.error)
        else:
            future.set_result(None)
        return future


KEYS = [b"0", b"0", b"1", b"0", b"0", b"0", b"0"]


def row(topic: str, key: bytes, value: bytes, twin: tuple[str, bytes, bool] | None = None) -> dict:
    """An outbox row as the relay reads it."""
    twin_topic, twin_key, twin_ends = twin or (None, None, False)
    return {"topic": topic, "key": key, "record_value": value, "headers": "[]"} | {
        "twin_topic": twin_topic,
        "twin_key": twin_key,
        "twin_ends": twin_ends,
    }


async def publish(monkeypatch, error: Exception) -> tuple[list, BaseException | None]:
    monkeypatch.setattr(outbox, "partition_for", lambda key, partitions: int(key))  # key b"0": partition 0
    relay = outbox.OutboxRelay(None, (producer := Producer(error)), "relayorder")  # type: ignore[arg-type]
    rows = [row("t", k, f"v{n}".encode()) for n, k in enumerate(KEYS)]
    errors, out_of_step = await relay._publish(rows)
    assert [p for p, _ in producer.sent] == [0, 1, 0, 0], "partition 0 in three batches, the first one failing"
    return errors, out_of_step


async def test_a_failed_batch_fails_the_later_ones_of_its_partition(monkeypatch):
    errors, out_of_step = await publish(monkeypatch, ConnectionError("leader gone"))
    assert [e is None for e in errors] == [k == b"1" for k in KEYS], "partition 0's later batches count as failed"
    assert out_of_step is None


async def test_after_a_batch_refused_for_good_the_later_ones_are_judged_by_their_outcome(monkeypatch):
    refused = MessageSizeTooLargeError()
    errors, out_of_step = await publish(monkeypatch, refused)
    assert [e is refused for e in errors] == [True, True] + [False] * 5, "only the refused batch is set aside"
    assert all(e is None for e in errors[2:]), "the later batches went out: not set aside, not sent again"
    assert out_of_step is refused, "its sequence numbers used: the producer is out of step, the relay renews it"


async def test_a_batch_refused_as_out_of_order_is_sent_again_by_a_new_producer(monkeypatch):
    out_of_order = outbox.OutOfOrderSequenceNumber()
    errors, out_of_step = await publish(monkeypatch, out_of_order)
    assert [e is None for e in errors] == [k == b"1" for k in KEYS], "sent again, with the later ones of its partition"
    assert out_of_step is out_of_order


class Twelve(Producer):
    """Twelve partitions, every batch acknowledged."""

    def __init__(self) -> None:
        super().__init__(RuntimeError("not used"))

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(12))

    async def send_batch(self, builder: Builder, topic: str, partition: int) -> asyncio.Future:
        self.sent.append((partition, builder.records))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


async def test_one_uais_derived_records_go_to_one_partition_in_their_order():
    """A coverage's `{uai}` and `{uai}/{kind}` records, committed together: on one partition, in
    order (their own keys' partitions differ: ressources could read one without the other)."""
    from services.common.messaging.partitioner import partition_for

    keys = [b"0351234B", b"0351234B/tni", b"0351234B/robot programmable"]
    assert len({partition_for(k, range(12)) for k in keys}) > 1, "their own keys would split them"
    relay = outbox.OutboxRelay(None, (producer := Twelve()), "relayorder")  # type: ignore[arg-type]
    for topic in ("p.formation.couvertures.v2", "p.equipement.profils.v2"):
        producer.sent.clear()
        rows = [row(topic, k, k) for k in keys]
        errors, _ = await relay._publish(rows)
        assert errors == [None] * 3
        assert {p for p, _ in producer.sent} == {partition_for(keys[0], range(12))}
        assert [r for _, records in producer.sent for r in records] == keys
    producer.sent.clear()
    await relay._publish([row("p.alertes.compatibilite.v1", k, k) for k in keys])
    assert len({p for p, _ in producer.sent}) > 1, "elsewhere each key decides"


class Topics(Producer):
    """Partitions 0 and 1; batches of two records; every batch to a topic of `failing` fails
    with its error."""

    def __init__(self, failing: dict[str, Exception]) -> None:
        super().__init__(ConnectionError("leader gone"))
        self.failing = failing
        self.topics: list[tuple[str, int, list[bytes | None]]] = []

    async def send_batch(self, builder: Builder, topic: str, partition: int) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.topics.append((topic, partition, builder.records))
        if topic in self.failing:
            future.set_exception(self.failing[topic])
        else:
            future.set_result(None)
        return future


async def test_a_row_and_its_twin_go_out_together_and_fail_together(monkeypatch):
    """An alert's row: its event on the stream, on the table (its twin), then a tombstone there
    if it ends; the row counts as published only once all of them are."""
    monkeypatch.setattr(outbox, "partition_for", lambda key, partitions: int(key[:1]))
    rows = [
        row("stream", b"0", b"raised", ("table", b"1a", False)),
        row("stream", b"0", b"resolved", ("table", b"1a", True)),
    ]
    relay = outbox.OutboxRelay(None, (producer := Topics(failing={})), "relayorder")  # type: ignore[arg-type]
    errors, _ = await relay._publish(rows)
    assert errors == [None, None]
    assert producer.topics == [
        ("stream", 0, [b"raised", b"resolved"]),
        ("table", 1, [b"raised", b"resolved"]),
        ("table", 1, [None]),
    ]
    away = ConnectionError("leader gone")
    relay._producer = producer = Topics(failing={"table": away})
    errors, _ = await relay._publish(rows)
    assert errors == [away, away], "the stream's went out, the rows go again"
    assert [t for t, _, _ in producer.topics] == ["stream", "table", "table"]
    relay._producer = Topics(failing={"stream": away, "table": MessageSizeTooLargeError()})
    errors, _ = await relay._publish(rows)
    assert errors == [away, away], "retried, not set aside: its record on the stream never went out"


class Missing(Topics):
    """Kafka knows no topic `missing`."""

    async def partitions_for(self, topic: str) -> set[int]:
        if topic == "missing":
            raise UnknownTopicOrPartitionError()
        return await super().partitions_for(topic)


async def test_the_rows_of_an_absent_topic_wait_with_those_behind_them_on_their_partitions(monkeypatch):
    """A row whose topic or twin's topic Kafka does not know waits, and so does every row behind
    it on a partition it would write (a key's records in order); the others go out."""
    monkeypatch.setattr(outbox, "partition_for", lambda key, partitions: int(key[:1]))
    rows = [
        row("stream", b"0", b"raised", ("missing", b"1a", False)),  # its table absent: waits
        row("stream", b"0", b"resolved"),  # behind it on stream[0]: waits
        row("stream", b"1", b"other key"),  # stream[1]: goes out
        row("missing", b"1", b"dead letter"),  # waits
        row("dlq", b"0", b"dead letter"),  # goes out
    ]
    relay = outbox.OutboxRelay(None, (producer := Missing(failing={})), "relayorder")  # type: ignore[arg-type]
    errors, _ = await relay._publish(rows)
    assert [type(e).__name__ if e else None for e in errors] == [
        "TopicAbsent",
        "TopicAbsent",
        None,
        "TopicAbsent",
        None,
    ]
    assert producer.topics == [("stream", 1, [b"other key"]), ("dlq", 0, [b"dead letter"])]
    assert set(relay._absent) == {"missing"}


@pytest.mark.parametrize("answered_s_ago", [0.0, 60.0])
async def test_a_topic_kafka_names_no_partitions_of_in_time_is_absent_only_if_kafka_answers(
    monkeypatch, answered_s_ago
):
    """A topic Kafka does not know is never refused by aiokafka within our wait: its metadata
    lookup just goes on. Absent (its records left out 30 s) when Kafka answered the producer's
    metadata meanwhile; else Kafka is away, and the round waits as for any outage."""
    monkeypatch.setattr(outbox, "TOPIC_LOOKUP_SECONDS", 0.05)

    class Looking(Topics):
        client = SimpleNamespace(cluster=SimpleNamespace(_last_successful_refresh_ms=0))

        async def partitions_for(self, topic: str) -> set[int]:
            while True:  # aiokafka asks again until its request timeout (40 s)
                self.client.cluster._last_successful_refresh_ms = (time.time() - answered_s_ago) * 1000
                await asyncio.sleep(0.01)

    relay = outbox.OutboxRelay(None, Looking(failing={}), "relayorder")  # type: ignore[arg-type]
    if answered_s_ago:
        with pytest.raises(KafkaTimeoutError, match=r"no metadata within 0\.05 s"):
            await relay._partitions("missing")
        assert relay._absent == {}
    else:
        assert await relay._partitions("missing") is None
        assert set(relay._absent) == {"missing"}


async def test_stopping_the_relay_lets_a_cancellation_of_its_caller_through_and_stops_its_producer():
    """A service's stop cancelled while the relay's round ends (a send in flight): that
    cancellation was taken for the round's own and swallowed, the caller going on as if not
    cancelled."""
    stopped: list[bool] = []

    class Producer:
        async def stop(self):
            stopped.append(True)

    relay = outbox.OutboxRelay(None, Producer(), "relaystop")  # type: ignore[arg-type]
    await _stop_cancelled_mid_round(relay)
    assert stopped == [True]
    assert relay._task.cancelled()


async def _stop_cancelled_mid_round(relay: outbox.OutboxRelay, at_its_end=None) -> None:
    """`relay.stop()` cancelled while the relay's round ends slowly (a send in flight): the stop
    raises the cancellation (checked), then the round ends, `at_its_end` awaited first."""
    ending, release = asyncio.Event(), asyncio.Event()

    async def round_ending_slowly():
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            ending.set()
            await release.wait()
            if at_its_end is not None:
                await at_its_end()
            raise

    relay._task = asyncio.create_task(round_ending_slowly())
    stopping = asyncio.create_task(relay.stop())
    await ending.wait()  # the relay's task cancelled, its round ending; stop waits for it
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    release.set()
    await asyncio.wait([relay._task])


async def test_a_round_given_up_after_the_relay_s_stop_renews_no_producer():
    """A stop cancelled while the relay's round waits for Kafka's answer (its shielded wait): the
    round, given up later, silenced its producer and made a new one that nothing stopped
    (asyncio's "Unclosed AIOKafkaProducer")."""
    made: list[str] = []

    class Producer:
        def __init__(self, name: str):
            self.name, self.stopped = name, False
            made.append(name)

        async def stop(self):
            self.stopped = True

    first = Producer("first")
    relay = outbox.OutboxRelay(None, first, "relaystop", renew=lambda: Producer("renewed"))  # type: ignore[arg-type]
    await _stop_cancelled_mid_round(relay, relay._silence_producer)  # what a round Kafka did not answer does
    assert made == ["first"], "no producer made once the relay is stopping"
    assert first.stopped
