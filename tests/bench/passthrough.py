"""The national subscription step's floor: what Kafka and Python alone cost to turn the same
subscriptions into the same alert records, with no database and no rules.

Run by national.py as a process of its own, as a service is: `python passthrough.py CONFIG`,
CONFIG the path of a JSON object (below; 30,000 UAIs are more than one argument may hold). It
reads the records as ressources' consumer does (aiokafka, batches of up to 2,000, each record's
JSON decoded, offsets committed after each batch). For a subscription of a UAI in `alerting`,
and for a resource published, one for each UAI in `fanout`, it publishes `alert` (a real alert
record's value and headers, taken from the step it stands beside) on `alerts`, and on `table`
under the same key, as the relay publishes an alert and its twin: its producer, its batch
building (OutboxRelay._publish), its rounds of ROUND_RECORDS; then it commits. It prints "ready"
once it reads from the topic's end.

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

BATCH_RECORDS = 2000
"""ressources' consumer batches (max_records) at most this many records."""


async def run(config: dict[str, Any]) -> None:
    access = KafkaAccess.from_environ()
    source, alerting, fanout = config["source"], frozenset(config["alerting"]), config["fanout"]
    alert, headers = (
        bytes.fromhex(config["alert"]),
        dump_headers(tuple((name, bytes.fromhex(value)) for name, value in config["headers"])),
    )
    consumer = AIOKafkaConsumer(
        **access.aiokafka(), group_id=config["group"], enable_auto_commit=False, max_poll_records=BATCH_RECORDS
    )
    producer = relay_producer(access, "bench-passthrough")
    relay = OutboxRelay(pool=None, producer=producer, schema="bench")  # type: ignore[arg-type]  # _publish needs no pool
    await consumer.start()
    await producer.start()
    try:
        partitions = [TopicPartition(source, p) for p in range(config["partitions"])]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)
        print("ready", flush=True)
        while True:
            batch = await consumer.getmany(timeout_ms=1000, max_records=BATCH_RECORDS)
            keys = []
            for records in batch.values():
                for r in records:
                    uai = json.loads(r.value)["data"].get("uai")
                    if uai is None:  # a resource published: its fan-out
                        keys += [u.encode() for u in fanout]
                    elif uai in alerting:
                        keys.append(r.key)
            rows = [
                {
                    "topic": config["alerts"],
                    "key": key,
                    "record_value": alert,
                    "headers": headers,
                    "twin_topic": config["table"],
                    "twin_key": key,
                    "twin_ends": False,
                }
                for key in keys
            ]
            for first in range(0, len(rows), ROUND_RECORDS):
                # rows as mappings, as asyncpg gives them
                errors, _ = await relay._publish(rows[first : first + ROUND_RECORDS])  # type: ignore[arg-type]
                if failed := [e for e in errors if e is not None]:
                    raise RuntimeError(f"{len(failed)} alert records not published: {failed[0]!r}")
            if batch:
                await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()


if __name__ == "__main__":
    with open(sys.argv[1]) as given:
        asyncio.run(run(json.load(given)))
