"""PostgreSQL access: one asyncpg pool per service, confined to the service's own schema,
and the migrations the service applies at start.

Migrations are the numbered `*.sql` files of the service's `migrations/` folder plus the shared
ones (inbox, outbox, dead letters, référentiel). Each runs once, in order, under an advisory
lock so two replicas starting together do not race; its text's checksum is kept with it, and a
file changed since it was applied is said at every start (`migration.changed`; former texts
that differ by comments alone aside: FORMER_CHECKSUMS). Migrations committed then deleted
before any release (WITHDRAWN) are known by name, so that a schema that applied one is not
taken for a newer version's.
"""

import asyncio
import hashlib
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy
from pydantic_core import to_json

log = structlog.get_logger(__name__)

Conn = asyncpg.Connection | PoolConnectionProxy
"""A connection, whether opened alone or acquired from a pool."""
T = TypeVar("T")


REFUSED_BY_DATABASE = (asyncpg.DataError, asyncpg.ProgramLimitExceededError, asyncpg.IntegrityConstraintViolationError)
"""What PostgreSQL answers a statement about the values it was given (a NUL character, a number
beyond its column, a key beyond an index's size): a record's fault (pipeline: isolated, then
dead-lettered alone)."""


class CommitRefused(Exception):
    """PostgreSQL refused a transaction's COMMIT for a program limit (its cause, SQLSTATE class
    54): the server's state, not a value of the transaction's (its NOTIFY queue full, 54000,
    which every transaction that notified meets until it drains). Taken for a record's fault,
    every record of the batches met it and was dead-lettered (audit s66 #2). A deferred check
    refused at COMMIT (classes 22, 23) is a value's, raised as it is."""


DATABASE_AWAY = (
    CommitRefused,
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    # Shutting down, starting, dropped, full, out of connections, read-only (a standby): the
    # server's state, not what one statement met (a check, a uniqueness: REFUSED_BY_DATABASE,
    # above), which isolating the records gets past.
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.DatabaseDroppedError,
    asyncpg.DiskFullError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ReadOnlySQLTransactionError,
)
"""PostgreSQL away or refusing all work (a TimeoutError is an OSError): every record would fail
alike, and a scrape says so by its figure alone (runtime/health.py)."""


def json_rows(rows: Iterable[Mapping[str, Any]]) -> str:
    """A batch's rows as one JSON parameter, for `json_to_recordset($n::json) AS r(col type, ...)`:
    pydantic-core encodes it at once (dates and times in ISO 8601, which PostgreSQL reads),
    where asyncpg checks and encodes an array parameter element by element."""
    return to_json(list(rows)).decode()


@asynccontextmanager
async def transaction(conn: Conn, *first: str) -> AsyncIterator[Conn]:
    """A transaction whose BEGIN travels with `first`, statements without parameters (a lock, a
    SET LOCAL), in one round trip: asyncpg's `conn.transaction()` sends BEGIN alone. Committed
    when the block ends, rolled back when it raises. Not to be nested in asyncpg's own, nor to
    hold one: asyncpg does not know about this one."""
    await conn.execute("; ".join(("BEGIN", *first)))  # simple protocol: several statements, one trip
    try:
        yield conn
    except BaseException:
        try:
            await conn.execute("ROLLBACK")
        except Exception:  # the connection is broken: the pool closes it, and the server rolls back
            conn.terminate()
        raise
    try:
        await conn.execute("COMMIT")
    except asyncpg.ProgramLimitExceededError as exc:
        raise CommitRefused(f"COMMIT refused: {type(exc).__name__}, SQLSTATE {exc.sqlstate}") from exc


_SHARED_MIGRATIONS = Path(__file__).parent.parent / "migrations"  # services/common/migrations


def advisory_key(name: str) -> int:
    """A stable 64-bit key for pg_advisory locks named by a string."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


async def relation(conn: Conn | asyncpg.Pool, schema: str, name: str) -> str | None:
    """`schema`'s table or sequence `name`, qualified and quoted, if it exists."""
    return await conn.fetchval("SELECT to_regclass(format('%I.%I', $1::text, $2::text))::text", schema, name)


