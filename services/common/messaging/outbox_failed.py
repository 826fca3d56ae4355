"""`./dev outbox`: what the relays set aside because Kafka refused it for good, and putting it back.

    ./dev outbox list [--service NAME]             count and list the set-aside records
    ./dev outbox retry [--service NAME [--seq N …]] put them back in the outbox (all, or these)
    ./dev outbox drop --service NAME --seq N …     forget these records, after reading them

A record lands in `outbox_failed` when Kafka answers that it will never accept it (over the
topic's size limit, an invalid topic). Once the cause is fixed (a topic's max.message.bytes
raised, say), `retry` moves it back to the outbox under the seq it was set aside with (its
place among its key's records, which no other record holds: a seq is handed out once), where
the running service's relay publishes it within OUTBOX_POLL_MS, before any record that came
after it, with an `outbox-retry` header holding that seq; moved in one transaction, a record is
retried once. `retry` and `drop` write as the service does, under its writer lock: never in
the middle of a rebuild's switch, whose copy of the set-aside records would miss what they
changed. Consumers keep the highest version or the latest time, so a record published late
cannot override newer state; but a topic that keeps only each key's last record
(alertes.etat.v1, the profiles, the coverages) would keep it in place of the newer one: a
set-aside record of such a topic after which the relay published a later record of its key is
marked superseded, listed so, and never retried (one still waiting in the outbox goes out
after the retried one, by its seq): `retry` passes over it, `retry --seq` naming it does
nothing and exits 1. A record's twin (an alert event's copy on alertes.etat.v1,
outbox.Twin) is set aside with it and superseded on its own: its record superseded, `retry`
puts back the twin alone; its twin superseded, nothing, for the record is that alert's event on
the stream, which its later event reached with the twin's: retried, it would follow it (a raise
after its resolution, which a dashboard would show open). Values are not printed: they may
hold partners' data; `--show-key` prints record keys, but a DLQ copy's only when it is a UAI (a
partner's `formation-suivie` is keyed by its teacher_id). A DLQ copy set aside is deleted
INBOX_RETENTION_DAYS after it was made, as its dead letter is (storage/retention.py).
"""

import argparse
import asyncio
import sys

import asyncpg

from contracts import is_valid_uai
from services.common.messaging.dlq import RETRIED, key_text
from services.common.messaging.outbox import dump_headers, load_headers, relay_lock
from services.common.pipeline import writer_lock
from services.common.runtime.secrets import redact
from services.common.runtime.settings import settings_or_exit, tool_schemas
from services.common.storage.db import SESSION_ENDED, SchemaAbsent, connect_for_tool, present_schemas

SERVICES = ("formation", "equipement", "ressources")


async def _list(conn: asyncpg.Connection, schema: str, show_key: bool) -> int:
    rows = await conn.fetch(
        f"SELECT seq, topic, key, length(record_value) AS size, created_at, failed_at, error, superseded_at, "
        f"twin_topic, twin_superseded_at "
        f'FROM "{schema}".outbox_failed ORDER BY seq'
    )
    print(f"{schema}: {len(rows)} record(s) set aside")
    for r in rows:
        key = f" key={_shown_key(r['topic'], r['key'])}" if show_key and r["key"] is not None else ""
        print(
            f"  seq={r['seq']} topic={r['topic']} size={r['size']}{key} created={r['created_at']:%Y-%m-%dT%H:%M:%S%z}"
            f" failed={r['failed_at']:%Y-%m-%dT%H:%M:%S%z}\n    {r['error']}"
        )
        if r["twin_topic"] is not None:
            print(f"    and its twin on {r['twin_topic']}")
        if r["superseded_at"] is not None or r["twin_superseded_at"] is not None:
            print(f"    {_superseded(r)}")
    return len(rows)


def _shown_key(topic: str, key: bytes) -> str:
    """A key as `list --show-key` prints it: a DLQ copy's is a partner's, maybe a teacher_id."""
    text = key_text(key) or ""
    return repr(text) if not topic.endswith(".dlq") or is_valid_uai(text) else "(clé d'un partenaire, non montrée)"


