"""`./dev dead-letters`: who sent the records the services refused, and why.

    ./dev dead-letters list [--service NAME] [--source SRC] [--reason CODE] [--topic T]
                            [--since TIME] [--uai UAI] [--limit N]
    ./dev dead-letters show [--service NAME] --topic T --partition P --offset O [--headers]
    ./dev dead-letters replay [--service NAME] [the filters of list] [--limit N] [--dry-run]

`list` prints one line per refused record, newest first: when, service, topic:partition@offset,
reason, then `source`, `id` and key as far as they could be read from the record (`-` when not).
`show` prints one record with the message that says which field broke which rule. The refused
value itself is never printed: its bytes are in `<topic>.dlq`, in the record whose
`dlq-partition` and `dlq-offset` headers name it. What a partner chose (a member's name in a
message, an id) is printed with its control and format characters escaped (`\\u001b`): a
terminal acts on none of them. Rows are kept INBOX_RETENTION_DAYS (the
retention of the inbox). Reads DATABASE_URL.

A record refused for want of its établissement (`uai-inconnu`) needs no replay: the service
judges it again itself once the référentiel brings the UAI (`list` then shows `accepted=` when
it was applied, or `rejudged=` and the reason it is refused for now); except one refused by a
version of the platform from before that (2026-12), which waits for nothing: replay it.

`replay`, once the cause is fixed (the référentiel corrected, say), sends the refused records the
filters select back to the topic and partition they were read from, oldest first (the --limit
oldest of them all; it says when more match): value, key and the partner's headers as they
were, plus a `dlq-replay` header naming the refused record (so a replayed record that is
refused again is recognisable). Not a record of a compacted topic (the internal profiles and
coverages): it would stand for its key after newer ones; `./dev rebuild` of the service that
refused it reads that topic again as it stands. Not one whose copy is not on its DLQ yet (in its
service's outbox, or set aside: ./dev outbox): it waits. One whose copy the DLQ no longer holds
(past its retention) is named and marked (`list`: `copy_missing=`), and left out of later replays;
so is one whose copy holds neither key nor value (nothing a producer can send again).
DB_SCHEMA, with one --service, names that service's schema.
Each is replayed once: its `dead_letters` row is marked once the broker has it, and `list`
shows it; a record refused again has a row of its own. One replay at a time in a database (a
second one, meanwhile, replays nothing and says so). A replay interrupted between a send and
its mark may send that record twice, which the services ignore (same CloudEvents id). Reads the
DLQ topics and writes the partner topics with the Kafka access of the environment (KAFKA_*: an
operator's, the ACLs allowing it).
"""

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from contracts import dlq as dlq_topic
from services.common.messaging.connection import KafkaAccess
from services.common.messaging.dlq import Origin, columns, origin, replayed_headers
from services.common.messaging.outbox import COMPACTED, load_headers
from services.common.messaging.records import lenient_consumer
from services.common.messaging.stall import Stall
from services.common.pipeline import writer_lock
from services.common.runtime.logs import visible
from services.common.runtime.secrets import redact
from services.common.runtime.settings import settings_or_exit, tool_schemas
from services.common.storage.db import (
    SESSION_ENDED,
    SESSION_LOST,
    SchemaAbsent,
    advisory_key,
    connect_for_tool,
    on_a_session,
    present_schemas,
)

SERVICES = ("formation", "equipement", "ressources")
COLUMNS = (
    'received_at, topic, partition, "offset", reason, message, source, id, type, subject, key, replayed_at, '
    "accepted_at, rejudged_at, copy_missing_at"
)
SETTLED = ("replayed", "accepted", "rejudged", "copy_missing")
"""What became of a dead letter since, each in its `<what>_at` column: replayed by an operator,
or (one that waited for its établissement) judged again, accepted or refused for another reason;
or a replay found no copy of it on its DLQ, and later ones leave it out."""
HEADER_SHOWN = 200  # characters of a header's value shown
SCAN_SECONDS = 120
"""Reading the DLQ topics: this long without a record while some are left, the broker is not
answering. A large DLQ may take longer in all: only a stall ends the scan."""
REPLAY_LOCK = advisory_key("dead-letters-replay")