DEAD_PEER_PROBES = (30, 10, 3)
"""TCP keep-alive on the services' connections: the first probe after 30 s without traffic, then
every 10 s (Linux gives the connection up at DEAD_PEER_UNACKED_MS then, not after a count)."""
DEAD_PEER_UNACKED_MS = 60_000
"""TCP_USER_TIMEOUT: a connection whose sent data, or keep-alive probes, stay unanswered this
long is given up. (Recent Linux counts a zero window too, data waiting while the server
reads nothing: the services' one COPY, the outbox's, waits for its table's lock before its rows
are sent, and its rows' keys come from a sequence, so none of them waits on another's.)"""


async def detect_dead_peer(conn: asyncpg.Connection) -> None:
    """Has the kernel give up `conn` once its server is gone without closing it (a host lost, a
    failover, a network cut): else a statement sent before, whose answer never comes, waits
    until TCP gives up (hours without keep-alive; about 15 minutes with data unacknowledged), the
    service's consumer or relay held meanwhile while its probes, on new connections, pass.
    asyncpg sets neither option (its issue 606); libpq's `keepalives_*` and `tcp_user_timeout`
    are the same. A Unix socket needs none; a system without one of the options goes without it."""
    sock = conn._transport.get_extra_info("socket")  # type: ignore[attr-defined]  # asyncpg gives no other way
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    idle, interval, count = DEAD_PEER_PROBES
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", idle),
        ("TCP_KEEPINTVL", interval),
        ("TCP_KEEPCNT", count),
        ("TCP_USER_TIMEOUT", DEAD_PEER_UNACKED_MS),
    ):
        if hasattr(socket, name):  # Linux's; macOS has neither TCP_KEEPIDLE nor TCP_USER_TIMEOUT
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def quoted(name: str) -> str:
    """An SQL identifier (a role's, a schema's) as written in a statement."""
    return '"' + name.replace('"', '""') + '"'


async def owner_of(conn: Conn, schema: str) -> str | None:
    """The role owning `schema` (None when absent): the service's own where each has its role
    (README, Security), which an operator's tool acts as when it makes or migrates the schema."""
    return await conn.fetchval(
        "SELECT r.rolname FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner WHERE n.nspname = $1", schema
    )


def sql_name(name: str) -> str:
    """`name`, a role's or a schema's: ValueError if PostgreSQL would cut it (63 bytes) and
    match nothing."""
    if not 0 < len(name.encode()) <= 63:
        raise ValueError(f"{name!r}: a PostgreSQL name of 1 to 63 bytes is expected")
    return name


def do_block(body: str) -> str:
    """`DO` with `body` (PL/pgSQL) quoted by a dollar tag it does not hold: a name written in it
    may hold `$` (PostgreSQL allows it after the first character) without ending it."""
    tag = next(t for t in (f"$feo{n or ''}$" for n in range(len(body) + 1)) if t not in body)
    return f"DO {tag} {body} {tag};"


