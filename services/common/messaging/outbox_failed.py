"""`./dev outbox`: what the relays set aside because Kafka refused it for good, and putting it back.

    ./dev outbox list [--service NAME]             count and list the set-aside records
    ./dev outbox retry [--service NAME [--seq N …]] put them back in the outbox (all, or these)
    ./dev outbox drop --service NAME --seq N …     forget these records, after reading them

A record lands in `outbox_failed` when Kafka answers that it will never accept it (over the
topic's size limit, an invalid topic). Once the cause is fixed (a topic's max.message.bytes
raised, say), `retry` moves it back to the end of the outbox, where the running service's relay
publishes it within OUTBOX_POLL_MS, with an `outbox-retry` header holding the seq it was set
aside with; moved in one transaction, a record is retried once. `retry` and `drop` write as the
service does, under its writer lock: never in the middle of a rebuild's switch, whose copy of
the set-aside records would miss what they changed. Consumers keep the highest
version or the latest time, so a record published late cannot override newer state; but a
topic that keeps only each key's last record (alertes.etat.v1, the profiles, the coverages)
would keep it in place of the newer one: a set-aside record of such a topic after which the
relay published a later record of its key, or with one waiting in the outbox when `retry`
runs, is marked superseded, listed so, and never retried. Values
are not printed: they may hold partners' data; `--show-key` prints record keys, but a DLQ copy's
only when it is a UAI (a partner's `formation-suivie` is keyed by its teacher_id).
"""

import argparse
import asyncio
import sys

import asyncpg

from contracts import is_valid_uai
from services.common.messaging.dlq import key_text
from services.common.messaging.outbox import COMPACTED, dump_headers, load_headers, relay_lock
from services.common.pipeline import writer_lock
from services.common.runtime.secrets import redact
from services.common.runtime.settings import settings_or_exit

SERVICES = ("formation", "equipement", "ressources")


async def _list(conn: asyncpg.Connection, schema: str, show_key: bool) -> int:
    rows = await conn.fetch(
        f"SELECT seq, topic, key, length(value) AS size, created_at, failed_at, error, superseded_at "
        f'FROM "{schema}".outbox_failed ORDER BY seq'
    )
    print(f"{schema}: {len(rows)} record(s) set aside")
    for r in rows:
        key = f" key={_shown_key(r['topic'], r['key'])}" if show_key and r["key"] is not None else ""
        print(
            f"  seq={r['seq']} topic={r['topic']} size={r['size']}{key} created={r['created_at']:%Y-%m-%dT%H:%M:%S%z}"
            f" failed={r['failed_at']:%Y-%m-%dT%H:%M:%S%z}\n    {r['error']}"
        )
        if r["superseded_at"] is not None:
            print(f"    {_superseded(r)}")
    return len(rows)


def _shown_key(topic: str, key: bytes) -> str:
    """A key as `list --show-key` prints it: a DLQ copy's is a partner's, maybe a teacher_id."""
    text = key_text(key) or ""
    return repr(text) if not topic.endswith(".dlq") or is_valid_uai(text) else "(clé d'un partenaire, non montrée)"


def _superseded(row: asyncpg.Record) -> str:
    return (
        f"superseded ({row['superseded_at']:%Y-%m-%dT%H:%M:%S%z}): a later record of its key went out on "
        f"{row['topic']}, or waits in the outbox to, and that topic keeps only a key's last record; "
        "not retried (drop it)"
    )


RETRY = "outbox-retry"
"""On a record put back by `retry`: the seq it was set aside with, so that it is recognisable."""


def _marked(row: asyncpg.Record) -> str:
    """The stored headers plus the retry marker (a second retry's marker replaces the first's)."""
    headers = [h for h in load_headers(row["headers"]) if h[0] != RETRY]
    return dump_headers((*headers, (RETRY, str(row["seq"]).encode())))


async def _retry(conn: asyncpg.Connection, schema: str, seqs: list[int] | None) -> int:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", writer_lock(schema))
        # After the relay's round in flight, before its next: a record of the key published by
        # that round marks the set-aside one superseded (outbox.py); then a later record of its
        # key still waiting in the outbox would go out before the retried one, which goes last.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", relay_lock(schema))
        where = "($1::bigint[] IS NULL OR seq = ANY($1::bigint[]))"
        waiting = await conn.fetch(
            f'SELECT f.seq, f.topic FROM "{schema}".outbox_failed f WHERE {where} AND f.superseded_at IS NULL '
            f'AND EXISTS (SELECT FROM "{schema}".outbox o WHERE o.topic = f.topic AND o.key = f.key AND o.seq > f.seq)',
            seqs,
        )
        await conn.execute(
            f'UPDATE "{schema}".outbox_failed SET superseded_at = now() WHERE seq = ANY($1::bigint[])',
            [r["seq"] for r in waiting if r["topic"].endswith(COMPACTED)],
        )
        for r in await conn.fetch(
            f'SELECT seq, topic, superseded_at FROM "{schema}".outbox_failed '
            f"WHERE {where} AND superseded_at IS NOT NULL ORDER BY seq",
            seqs,
        ):
            print(f"{schema}: seq={r['seq']} {_superseded(r)}")
        moved = await conn.fetch(
            f'DELETE FROM "{schema}".outbox_failed WHERE {where} AND superseded_at IS NULL '
            "RETURNING seq, topic, key, value, headers",
            seqs,
        )
        await conn.executemany(
            f'INSERT INTO "{schema}".outbox (topic, key, value, headers) VALUES ($1, $2, $3, $4)',
            [(r["topic"], r["key"], r["value"], _marked(r)) for r in sorted(moved, key=lambda r: r["seq"])],
        )
    print(f"{schema}: {len(moved)} record(s) back in the outbox")
    return len(moved)


async def _drop(conn: asyncpg.Connection, schema: str, seqs: list[int]) -> int:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", writer_lock(schema))
        dropped = await conn.execute(f'DELETE FROM "{schema}".outbox_failed WHERE seq = ANY($1::bigint[])', seqs)
    count = int(dropped.split()[-1])
    print(f"{schema}: {count} record(s) dropped")
    return count


async def run(
    command: str, schemas: list[str], database_url: str, seqs: list[int] | None, show_key: bool = False
) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        total = 0
        for schema in schemas:
            if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f'"{schema}".outbox_failed'):
                print(f"{schema}: no such service schema in this database", file=sys.stderr)
                continue
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
    database_url = settings_or_exit("./dev outbox").database_url
    try:
        asyncio.run(run(args.command, args.service or list(SERVICES), database_url, args.seq, args.show_key))
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"./dev outbox: cannot read {redact(database_url)} (DATABASE_URL): {redact(str(exc))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
