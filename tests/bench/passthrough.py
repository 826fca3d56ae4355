"""The national steps' floor: what Kafka and Python alone cost to turn the same records (the
subscriptions, a republication) into the same alert records, with no database and no rules.

Run by national.py as a process of its own, as a service is: `python passthrough.py CONFIG`,
CONFIG the path of a JSON object (below; 30,000 UAIs are more than one argument may hold). It
reads the records as ressources' consumer does (aiokafka, its batch size and fetch wait, each
record's JSON decoded, offsets committed off the path). For a subscription of a UAI in
`alerting`, and for a resource published, one for each UAI in `fanout`, it publishes `alert` (a
real alert record's value and headers, taken from the step it stands beside) on `alerts` keyed by
the UAI, and on `table` keyed by the alert's id, as the relay publishes an alert and its twin:
its producer, its batch building (OutboxRelay._publish), its rounds of ROUND_RECORDS, in a task
beside the consumer. It prints "ready" once it reads from the topic's end.

What it leaves out is the platform's work: the inbox, the subscriptions, the evaluation, the
alerts' rows and journal, the outbox's writes and reads, the consumer's parsing and checks. What
it keeps, the step's Kafka traffic through Python clients, the platform cannot do without: the
step takes the pass-through's time plus what that work adds on the same cores."""

import asyncio
import json
import sys
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.common.messaging.connection import KafkaAccess
from services.common.messaging.outbox import ROUND_RECORDS, OutboxRelay, dump_headers, relay_producer
from services.common.runtime.settings import ServiceSettings
from services.ressources.lifecycle import alert_id

DEFAULTS = {name: field.default for name, field in ServiceSettings.model_fields.items()}


class Relay:
    """Publishes the rows handed to it in rounds of up to ROUND_RECORDS, in a task of its own
    (as the outbox relay runs beside the consumer), with the relay's own code."""

    def __init__(self, access: KafkaAccess):
        self.producer = relay_producer(access, "bench-passthrough")
        self._relay = OutboxRelay(pool=None, producer=self.producer, schema="bench")  # type: ignore[arg-type]
        self._rows: list[dict[str, Any]] = []
        self._wake = asyncio.Event()

    def hand(self, rows: list[dict[str, Any]]) -> None:
        self._rows += rows
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._rows:
                round_, self._rows = self._rows[:ROUND_RECORDS], self._rows[ROUND_RECORDS:]
                errors, _ = await self._relay._publish(round_)  # type: ignore[arg-type]  # mappings, as asyncpg's rows
                if failed := [e for e in errors if e is not None]:
                    raise RuntimeError(f"{len(failed)} alert records not published: {failed[0]!r}")


async def run(config: dict[str, Any]) -> None:
    access = KafkaAccess.from_environ()
    source, alerting, fanout = config["source"], frozenset(config["alerting"]), config["fanout"]
    alert, headers = (
        bytes.fromhex(config["alert"]),
        dump_headers(tuple((name, bytes.fromhex(value)) for name, value in config["headers"])),
    )
    data = json.loads(alert)["data"]

    def row(uai: str) -> dict[str, Any]:
        """The alert's record keyed by the UAI, its twin by an alert_id, as ressources keys them."""
        return {
            "topic": config["alerts"],
            "key": uai.encode(),
            "record_value": alert,
            "headers": headers,
            "twin_topic": config["table"],
            "twin_key": alert_id(uai, data["resource_id"], data["kind"]).encode(),
            "twin_ends": False,
        }

    consumer = AIOKafkaConsumer(
        **access.aiokafka(),
        group_id=config["group"],
        enable_auto_commit=False,
        max_poll_records=DEFAULTS["batch_max_records"],
        fetch_max_wait_ms=DEFAULTS["fetch_max_wait_ms"],
    )
    relay = Relay(access)
    await consumer.start()
    await relay.producer.start()
    publishing = asyncio.create_task(relay.run())
    committing: asyncio.Task | None = None
    try:
        partitions = [TopicPartition(source, p) for p in range(config["partitions"])]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)
        print("ready", flush=True)
        while not publishing.done():
            batch = await consumer.getmany(timeout_ms=1000, max_records=DEFAULTS["batch_max_records"])
            rows = []
            for records in batch.values():
                for r in records:
                    uai = json.loads(r.value)["data"].get("uai")
                    if uai is None:  # a resource published: its fan-out
                        rows += [row(u) for u in fanout]
                    elif uai in alerting:
                        rows.append(row(uai))
            relay.hand(rows)
            # Off the path, as ressources commits (one at a time here: nothing reads these offsets).
            if batch and (committing is None or committing.done()):
                committing = asyncio.create_task(consumer.commit())
            # getmany returns buffered records without a pause: the relay's task gets its turn
            # here, as ressources' relay gets it while a batch waits on PostgreSQL.
            await asyncio.sleep(0)
        await publishing  # its error
    finally:
        publishing.cancel()
        await relay.producer.stop()
        await consumer.stop()


if __name__ == "__main__":
    with open(sys.argv[1]) as given:
        asyncio.run(run(json.load(given)))