def given_to_sql(schema: str, owner: str) -> str:
    """SQL giving each table and sequence of `schema` to `owner` (their indexes, and a column's
    sequence, follow their table): a restore's, whose dump's SQL made them its session's."""
    for name in (schema, owner):
        sql_name(name)

    def literal(text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    return (
        do_block(
            "DECLARE r record; BEGIN FOR r IN SELECT c.oid::regclass AS rel, c.relkind FROM pg_class c "
            f"WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = {literal(schema)}) "
            "AND c.relkind IN ('r', 'p', 'S', 'v', 'm') AND NOT EXISTS (SELECT FROM pg_depend d "
            "WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.refclassid = 'pg_class'::regclass "
            "AND d.deptype IN ('a', 'i')) "
            "LOOP EXECUTE format('ALTER %s %s OWNER TO %I', CASE r.relkind WHEN 'S' THEN 'SEQUENCE' "
            "WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END, r.rel, "
            f"{literal(owner)}); END LOOP; END"
        )
        + "\n"
    )


class SchemaAbsent(Exception):
    """A schema an operator named (`--service`, DB_SCHEMA) is not in the database: exit 1. Or a
    service's, which its role may not create (create_pool)."""


async def present_schemas(conn: Conn, schemas: Sequence[str], table: str, named: bool) -> list[str]:
    """Those of `schemas` holding `table` (a service's schema, migrated). One missing: said and
    left out when the tool took every service's by default (a database may hold some only);
    SchemaAbsent when the operator named it, before anything is done."""
    present: list[str] = []
    absent: list[str] = []
    for schema in schemas:
        (present if await relation(conn, schema, table) else absent).append(schema)
    if absent and named:
        raise SchemaAbsent(f"no such service schema in this database: {', '.join(absent)} (DB_SCHEMA names another?)")
    for schema in absent:
        print(f"{schema}: no such service schema in this database", file=sys.stderr)
    return present


TOOL_CONNECT_SECONDS = 30


class DatabaseTimeout(OSError):
    """PostgreSQL did not answer an operator's tool in time (not a TimeoutError: a tool that also
    waits on Kafka must not take it for Kafka's)."""


SERVER_KEEPALIVES = {"tcp_keepalives_idle": 30, "tcp_keepalives_interval": 10, "tcp_keepalives_count": 3}
"""The server's TCP keepalives on the services' and the operators' tools' sessions: a peer silent
30 s is probed every 10 s, and given up after 3 probes unanswered (about a minute). With the
system's (Linux: 7200 s idle, then 9 probes 75 s apart), a session whose host was lost without
closing it (a node lost, a network cut: no FIN), idle in a batch's transaction, kept its inbox
rows and key locks two hours: the replica taking the partitions over waited behind them, its
batch holding the same events, with nothing failing (ops audit s68 #1)."""
KEEPALIVE_SETTINGS = {name: str(seconds) for name, seconds in SERVER_KEEPALIVES.items()}
"""SERVER_KEEPALIVES as settings given at connection (asyncpg's `server_settings`)."""


async def connect_for_tool(database_url: str, **options: Any) -> asyncpg.Connection:
    """An operator's tool's own connection. asyncpg's timeout is an empty TimeoutError: the tools
    printed `error: ` and nothing else, or blamed Kafka; this one says what did not answer. It
    gives up a server gone without closing it, as the services' do (a rebuild's session holds
    the service's writers during its switch: else held until TCP gave up, many minutes).

    Its session is idle for long by design (a restore's or a replay's lock held while the work
    goes on elsewhere, a rebuild's while it replays the log): a deployment's
    `idle_session_timeout` or `idle_in_transaction_session_timeout` would end it, and its locks
    with it, another run then taking them while this one goes on. Both are off for it. And the
    server gives it up within about a minute once the tool's host is gone without closing it (a
    node lost, a network cut: no FIN), by its own TCP keepalives (SERVER_KEEPALIVES): with the
    system's, two hours, during which a rebuild's switch held the service's writers."""
    try:
        conn = await asyncpg.connect(database_url, timeout=TOOL_CONNECT_SECONDS, **options)
    except TimeoutError as e:
        raise DatabaseTimeout(
            f"PostgreSQL (DATABASE_URL) did not answer within {TOOL_CONNECT_SECONDS} s: is it running, "
            "and does nothing between here and it drop the connection?"
        ) from e
    try:
        await detect_dead_peer(conn)
        # idle_session_timeout is PostgreSQL 14's: an older server refuses it (and never ends an idle session).
        idle = ("idle_in_transaction_session_timeout", "idle_session_timeout")
        for setting in idle if conn.get_server_version().major >= 14 else idle[:1]:
            await conn.execute(f"SET {setting} = 0")
        await _no_transaction_timeout(conn)
        for setting, seconds in SERVER_KEEPALIVES.items():  # ignored over a Unix socket
            await conn.execute(f"SET {setting} = {seconds}")
    except BaseException:
        await conn.close()
        raise
    return conn


SESSION_ENDED: tuple[type[Exception], ...] = (
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # the server's notice of the end read in the middle of a statement
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,  # pg_terminate_backend, the server shutting down
    asyncpg.exceptions.CrashShutdownError,
)
"""A session PostgreSQL ended, as the client finds out: at once, or by its next statement (a
session the server ended looks open until the client next reads from it)."""
SESSION_LOST: tuple[type[Exception], ...] = (OSError, *SESSION_ENDED)


async def on_a_session(
    database_url: str, session: asyncpg.Connection, work: Callable[[Any], Awaitable[T]], **options: Any
) -> T:
    """`work`, which may run twice, on a tool's `session`, or on a new one (`options`: its
    connection's) if PostgreSQL ended that one."""
    if not session.is_closed():
        try:
            return await work(session)
        except SESSION_LOST:
            session.terminate()
    again = await connect_for_tool(database_url, **options)
    try:
        return await work(again)
    finally:
        await again.close()


SESSION_LIMITS_OFF = {"statement_timeout": "0", "lock_timeout": "0", "idle_in_transaction_session_timeout": "0"}
"""A pool's sessions without the server's time limits on statements, lock waits and transactions
left idle (the Python work between a batch's statements); PostgreSQL 17's `transaction_timeout`
too, at each connection (`service_session`). `idle_session_timeout` (PostgreSQL 14) is left: a
pool's connection it ends is opened again at its next use."""


async def _no_transaction_timeout(conn: asyncpg.Connection) -> None:
    """A role's or database's `transaction_timeout` off for the session: PostgreSQL 17's (an
    older server refuses the setting, and bounds no transaction), so not a server setting of the
    pool's, given at connection, as SESSION_LIMITS_OFF's are."""
    if conn.get_server_version().major >= 17:
        await conn.execute("SET transaction_timeout = 0")


async def service_session(conn: asyncpg.Connection) -> None:
    """Each new connection of a service's pool (`create_pool`'s `init`), and ressources' live
    stream's listening one (stream.AlertHub, which sets SERVER_KEEPALIVES too). The server gives the
    session up once what it sent stays unacknowledged DEAD_PEER_UNACKED_MS (`tcp_user_timeout`,
    PostgreSQL 12's: an older server refuses it, so not a setting given at connection): its
    keepalives (SERVER_KEEPALIVES) probe only a connection with nothing in flight, and a host lost
    while a batch's answer was on its way left the session, its transaction's locks with it, to
    the system's retransmissions, about 15 minutes (review s68). Not on a tool's session: a
    backup's COPY waits on its output, and Linux counts a window its reader keeps closed as
    unacknowledged too."""
    await detect_dead_peer(conn)
    await _no_transaction_timeout(conn)
    if conn.get_server_version().major >= 12:
        await conn.execute(f"SET tcp_user_timeout = {DEAD_PEER_UNACKED_MS}")  # ignored over a Unix socket


POOL_SIZE = 5
"""A service's connections: its consumer's batch, its relay, its probes (/health, /metrics), and
spare (ressources' read API has a pool of its own: services/ressources/api.py, Reads)."""


async def create_pool(
    database_url: str,
    schema: str,
    *,
    min_size: int = 1,
    max_size: int = POOL_SIZE,
    purpose: str | None = None,
    settings: Mapping[str, str] | None = None,
    command_timeout: float | None = None,
    owner: str | None = None,
) -> asyncpg.Pool:
    """A pool of connections confined to `schema` (created if need be). `purpose` names its
    connections apart in pg_stat_activity (`feo-{schema}-{purpose}`); `settings`: more of the
    server's settings for each of them (a statement timeout, read-only transactions);
    `command_timeout`: seconds a statement's answer is waited for (asyncpg's TimeoutError).
    `owner`: the role `schema` is made for, and which the sessions act as (SET ROLE), when an
    operator's tool makes or migrates a service's schema (a rebuild's, a restore's catch-up):
    what they create is the service's role's, which the service then works on (owner_of)."""
    admin = await asyncpg.connect(database_url)
    try:
        user = await admin.fetchval("SELECT current_user")
        # Created when absent only: PostgreSQL checks CREATE on the database first, even for a
        # schema that exists, and a role given its schema (created for it, AUTHORIZATION it) by a
        # deployment that gives each service its own role has no such right.
        if not await admin.fetchval("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)", schema):
            authorization = f" AUTHORIZATION {quoted(owner)}" if owner else ""
            await admin.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"{authorization}')
    except asyncpg.UniqueViolationError:  # two replicas creating it at once
        pass
    except asyncpg.InsufficientPrivilegeError:
        if owner and owner != user:  # a tool making it for the service's role
            raise SchemaAbsent(
                f"schema {schema!r} absent, and role {user!r} may not create it for {owner!r}, its service's: "
                f"it needs CREATE on the database and to be a member of {owner!r} (python -m deploy.roles)"
            ) from None
        raise SchemaAbsent(
            f"schema {schema!r} absent, and role {user!r} may not create it: "
            f'create it for that role (CREATE SCHEMA "{schema}" AUTHORIZATION ...), or grant it CREATE on the database'
        ) from None
    finally:
        await admin.close()
    return await asyncpg.create_pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        server_settings={
            # A role's or database's limits, which managed servers often set: a batch (2,000
            # records, a UAI's thousands of subscriptions) or a re-evaluation's chunk that always
            # outruns one was taken again for ever, its partition held (audit s66 #4). The caller's
            # `settings` may set one again (the read API's statement timeout).
            **SESSION_LIMITS_OFF,
            **KEEPALIVE_SETTINGS,  # ignored over a Unix socket
            **(settings or {}),
            "search_path": schema,
            "application_name": f"feo-{schema}" + (f"-{purpose}" if purpose else ""),
            # The per-key locks (storage/locks.py) and the relay's rounds read what the previous
            # holder committed: each statement its own snapshot, whatever the database's or
            # role's default (a repeatable-read default missed it silently: audit helper-191 #5).
            # The reads that want one snapshot ask for it (`isolation="repeatable_read"`).
            "default_transaction_isolation": "read committed",
            **({"role": owner} if owner and owner != user else {}),
        },
        reset=_nothing_to_reset,
        init=service_session,
        command_timeout=command_timeout,
    )