def _superseded(row: asyncpg.Record) -> str:
    """What `retry` makes of a row with a superseded part: the record, or its twin (outbox.Twin)."""
    parts = [(p, row[f"{p}superseded_at"], row[f"{p}topic"]) for p in ("", "twin_") if row[f"{p}superseded_at"]]
    said = "; ".join(
        f"{'its twin ' if p else ''}superseded ({at:%Y-%m-%dT%H:%M:%S%z}): a later record of its key went out on "
        f"{topic}, which keeps only a key's last record"
        for p, at, topic in parts
    )
    if row["twin_superseded_at"] is None and row["twin_topic"] is not None:
        return f"{said}; its twin on {row['twin_topic']} retried alone"
    if row["superseded_at"] is None:
        return f"{said}, the alert's later state; not retried, nor the record on {row['topic']} (drop it)"
    return f"{said}; not retried (drop it)"


RETRY = RETRIED
"""On a record put back by `retry`: the seq it was set aside with, so that it is recognisable."""


def _marked(row: asyncpg.Record) -> str:
    """The stored headers plus the retry marker, last (a second retry's replaces the first's).
    Only our marker goes: a partner's header of that name, inside a DLQ copy, stays where it was
    (dlq.replayed_headers sends it back as it came)."""
    headers = list(load_headers(row["headers"]))
    while headers and headers[-1][0] == RETRY:
        headers.pop()
    return dump_headers((*headers, (RETRY, str(row["seq"]).encode())))


async def _retry(conn: asyncpg.Connection, schema: str, seqs: list[int] | None) -> int:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", writer_lock(schema))
        # After the relay's round in flight, before its next: a record of the key published by
        # that round marks the set-aside one superseded (outbox.py); else, retried, it would go
        # out in the next round, after that later record.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", relay_lock(schema))
        await _all_there(conn, schema, seqs)
        where = "($1::bigint[] IS NULL OR seq = ANY($1::bigint[]))"
        superseded = await conn.fetch(
            f'SELECT * FROM "{schema}".outbox_failed '
            f"WHERE {where} AND (superseded_at IS NOT NULL OR twin_superseded_at IS NOT NULL) ORDER BY seq",
            seqs,
        )
        if seqs and (wholly := [r["seq"] for r in superseded if _nothing_left(r)]):
            raise SeqSuperseded(
                f"{schema}: seq {', '.join(map(str, wholly))} superseded, never retried (./dev outbox list says "
                "why; drop it with ./dev outbox drop): nothing done"
            )
        for r in superseded:
            print(f"{schema}: seq={r['seq']} {_superseded(r)}")
        moved = await conn.fetch(
            f'DELETE FROM "{schema}".outbox_failed WHERE {where} '
            "AND twin_superseded_at IS NULL AND (superseded_at IS NULL OR twin_topic IS NOT NULL) RETURNING *",
            seqs,
        )
        await conn.executemany(
            f'INSERT INTO "{schema}".outbox (seq, topic, key, record_value, twin_topic, twin_key, twin_ends, headers) '
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            [(r["seq"], *_retried(r), _marked(r)) for r in moved],
        )
    print(f"{schema}: {len(moved)} record(s) back in the outbox")
    return len(moved)


class SeqAbsent(Exception):
    """Seqs asked for that no set-aside record has (a retry's record moved back already, or a
    seq read before a rebuild numbered them again): nothing is done, the others neither."""


class SeqSuperseded(Exception):
    """Seqs asked for (`retry --seq`) of which nothing can go back (`_nothing_left`: the record
    superseded and no twin, or the twin superseded), so the retry asked for cannot be done;
    nothing is done, the others neither."""


def _nothing_left(row: asyncpg.Record) -> bool:
    """Whether nothing of a set-aside row goes back: its record is superseded and it has no twin,
    or its twin is (the module's docstring)."""
    if row["twin_superseded_at"] is not None:
        return True
    return row["superseded_at"] is not None and row["twin_topic"] is None