def _shown(value: Any) -> str:
    """One token per value, so that a line stays one record: `-` for none, quoted when it holds
    a space, a control character or nothing."""
    if value is None:
        return "-"
    text = str(value)
    return text if text and text.isprintable() and " " not in text else visible(json.dumps(text, ensure_ascii=False))


def _where(args: argparse.Namespace) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []

    def param(value: Any) -> str:
        params.append(value)
        return f"${len(params)}"

    for column in ("source", "reason", "topic"):
        if (value := getattr(args, column)) is not None:
            clauses.append(f"{column} = {param(value)}")
    if args.since is not None:
        clauses.append(f"received_at >= {param(args.since)}")
    if args.uai is not None:  # the key or the subject: the UAI, or `{uai}/…` (internal topics, alerts)
        uai = param(args.uai)
        prefix = param(args.uai.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%")
        clauses.append(f"(key = {uai} OR subject = {uai} OR key LIKE {prefix} OR subject LIKE {prefix})")
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


async def _list(conn: asyncpg.Connection, schemas: list[str], args: argparse.Namespace) -> int:
    where, params = _where(args)
    found = []
    for schema in schemas:
        rows = await conn.fetch(
            f'SELECT {COLUMNS} FROM "{schema}".dead_letters{where} ORDER BY received_at DESC, "offset" DESC '
            f"LIMIT {args.limit + 1}",
            *params,
        )
        found += [(schema, r) for r in rows]
    found.sort(key=lambda item: (item[1]["received_at"], item[1]["offset"]), reverse=True)
    for schema, r in found[: args.limit]:
        print(
            f"{r['received_at'].isoformat(timespec='seconds')} {schema} {r['topic']}:{r['partition']}@{r['offset']}"
            f" {r['reason']} source={_shown(r['source'])} id={_shown(r['id'])} key={_shown(r['key'])}"
            + "".join(f" {what}={r[f'{what}_at'].isoformat(timespec='seconds')}" for what in SETTLED if r[f"{what}_at"])
        )
    if len(found) > args.limit:
        print(f"(more than {args.limit}: narrow the search, or raise --limit)", file=sys.stderr)
    return min(len(found), args.limit)


async def _show(conn: asyncpg.Connection, schemas: list[str], args: argparse.Namespace) -> int:
    shown = 0
    for schema in schemas:
        r = await conn.fetchrow(
            f'SELECT {COLUMNS} FROM "{schema}".dead_letters WHERE topic = $1 AND partition = $2 AND "offset" = $3',
            args.topic,
            args.partition,
            args.offset,
        )
        if r is None:
            continue
        shown += 1
        print(f"{schema} {r['topic']}:{r['partition']}@{r['offset']}, its bytes in {dlq_topic(r['topic'])}")
        print(f"  refused  {r['received_at'].isoformat()}")
        for name in ("reason", "message", "source", "id", "type", "subject", "key"):
            print(f"  {name:<8} {_shown(r[name]) if name != 'message' else visible(r[name])}")
        for what in SETTLED:
            if r[f"{what}_at"]:
                print(f"  {what:<8} {r[f'{what}_at'].isoformat()}")
        if args.headers:
            await _print_headers((r["topic"], r["partition"], r["offset"]))
    if not shown:
        print(
            f"no dead letter at {args.topic}:{args.partition}@{args.offset} in {', '.join(schemas)} "
            "(never refused there, or purged after INBOX_RETENTION_DAYS)",
            file=sys.stderr,
        )
    return shown


class ReplayUnderWay(Exception):
    """Another operator's replay holds the database's: this one sends nothing (exit code 1)."""


async def _replay(conn: asyncpg.Connection, schemas: list[str], args: argparse.Namespace, database_url: str) -> int:
    """One replay at a time in a database: two operators replaying the same dead letters at once
    would each send them (a session lock, held until this ends)."""
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", REPLAY_LOCK):
        raise ReplayUnderWay("another replay of dead letters is under way: run this again once it is done")
    try:
        return await _replay_held(conn, schemas, args, database_url)
    finally:
        try:
            await conn.execute("SELECT pg_advisory_unlock($1)", REPLAY_LOCK)
        except SESSION_LOST:  # the session gone, and its lock with it
            pass


async def _replay_held(
    conn: asyncpg.Connection, schemas: list[str], args: argparse.Namespace, database_url: str
) -> int:
    where, params = _where(args)
    # accepted: applied once its établissement came; a copy missing: nothing to send, ever
    unsettled = "replayed_at IS NULL AND accepted_at IS NULL AND copy_missing_at IS NULL"
    where = f"{where} AND {unsettled}" if where else f" WHERE {unsettled}"
    # A compacted topic keeps each key's latest record: a copy sent back now would stand for its
    # key after newer ones (a stale profile or coverage, for good). Its refusing service reads
    # the topic again as it stands when rebuilt. Left out before the limit, and named.
    compacted = (
        f"EXISTS (SELECT FROM unnest(${len(params) + 1}::text[]) AS c(name) WHERE right(topic, length(name)) = name)"
    )
    # A copy still in its service's outbox, or set aside, is not on its DLQ yet: those dead
    # letters wait (not marked missing, and not in the place of others under --limit). Read
    # before the DLQs are, with the dead letters in one snapshot: a copy gone from the outbox in
    # it was on its DLQ before the scan, and a dead letter committed after the outbox was read
    # (its copy then in the outbox, unseen) is not taken for one whose copy is missing.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        unsent = columns(await _unsent_copies(conn, schemas))
        n = len(params) + 2
        unsent_rows = f"SELECT * FROM unnest(${n}::text[], ${n + 1}::int[], ${n + 2}::bigint[])"
        sent = f'(topic, partition, "offset") NOT IN ({unsent_rows})'
        matching: dict[Origin, tuple[datetime, str]] = {}  # each refused record: when, and in which schema
        for schema in schemas:  # those whose copy is sent first: the others named, when there is room
            rows = await conn.fetch(
                f'SELECT topic, partition, "offset", received_at, {sent} AS sent FROM "{schema}".dead_letters{where} '
                f'AND NOT {compacted} ORDER BY NOT {sent}, received_at, "offset" LIMIT {args.limit + 1}',
                *params,
                list(COMPACTED),
                *unsent,
            )
            for r in rows:
                if r["sent"]:
                    matching[(r["topic"], r["partition"], r["offset"])] = (r["received_at"], schema)
                else:
                    print(
                        f"{r['topic']}:{r['partition']}@{r['offset']}: its copy is not in {dlq_topic(r['topic'])} yet "
                        "(in its service's outbox, or set aside: ./dev outbox list): not replayed",
                        file=sys.stderr,
                    )
            left = await conn.fetch(
                f'SELECT topic, partition, "offset" FROM "{schema}".dead_letters{where} AND {compacted} '
                f'ORDER BY received_at, "offset" LIMIT {args.limit}',
                *params,
                list(COMPACTED),
            )
            rebuild = f"./dev rebuild {schema}"
            if schema not in SERVICES:  # DB_SCHEMA's, for the one --service given
                rebuild = f"DB_SCHEMA={schema} ./dev rebuild {(args.service or ['SERVICE'])[0]}"
            for t, p, o in left:
                print(
                    f"{t}:{p}@{o}: not replayed: {t} keeps each key's latest record only, and a copy sent back "
                    f"would stand for its key after newer ones; once the cause is fixed, {rebuild} "
                    "reads that topic again as it stands",
                    file=sys.stderr,
                )
    if not matching:
        print("nothing to replay: no dead letter matches that was not replayed or accepted already", file=sys.stderr)
        return 0
    # The --limit oldest of every service's, and say so when more match: the rest waits for a next run.
    wanted = dict(sorted(matching.items(), key=lambda item: (item[1][0], item[0]))[: args.limit])
    if len(matching) > args.limit:
        print(
            f"more than {args.limit} dead letters match: the {args.limit} oldest are replayed; "
            "run again for the next ones, or raise --limit",
            file=sys.stderr,
        )
    access = KafkaAccess.from_environ()
    print(f"reading {', '.join(sorted({dlq_topic(t) for t, _, _ in wanted}))} for {len(wanted)} refused records")
    producer = AIOKafkaProducer(**access.aiokafka(), acks="all", enable_idempotence=True, max_request_size=2**21)
    acknowledged: list[Origin] = []
    try:
        await producer.start()
        found = await _copies(access, producer, set(wanted))
        # The scan may take minutes: a session PostgreSQL ended meanwhile took the replay's lock
        # with it, and another replay may be sending the same records. Found out before sending.
        await conn.fetchval("SELECT 1")
        # Oldest refusal first (`wanted`'s order), whatever its topic or partition: a lot refused
        # for want of its établissement goes back after the établissement refused before it.
        oldest_first = [(of, found[of]) for of in wanted if of in found]
        # A record with neither key nor value (Kafka takes one; a partner's client may send it) is
        # json-invalide for good, and aiokafka sends no such record: its failed send stopped the
        # replay there, every later run with it. Not sent, and marked as a copy missing is:
        # else, among the oldest, such records took every place of a --limit, run after run.
        empty = [of for of, r in oldest_first if r.key is None and r.value is None]
        later = "" if args.dry_run else ", and left out of later replays"
        for t, p, o in empty:
            print(f"{t}:{p}@{o}: no key and no value, nothing to send again: not replayed{later}", file=sys.stderr)
        oldest_first = [(of, r) for of, r in oldest_first if of not in empty]
        missing = sorted(wanted.keys() - found.keys())
        for t, p, o in missing:
            print(f"{t}:{p}@{o}: no copy in {dlq_topic(t)} (past its retention?): not replayed{later}", file=sys.stderr)
        if (missing or empty) and not args.dry_run:
            await _mark(conn, wanted, [*missing, *empty], "copy_missing_at")
        if args.dry_run:
            for (t, p, o), _ in oldest_first:
                print(f"{t}:{p}@{o} would be replayed to {t}")
            return len(found)
        # To the partition it was read from: where its key's other records are, however their
        # writer chose it (the relay puts a UAI's profile and coverage records on the UAI's); to
        # its key's if that partition is gone (the topic made again with fewer).
        partitions = {t: await producer.partitions_for(t) for t in {of[0] for of, _ in oldest_first}}
        sending: list[tuple[Origin, asyncio.Future]] = []
        failed: BaseException | None = None
        try:
            for of, r in oldest_first:
                partition = of[1] if of[1] in partitions[of[0]] else None
                headers = replayed_headers(r.headers, of)
                acked = await producer.send(of[0], r.value, key=r.key, partition=partition, headers=headers)
                sending.append((of, acked))
        except Exception as e:
            failed = e
        # Every send's answer, also after one failed: those sent before it may be delivered
        # still, and one delivered but not marked would be sent again by the next replay.
        answers = await asyncio.gather(*(acked for _, acked in sending), return_exceptions=True)
        for ((t, p, o), _), meta in zip(sending, answers, strict=True):
            if isinstance(meta, BaseException):
                failed = failed or meta
                continue
            acknowledged.append((t, p, o))
            print(f"{t}:{p}@{o} replayed as {t}:{meta.partition}@{meta.offset}")
        if failed is not None:
            raise failed
    finally:
        await producer.stop()
        # What the broker acknowledged is marked, even when another send failed: run again, the
        # replay sends only the others. On a new session if PostgreSQL ended this one.
        await on_a_session(database_url, conn, lambda session: _mark(session, wanted, acknowledged, "replayed_at"))
    return len(found)


async def _unsent_copies(conn: asyncpg.Connection, schemas: list[str]) -> set[Origin]:
    """The refused records whose DLQ copy a service has not published: still in its outbox (its
    relay behind, the service stopped) or set aside (`./dev outbox`). One statement per schema:
    a copy `./dev outbox retry` moves from one table to the other meanwhile is seen in one."""
    unsent: set[Origin] = set()
    for schema in schemas:
        rows = await conn.fetch(
            f'SELECT headers FROM "{schema}".outbox WHERE topic LIKE $1 '
            f'UNION ALL SELECT headers FROM "{schema}".outbox_failed WHERE topic LIKE $1',
            "%.dlq",
        )
        unsent |= {o for r in rows if (o := origin(load_headers(r["headers"])))}
    return unsent


async def _mark(
    conn: asyncpg.Connection, wanted: dict[Origin, tuple[datetime, str]], marked: list[Origin], column: str
):
    """Sets `column` (replayed_at, copy_missing_at) to now on the dead letters `marked`, each in
    its schema, under the schema's writer lock (as a service's transaction: never in the middle of
    a rebuild's switch, whose copy of the table would miss it). One replayed no longer waits for
    its établissement either: the copy sent is judged in its place (one without a copy still
    waits: its service holds its bytes)."""
    replayed = column == "replayed_at"
    for schema in sorted({schema for _, schema in wanted.values()}):
        if mine := [of for of in marked if wanted[of][1] == schema]:
            rows = "IN (SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[]))"
            waiting = f'"{schema}".attente_referentiel WHERE (topic, partition, "offset") {rows}'
            unwait = f"WITH gone AS (DELETE FROM {waiting}) "
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", writer_lock(schema))
                await conn.execute(
                    (unwait if replayed else "")
                    + f'UPDATE "{schema}".dead_letters SET {column} = now() WHERE (topic, partition, "offset") {rows}',
                    *columns(mine),
                )


async def _print_headers(of: Origin) -> None:
    """The headers of the refused record's DLQ copy, read from Kafka: the partner's as they came
    (any bytes, or null), then the `dlq-*` ones the platform added."""
    access = KafkaAccess.from_environ()
    producer = AIOKafkaProducer(**access.aiokafka())  # for the DLQ topic's partitions
    try:
        await producer.start()
        found = await _copies(access, producer, {of})
    finally:
        await producer.stop()
    if of not in found:
        print(f"  headers  no copy in {dlq_topic(of[0])} (past its retention?)")
        return
    print(f"  headers  ({len(found[of].headers)}, as on {dlq_topic(of[0])}@{found[of].offset})")
    for name, value in found[of].headers:
        print(f"    {_shown(name)} {_header_value(value)}")


def _header_value(value: bytes | None) -> str:
    """A header's value as one token: its text when printable UTF-8, else `\\x` and hex; `null`
    for none; shortened past HEADER_SHOWN characters."""
    if value is None:
        return "null"
    try:
        text = value.decode()
    except UnicodeDecodeError:
        text = ""
    shown = text if text and text.isprintable() else "\\x" + value.hex()
    return _shown(shown if len(shown) <= HEADER_SHOWN else shown[: HEADER_SHOWN - 1] + "…")


async def _copies(access: KafkaAccess, producer: AIOKafkaProducer, wanted: set[Origin]) -> dict[Origin, ConsumerRecord]:
    """The DLQ copies of these refused records, read from their DLQ topics until each is found or
    the topics' end (the producer knows the partitions: it waits for the metadata)."""
    # From the log's start when retention deleted the records at its position (the default,
    # "latest", jumped to the end: every copy not read yet marked missing, for good).
    consumer = lenient_consumer(
        **access.aiokafka(), group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = [
            TopicPartition(topic, p)
            for topic in sorted({dlq_topic(t) for t, _, _ in wanted})
            for p in sorted(await producer.partitions_for(topic))
        ]
        consumer.assign(tps)
        starts, ends = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, starts[tp])
        found: dict[Origin, ConsumerRecord] = {}
        stall = Stall("no record from the DLQ topics", SCAN_SECONDS)
        while wanted - found.keys() and (pending := [tp for tp in tps if await consumer.position(tp) < ends[tp]]):
            fetched = await stall.getmany(consumer, pending, timeout_ms=1000)
            for records in fetched.values():
                for r in records:
                    if (of := origin(r.headers)) in wanted:
                        found[of] = r
        return found
    finally:
        await consumer.stop()


async def run(
    args: argparse.Namespace, database_url: str, schemas: list[str] | None = None, named: bool = False
) -> int:
    """Runs `list`, `show` or `replay` on `schemas` (`named`: the operator named them, each must
    be there; by default the `--service` ones, named, else every service's); returns how many
    records it printed or replayed."""
    if schemas is None:
        schemas, named = list(args.service or SERVICES), args.service is not None
    conn = await connect_for_tool(database_url)
    try:
        schemas = await present_schemas(conn, schemas, "dead_letters", named)
        if args.command == "replay":
            return await _replay(conn, schemas, args, database_url)
        return await {"list": _list, "show": _show}[args.command](conn, schemas, args)
    finally:
        await conn.close()


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 date or time (e.g. 2026-09-01 or 2026-09-01T08:00:00+02:00)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to 10000")
    return int(text)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="./dev dead-letters", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    service = argparse.ArgumentParser(add_help=False)
    service.add_argument(
        "--service", choices=SERVICES, action="append", help="a service (repeatable; default: all three)"
    )

    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument(
        "--source", metavar="SRC", help="sent by this CloudEvents source, e.g. /collectivites/regions/53"
    )
    filters.add_argument("--reason", metavar="CODE", help="refused for this reason, e.g. hors-competence")
    filters.add_argument("--topic", metavar="T", help="read from this topic, e.g. equipement.declarations.v1")
    filters.add_argument("--since", metavar="TIME", type=_instant, help="refused at or after TIME (UTC without offset)")
    filters.add_argument("--uai", metavar="UAI", help="whose key or subject is this UAI (or begins with UAI/)")
    filters.add_argument(
        "--limit",
        metavar="N",
        type=_limit,
        default=50,
        help="at most N records, the newest listed, the oldest replayed (default 50)",
    )
    commands.add_parser("list", parents=[service, filters], help="refused records, newest first")

    one = commands.add_parser("show", parents=[service], help="one refused record, with its message")
    one.add_argument("--topic", metavar="T", required=True, help="the topic it was read from")
    one.add_argument("--partition", metavar="P", type=int, required=True)
    one.add_argument("--offset", metavar="O", type=int, required=True)
    one.add_argument("--headers", action="store_true", help="also its headers, read from its DLQ copy on Kafka")

    replay = commands.add_parser(
        "replay", parents=[service, filters], help="send refused records back to their topic, once the cause is fixed"
    )
    replay.add_argument("--dry-run", action="store_true", help="say which records would be replayed, send nothing")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    uses_kafka = args.command == "replay" or getattr(args, "headers", False)  # the DLQ copy's headers
    settings = settings_or_exit("./dev dead-letters", "connects" if uses_kafka else "none")
    database_url = settings.database_url
    schemas, named = tool_schemas("./dev dead-letters", args.service, SERVICES, settings)
    try:
        found = asyncio.run(run(args, database_url, schemas, named))
    except (ReplayUnderWay, SchemaAbsent) as exc:
        print(f"./dev dead-letters: {exc}", file=sys.stderr)
        return 1
    except (TimeoutError, KafkaError) as exc:  # first: a TimeoutError is an OSError
        print(f"./dev dead-letters: Kafka did not answer: {type(exc).__name__}: {redact(str(exc))}", file=sys.stderr)
        return 1
    except SESSION_ENDED as exc:
        why = redact(str(exc)) or type(exc).__name__
        print(
            f"./dev dead-letters: its session with PostgreSQL ended ({why}): run it again "
            "(a record it replayed is marked, and not sent again)",
            file=sys.stderr,
        )
        return 1
    except (OSError, asyncpg.PostgresError) as exc:
        print(
            f"./dev dead-letters: cannot read {redact(database_url)} (DATABASE_URL): {redact(str(exc))}",
            file=sys.stderr,
        )
        return 1
    return 0 if found or args.command != "show" else 1


if __name__ == "__main__":
    sys.exit(main())