async def _nothing_to_reset(conn: asyncpg.Connection) -> None:
    """A released connection is handed on as it is. asyncpg's default reset sends a query on
    every release (advisory locks, cursors, LISTEN, settings back to their defaults): one
    round trip per transaction for state the services never leave on a pooled connection.
    Their locks and settings are the transaction's (pg_advisory_xact_lock, SET LOCAL), its
    cursors close with it, they LISTEN on a connection of their own (ressources' stream), and
    the one session lock, the migrations', is released by the code that takes it. asyncpg
    still rolls back a transaction left open and drops the connection's listeners."""


def migration_names(service_dir: Path) -> list[str]:
    """The migrations of a service's schema this version of the code has, in order, as
    schema_migrations names them."""
    return [name for name, _ in _migration_files(service_dir)]


@dataclass(frozen=True)
class MigrationSkew:
    """How the migrations a schema has applied differ from those this version of the code has."""

    newer: list[str]
    """Applied, unknown to this version: a newer version migrated the schema."""
    older: list[str]
    """This version's, not applied: an earlier version migrated it (the next `migrate` applies them)."""


WITHDRAWN = {
    "common/0016_attente_referentiel_origin.sql": "80ab28c, deleted by 33124ac (3 December 2026)",
    "ressources/0011_reevaluations_reprises.sql": "9d77b33, deleted by a694f44 (3 December 2026)",
}
"""Migrations committed, then deleted minutes later, never released: no version has them, yet a
schema a development build migrated then keeps their row, which made it look migrated by a
newer version for good (`migration.schema_newer` at every start, every rebuild refused, its
backups refused by a restore). Their rows are ignored wherever a schema's migrations are
compared with a version's (`migration_skew`), and kept: what they made is still there, and
harmless to this version (common/0016's index on attente_referentiel (uai, topic, partition,
offset) serves the queries by uai; ressources/0011's columns of reevaluations have defaults).
A name is never used again: a migration's name is its identity."""


