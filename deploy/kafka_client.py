"""`./dev kafka`: a partner's Kafka client with nothing to install beyond the project.

    ./dev kafka [--principal NAME] produce TOPIC --key UAI [--header NAME=VALUE]... < event.json
    ./dev kafka [--principal NAME] consume TOPIC [--from-beginning] [--max N] [--idle SECONDS]
    ./dev credentials NAME [--data-dir DIR]     (./dev kafka credentials NAME)

`produce` sends what it reads on standard input as one record (a CloudEvent in structured
JSON mode, so the header `content-type: application/cloudevents+json` is set unless another
one is given; `--lines` sends one record per line instead), with acks=all and idempotence,
and prints where each record landed. `consume` prints each record as one line of JSON:
topic, partition, offset, key, headers (as text when they are UTF-8, else hex) and the
value (parsed when it is JSON, else as text), so a partner can read a DLQ's `dlq-reason`
and `dlq-message` beside the record it refused. Any Kafka client does the same (kcat:
`apt-get install kcat`).

It connects as the services do, with the KAFKA_* variables (address, SASL_SSL, user, password,
CA; or SSL and a client certificate); `--principal NAME` connects instead as that principal of
the local platform running on this machine (`./dev up`), with the password its broker keeps.
`credentials NAME` prints that principal's KAFKA_*= settings, for any other client (kcat, Java:
see the README, Security).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaConnectionError, KafkaError

from contracts import CONTENT_TYPE
from deploy.acl import OPERATOR
from deploy.local.kafka.credentials import ADMIN, local_access
from services.common.messaging.connection import KafkaAccess
from services.common.messaging.records import lenient_consumer


class UsageError(ValueError):
    """A command line that cannot be acted on; its message is the whole explanation."""


def parse_headers(items: Sequence[str]) -> list[tuple[str, bytes]]:
    headers = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--header {item!r}: expected NAME=VALUE")
        headers.append((name, value.encode()))
    if not any(name.lower() == "content-type" for name, _ in headers):
        headers.insert(0, ("content-type", CONTENT_TYPE.encode()))
    return headers


def values_from(text: str, lines: bool) -> list[bytes]:
    if lines:
        values = [line.encode() for line in text.splitlines() if line.strip()]
    else:
        values = [text.strip().encode()] if text.strip() else []
    if not values:
        raise UsageError("nothing to send: standard input is empty")
    return values


def describe(record: ConsumerRecord) -> str:
    def text(raw: bytes | None) -> str | None:
        if raw is None:
            return None
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return "hex:" + raw.hex()

    value: object = text(record.value)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    return json.dumps(
        {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "key": text(record.key),
            "headers": [[name, text(raw)] for name, raw in record.headers],
            "value": value,
        },
        ensure_ascii=False,
    )


async def produce(access: KafkaAccess, topic: str, key: str | None, headers: list[tuple[str, bytes]], values) -> None:
    producer = AIOKafkaProducer(**access.aiokafka(), acks="all", enable_idempotence=True)
    try:
        await producer.start()
        if topic not in (await producer.client.fetch_all_metadata()).topics():
            raise UsageError(_absent(topic, access))
        for value in values:
            meta = await producer.send_and_wait(topic, value, key=key.encode() if key else None, headers=headers)
            print(f"{meta.topic} partition {meta.partition} offset {meta.offset}", flush=True)
    finally:
        await producer.stop()


async def consume(
    access: KafkaAccess, topic: str, from_beginning: bool, at_most: int | None, idle: float | None
) -> int:
    consumer = lenient_consumer(
        **access.aiokafka(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    try:
        await consumer.start()
        if topic not in await consumer.topics():  # fetches the cluster's metadata
            raise UsageError(_absent(topic, access))
        consumer.subscribe([topic])  # without a group: every partition, nothing committed
        seen = 0
        while at_most is None or seen < at_most:
            batch = await consumer.getmany(timeout_ms=int((idle or 3600) * 1000))
            if not batch:
                if idle is not None:
                    break
                continue
            records = [record for records in batch.values() for record in records]
            for record in records[: None if at_most is None else at_most - seen]:
                print(describe(record), flush=True)
                seen += 1
        return seen
    finally:
        await consumer.stop()


def _absent(topic: str, access: KafkaAccess) -> str:
    """Metadata lists only the topics the principal may use: absent may mean forbidden."""
    if access.principal not in (None, ADMIN, OPERATOR):  # super users see every topic
        return f"topic {topic!r} does not exist on {access.bootstrap_servers} or {access.principal} may not use it"
    return f"topic {topic!r} does not exist on {access.bootstrap_servers}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="./dev kafka", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--principal", metavar="NAME", help="connect as this principal of the running local platform (./dev up)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("produce", help="send standard input as one record (or one per line)")
    p.add_argument("topic")
    p.add_argument("--key", help="the record key: its subject (the UAI, a resource_id, a teacher_id)")
    p.add_argument("--header", "-H", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--lines", action="store_true", help="one record per line of standard input")
    c = commands.add_parser("consume", help="print records as JSON lines")
    c.add_argument("topic")
    c.add_argument("--from-beginning", action="store_true", help="from the oldest record (default: new ones)")
    c.add_argument("--max", type=int, metavar="N", help="stop after N records")
    c.add_argument("--idle", type=float, metavar="SECONDS", help="stop after SECONDS without a new record")
    k = commands.add_parser("credentials", help="print the KAFKA_*= settings of a principal of the local platform")
    k.add_argument("name", help="a principal: admin, a service, ministere, gar, a dashboard (KAFKA_DASHBOARDS)")
    k.add_argument("--data-dir", type=Path, help="the platform started with ./dev up --data-dir DIR")
    args = parser.parse_args(argv)
    if args.command == "credentials":
        for variable, value in local_access(args.name, args.data_dir).environ().items():
            print(f"{variable}={value}")
        return 0
    access = local_access(args.principal) if args.principal else KafkaAccess.from_environ()
    if unusable := access.unusable():
        print(f"./dev kafka: {': '.join(unusable)}", file=sys.stderr)
        return 2
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # its connection errors: our one line says it
    bootstrap = access.bootstrap_servers
    try:
        if args.command == "produce":
            values = values_from(sys.stdin.read(), args.lines)
            asyncio.run(produce(access, args.topic, args.key, parse_headers(args.header), values))
        else:
            asyncio.run(consume(access, args.topic, args.from_beginning, args.max, args.idle))
    except UsageError as error:
        print(f"./dev kafka: {error}", file=sys.stderr)
        return 2
    except KafkaConnectionError:
        print(
            f"./dev kafka: no Kafka broker answers at {bootstrap} (KAFKA_BOOTSTRAP_SERVERS), or it refused this "
            "client's credentials or did not prove itself with KAFKA_CA_FILE's CA; is ./dev up running?",
            file=sys.stderr,
        )
        return 1
    except KafkaError as error:
        print(f"./dev kafka: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