async def _all_there(conn: asyncpg.Connection, schema: str, asked: list[int] | None) -> None:
    """SeqAbsent, in the caller's transaction before it changes anything, unless every seq asked
    for is a set-aside record's."""
    if not asked:
        return
    there = {r["seq"] for r in await conn.fetch(f'SELECT seq FROM "{schema}".outbox_failed WHERE seq = ANY($1)', asked)}
    if missing := sorted(set(asked) - there):
        raise SeqAbsent(
            f"{schema}: no set-aside record of seq {', '.join(map(str, missing))} (./dev outbox list shows them): "
            "nothing done"
        )


def _retried(row: asyncpg.Record) -> tuple[str, bytes | None, bytes | None, str | None, bytes | None, bool]:
    """A set-aside row's outbox row, but for a superseded record (topic, key, value, twin_topic,
    twin_key, twin_ends): the record and its twin, the record alone (it has none), or the twin
    alone (a row whose twin is superseded does not go back). One row,
    under the set-aside one's seq: the twin alone that ends its key is its own twin (its value
    twice, then its tombstone), not two rows, the second of which would go after the key's
    later records."""
    if row["superseded_at"] is None:
        return (row["topic"], row["key"], row["record_value"], row["twin_topic"], row["twin_key"], row["twin_ends"])
    ends = (row["twin_topic"], row["twin_key"], True) if row["twin_ends"] else (None, None, False)
    return (row["twin_topic"], row["twin_key"], row["record_value"], *ends)


async def _drop(conn: asyncpg.Connection, schema: str, seqs: list[int]) -> int:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", writer_lock(schema))
        await _all_there(conn, schema, seqs)
        dropped = await conn.fetch(
            f'DELETE FROM "{schema}".outbox_failed WHERE seq = ANY($1::bigint[]) RETURNING seq, topic, created_at',
            seqs,
        )
    for r in dropped:  # which record each seq named: a rebuild numbers them again
        print(f"{schema}: dropped seq={r['seq']} topic={r['topic']} created_at={r['created_at'].isoformat()}")
    print(f"{schema}: {len(dropped)} record(s) dropped")
    return len(dropped)


async def run(
    command: str,
    schemas: list[str],
    database_url: str,
    seqs: list[int] | None,
    show_key: bool = False,
    named: bool = False,
) -> int:
    """`command` on `schemas` (`named`: the operator named them, each must be there)."""
    conn = await connect_for_tool(database_url)
    try:
        total = 0
        for schema in await present_schemas(conn, schemas, "outbox_failed", named):
            if command == "list":
                total += await _list(conn, schema, show_key)
            elif command == "retry":
                total += await _retry(conn, schema, seqs)
            else:
                total += await _drop(conn, schema, seqs or [])
        return total
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="./dev outbox", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=("list", "retry", "drop"))
    parser.add_argument(
        "--service", choices=SERVICES, action="append", help="a service (repeatable; default: all three)"
    )
    parser.add_argument("--seq", type=int, action="append", help="a record's seq (repeatable; default: all)")
    parser.add_argument("--show-key", action="store_true", help="list: print record keys too")
    args = parser.parse_args(argv)
    if args.command == "drop" and not (args.seq and args.service and len(args.service) == 1):
        parser.error("drop needs one --service and the --seq of each record to forget")
    if args.command == "retry" and args.seq and not (args.service and len(args.service) == 1):
        parser.error("retry --seq needs one --service: each service numbers its records on its own")
    settings = settings_or_exit("./dev outbox", kafka="none")  # the outbox's rows in PostgreSQL only
    database_url = settings.database_url
    schemas, named = tool_schemas("./dev outbox", args.service, SERVICES, settings)
    try:
        asyncio.run(run(args.command, schemas, database_url, args.seq, args.show_key, named))
    except (SchemaAbsent, SeqAbsent, SeqSuperseded) as exc:
        print(f"./dev outbox: {exc}", file=sys.stderr)
        return 1
    except SESSION_ENDED as exc:  # a restart meanwhile: each change is one transaction, rolled back
        why = redact(str(exc)) or type(exc).__name__
        print(f"./dev outbox: its session with PostgreSQL ended ({why}): run it again", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"./dev outbox: cannot read {redact(database_url)} (DATABASE_URL): {redact(str(exc))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