def migration_skew(applied: Iterable[str], service_dir: Path) -> MigrationSkew:
    """`applied` (a schema's schema_migrations names: the live schema's, or a backup's) against
    this version's migrations of the service of `service_dir`, WITHDRAWN ones aside. A rebuild
    runs only with the version that migrated the schema (deploy/reconstruire.py), a restore
    refuses a backup of a newer version (deploy/sauvegarde.py), and the services say one
    (`migrate`)."""
    applied, known = set(applied) - WITHDRAWN.keys(), set(migration_names(service_dir))
    return MigrationSkew(newer=sorted(applied - known), older=sorted(known - applied))


def _migration_files(service_dir: Path) -> list[tuple[str, str]]:
    files = sorted(_SHARED_MIGRATIONS.glob("*.sql")) + sorted((service_dir / "migrations").glob("*.sql"))
    return [(f"{f.parent.parent.name}/{f.name}", f.read_text(encoding="utf-8")) for f in files]


FORMER_CHECKSUMS = {
    # 4646add's text; d94663c (25 minutes later, checksums already kept) added a comment line.
    "ressources/0018_alertes_resolues.sql": {"874e270ade41d938f22e2a82398f84b4286e79eacb328f4195cd6207bbe8a812"},
}
"""Checksums of former texts of a migration that differ from its file's by comments alone: a
schema one of them migrated is what the file makes, and is not said changed (`_check_texts`)."""


def checksum(sql: str) -> str:
    """A migration's text's checksum, as schema_migrations keeps it (its line ends as Unix's: a
    checkout that writes CRLF changes no migration)."""
    return hashlib.sha256(sql.replace("\r\n", "\n").encode()).hexdigest()


async def migrate(pool: asyncpg.Pool, schema: str, service_dir: Path) -> None:
    lock_id = advisory_key(f"migrate:{schema}")
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", lock_id)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now(), checksum text)"
            )
            if not await conn.fetchval(
                "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'schema_migrations'::regclass "
                "AND attname = 'checksum' AND NOT attisdropped)"
            ):  # a schema migrated before checksums were kept; altered once (it waits behind a backup)
                await _apply(conn, "schema_migrations.checksum", _CHECKSUM_COLUMN, schema, record=False)
            done = {r["name"]: r["checksum"] for r in await conn.fetch("SELECT name, checksum FROM schema_migrations")}
            files = _migration_files(service_dir)
            for name, sql in files:
                if name not in done:
                    await _apply(conn, name, sql, schema)
                    log.info("migration.applied", migration=name, schema=schema)
            await _check_texts(conn, schema, done, files)
            if newer := migration_skew(done, service_dir).newer:
                # A rollback (`kubectl rollout undo`), or a restore's catch-up run by an older
                # version: migrations this code does not know. During a rolling update the former
                # replicas run on them too (README, Upgrades), so said, not refused.
                log.warning(
                    "migration.schema_newer",
                    schema=schema,
                    migrations=newer,
                    hint="migrated by a newer version, which this one may fail against: roll forward, "
                    "or restore a backup this version made",
                )
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", lock_id)


_CHECKSUM_COLUMN = "ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum text"


async def _check_texts(
    conn: Conn, schema: str, done: Mapping[str, str | None], files: Sequence[tuple[str, str]]
) -> None:
    """Migrations applied before their checksum was kept (by a former version, or one still
    running during a rolling update) take their file's; one whose file changed since it was
    applied is said (`migration.changed`): the schema is what its former text made, which a
    fresh database would not get (a deployed migration is never edited: a new one changes what
    it made). Said at every start, not refused: the change may be a comment."""
    changed, unrecorded = [], []
    for name, sql in files:
        if name in done:
            if done[name] is None:
                unrecorded.append((name, checksum(sql)))
            elif done[name] != checksum(sql) and done[name] not in FORMER_CHECKSUMS.get(name, ()):
                changed.append(name)
    if unrecorded:
        await conn.executemany(
            "UPDATE schema_migrations SET checksum = $2 WHERE name = $1 AND checksum IS NULL", unrecorded
        )
    if changed:
        log.warning(
            "migration.changed",
            schema=schema,
            migrations=changed,
            hint="applied from another text than this version's file: the schema is what the former text "
            "made; a deployed migration is never edited, a new one changes what it made",
        )


MIGRATION_LOCK_TIMEOUT_MS = 3000
"""How long a migration waits for a lock on a table it changes before it gives up and tries
again (MIGRATION_RETRY_SECONDS later). A backup's pg_dump holds every table for its whole run:
waiting behind it, a migration's ALTER TABLE queued every other session's writes on the table
behind its own request (the replicas of the former version, still running, stalled on their
outbox), and the start-up guard ended the process after STARTUP_TIMEOUT_SECONDS, the migration
rolled back, for the next start to do the same."""
MIGRATION_RETRY_SECONDS = 3.0

_applying: dict[str, float] = {}  # schema/name -> when the try of its statements under way began (monotonic)
_applied_seconds = 0.0


def migration_seconds() -> float:
    """Seconds this process has spent in migrations' statements, those under way included: the
    start-up guard does not count them (STARTUP_TIMEOUT_SECONDS bounds a start, and a migration
    that rewrites a large table may take longer: ended at every start, rolled back, it was never
    applied). The wait of a try that gave way to a lock (MIGRATION_LOCK_TIMEOUT_MS) is not in
    them: the guard bounds waits."""
    now = time.monotonic()
    return _applied_seconds + sum(now - since for since in _applying.values())


async def _apply(conn: Conn, name: str, sql: str, schema: str, record: bool = True) -> None:
    """One migration in its transaction, recorded as applied in it with its checksum (unless not
    `record`); tried again for as long as a lock it needs is held by others (each try gives way
    after MIGRATION_LOCK_TIMEOUT_MS)."""
    global _applied_seconds
    tries, key = 0, f"{schema}/{name}"
    log.info("migration.applying", migration=name, schema=schema)
    while True:
        _applying[key], waited = time.monotonic(), False
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = {MIGRATION_LOCK_TIMEOUT_MS}")
                # A role's or database's statement_timeout would stop a long one for good (audit
                # helper-194 #4): it runs as long as it takes, which the start-up guard does not count.
                await conn.execute("SET LOCAL statement_timeout = 0")
                await conn.execute(sql)
                if record:
                    await conn.execute(
                        "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)", name, checksum(sql)
                    )
            return
        except asyncpg.exceptions.LockNotAvailableError:
            waited = True
        finally:
            ran = time.monotonic() - _applying.pop(key)
            # A try that gave way to a lock waited up to MIGRATION_LOCK_TIMEOUT_MS of it: the rest ran.
            _applied_seconds += max(0.0, ran - MIGRATION_LOCK_TIMEOUT_MS / 1000) if waited else ran
        tries += 1  # here only when it gave way to a lock
        log.warning(
            "migration.waiting_for_lock",
            migration=name,
            schema=schema,
            tries=tries,
            retry_in_s=MIGRATION_RETRY_SECONDS,
            hint="another session holds a table it changes (a backup under way, a long transaction)",
        )
        await asyncio.sleep(MIGRATION_RETRY_SECONDS)
