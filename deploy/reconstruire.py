"""Rebuilding a service's state from the log, while it runs.

    python -m deploy.reconstruire SERVICE      # formation, equipement or ressources

With the service's own environment (DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS, DB_SCHEMA,
TOPIC_PREFIX, thresholds), for a lost or suspect state, a new replica's schema, or a fix that
needs re-derivation:

1. A fresh schema `<schema>_reconstruit` (dropped if the rebuild fails; one a former rebuild
   left, the database gone meanwhile, is dropped first) replays the service's input topics
   from the beginning, in this process, its publications held back (deploy/rattrapage.py).
   The service keeps running on its schema meanwhile.
2. The switch, short: this process takes the schema's writer lock alone (every writing
   transaction of the service holds it shared: pipeline.writer_lock), so the service writes
   nothing more; publishes what the service's outbox still holds and keeps the service's relay
   out until the end of the switch (outbox.relay_lock); replays into the new schema
   what came since step 1; aligns the new schema with what Kafka says was published, queuing
   only the real differences (an unchanged record or alert is not published again), and takes
   the records Kafka refused for good (outbox_failed, for ./dev outbox); then, in
   one transaction, renames `<schema>` to `<schema>_avant_<UTC time>` and the new one to
   `<schema>`, and ends the service's database sessions (its SSE hub's too). The service's next transaction, on a
   new session, works in the rebuilt schema (sessions find tables by schema name); the batch it
   was waiting with is redelivered (nack) and resumes from the rebuilt schema's positions.
3. The former schema stays, for comparison or to switch back; drop it when done
   (`DROP SCHEMA "<schema>_avant_…" CASCADE`).

Exit codes: 0 rebuilt and switched (also when the rename committed but its answer was lost:
the former schema's name, this run's own, is there), 1 failed (the service keeps its schema:
nothing is renamed before the end, and the half-built one is dropped), 2 bad usage or settings
(one line per problem, as the service says it), 4 switched but the service's sessions could not
be ended (restart the service), 130 interrupted (Ctrl-C: as 1, or as 0 if the switch committed).
"""

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from deploy import rattrapage
from services.common.messaging import dlq
from services.common.messaging.connection import KafkaAccess
from services.common.messaging.outbox import OutboxRelay, relay_lock, relay_producer
from services.common.pipeline import writer_lock
from services.common.runtime.lifecycle import restored_mark
from services.common.runtime.logs import configure_logging
from services.common.runtime.secrets import redact
from services.common.runtime.settings import ServiceSettings, check_environment
from services.common.runtime.spec import ServiceSpec
from services.common.storage.db import (
    SESSION_ENDED,
    MigrationSkew,
    advisory_key,
    connect_for_tool,
    create_pool,
    migrate,
    migration_skew,
    on_a_session,
    owner_of,
)
from services.equipement.app import SPEC as EQUIPEMENT
from services.formation.app import SPEC as FORMATION
from services.ressources.app import SPEC as RESSOURCES

SPECS = {s.name: s for s in (FORMATION, EQUIPEMENT, RESSOURCES)}
T = TypeVar("T")
APPLICATION = "feo-reconstruire"
"""This process's sessions: not the service's, which the switch ends."""
DRAIN_TIMEOUT_SECONDS = 120


class ReconstructionError(RuntimeError):
    """A rebuild that could not be done; the message says why."""


class SwitchedSessionsLeft(RuntimeError):
    """The switch committed, but the service's sessions could not be ended (exit code 4)."""


async def rebuild(spec: ServiceSpec, settings: ServiceSettings) -> str:
    """Rebuild `spec`'s schema from the log and switch the service to it; returns the name the
    former schema was given."""
    live = settings.db_schema or spec.name
    fresh, former = f"{live}_reconstruit", f"{live}_avant_{datetime.now(UTC):%Y%m%d%H%M%S}"
    if len(former) > 63:
        raise ReconstructionError(f"DB_SCHEMA {live!r} is too long to keep the former schema beside it (42 at most)")
    session = await connect_for_tool(settings.database_url, server_settings={"application_name": APPLICATION})
    producer = relay_producer(KafkaAccess.of(settings), APPLICATION)
    try:
        if not await session.fetchval("SELECT pg_try_advisory_lock($1)", advisory_key(f"reconstruire:{live}")):
            raise ReconstructionError(f"a rebuild of schema {live!r} is already under way")
        if not await session.fetchval("SELECT pg_try_advisory_lock_shared($1)", rattrapage.RESTORE_LOCK):
            raise ReconstructionError("a restore of this database is under way: nothing done")
        if not await _schema_exists(session, live):
            raise ReconstructionError(f"schema {live!r} does not exist: nothing to rebuild (check DB_SCHEMA)")
        owner = await owner_of(session, live)  # the service's role, where each has its own: the rebuilt schema's too
        await _migrated_if_restored(session, spec, settings, live, owner)
        await _same_migrations(session, spec, live)
        try:  # the replay reads what only an operator may: found out before a schema is made
            await rattrapage.check_access(settings, [spec])
        except rattrapage.AccesInsuffisant as e:
            raise ReconstructionError(f"nothing rebuilt: {e}") from None
        await session.execute(f'DROP SCHEMA IF EXISTS "{fresh}" CASCADE')
        queued: int | str
        try:
            queued = await _build_and_switch(spec, settings, session, producer, live, fresh, former, owner)
        except BaseException as e:
            # The rename's COMMIT may have been done though its answer was lost (the session cut
            # then): `former`, named for this run, exists only if it was. Told "the service keeps
            # its schema", the operator left the service's sessions on the schemas as they were
            # before the rename, its cached statements writing into the former one.
            if not await _switched(settings, session, former):
                await _drop_half_built(settings, session, fresh)
                raise
            say(f"the switch committed, though its answer was lost ({type(e).__name__}): ending the service's sessions")
            queued = "an unknown number of"
        try:
            ended = await _on_a_session(
                settings,
                session,
                lambda conn: conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name = ANY($1::text[])",
                    [f"feo-{live}", f"feo-{live}-sse"],  # the SSE hub's session too: it reconnects to the new journal
                ),
            )
        except Exception as e:  # the database away after the switch: not "the service keeps its schema"
            raise SwitchedSessionsLeft(
                f"the switch is done ({spec.name}'s schema {live} is the rebuilt one, the former one is {former}), "
                f"but the service's sessions could not be ended ({type(e).__name__}: {redact(str(e))}): restart "
                f"{spec.name} now, so that its next transactions start on new sessions"
            ) from e
        say(
            f"{spec.name} now works in the rebuilt schema {live} ({queued} records differed from what was "
            f"published and are queued; {ended} sessions of the service ended); the former one is {former}: "
            f'drop it once checked (DROP SCHEMA "{former}" CASCADE): the purges of the inbox and the '
            "dead letters no longer reach it, and backups hold it"
        )
        return former
    finally:
        await producer.stop()
        await session.close()  # releases the locks


async def _migrated_if_restored(
    session: asyncpg.Connection, spec: ServiceSpec, settings: ServiceSettings, live: str, owner: str | None
) -> None:
    """A schema a restore marked (a backup's, not caught up with the log: a DB_SCHEMA's, which
    the restore does not catch up) from before this version's latest migrations is migrated by
    this version first: no replica runs on it (a service refuses to start on a marked schema,
    before it migrates), and the rebuild, which refused a schema of another version, was the
    only way back for it, which the service's start advises. One of a newer version is left
    to _same_migrations (refused)."""
    if not await restored_mark(session, live):
        return
    skew = await _skew(session, spec, live)
    if not skew.older or skew.newer:
        return
    say(f"{live} was restored from a backup of an earlier version: migrated first ({', '.join(skew.older)})")
    pool = await create_pool(settings.database_url, live, owner=owner)
    try:
        await migrate(pool, live, spec.package_dir)
    finally:
        await pool.close()


async def _skew(session: asyncpg.Connection, spec: ServiceSpec, live: str) -> MigrationSkew:
    applied = [r["name"] for r in await session.fetch(f'SELECT name FROM "{live}".schema_migrations')]
    return migration_skew(applied, spec.package_dir)


async def _same_migrations(session: asyncpg.Connection, spec: ServiceSpec, live: str) -> None:
    """The rebuilt schema is migrated by this tool's version of the code; the service's replicas
    migrated theirs at their start and never again: a schema from another version switched in
    under them failed their statements (a column they write missing, or renamed), batch after
    batch. So the rebuild runs with the version the service runs, which has applied exactly
    the migrations this one has."""
    skew = await _skew(session, spec, live)
    if not skew.newer and not skew.older:
        return
    raise ReconstructionError(
        f"nothing rebuilt: schema {live!r} was migrated by another version of {spec.name} than this one"
        + (f" (it has {', '.join(skew.newer)}, which this version does not)" if skew.newer else "")
        + (f" (this version has {', '.join(skew.older)}, which it has not)" if skew.older else "")
        + f": run the rebuild with the version {spec.name} runs"
    )


async def _build_and_switch(
    spec: ServiceSpec,
    settings: ServiceSettings,
    session: asyncpg.Connection,
    producer: AIOKafkaProducer,
    live: str,
    fresh: str,
    former: str,
    owner: str | None,
) -> int:
    """Steps 1 and 2 up to the rename: `fresh` built from the log, then put in `live`'s place;
    how many records the alignment queued."""
    cible = await rattrapage.ouvrir(spec, settings, fresh, producer, owner)
    try:
        say(f"replaying {', '.join(spec.consumes)} into schema {fresh}")
        await rattrapage.rattraper(cible, say)
        say(f"switching: {live}'s writers held while the last records are replayed")
        await session.execute("SELECT pg_advisory_lock($1)", writer_lock(live))
        # Again, its writers and its migrations held (a replica starting waits, then migrates the
        # rebuilt schema by its name): a replay takes hours at national scale, and the service
        # upgraded meanwhile (its new replicas migrating the live schema) would get a schema of
        # the former version switched in under them.
        await session.execute("SELECT pg_advisory_lock($1)", advisory_key(f"migrate:{live}"))
        await _same_migrations(session, spec, live)
        pending: set[dlq.Origin] = set()
        if await restored_mark(session, live):
            # A backup's outbox, of records published since (or superseded: a stale profile
            # would stand for its key on a compacted topic): not sent. The alignment below
            # queues whatever Kafka lacks, and the DLQ copies the restore found unsent.
            say(f"{live} was restored and not caught up with the log: its outbox, the backup's, is not published")
            pending = await rattrapage.pending_dead_letters(session, live, spec, settings)
        else:
            await _drain(settings, live, producer)
        # The service's relay stays out until its sessions are ended: one that read the
        # rebuilt outbox between the rename and the end of its session would publish its
        # records, then see its deletion rolled back and publish them again.
        await session.execute("SELECT pg_advisory_lock($1)", relay_lock(live))
        await rattrapage.rattraper(cible, say)
        # The records Kafka refused for good (for ./dev outbox), numbered again in the rebuilt
        # outbox's sequence: theirs would be handed out again by it, started afresh, to records
        # the alignment queued or the service will write; one of those set aside in turn would
        # break outbox_failed's key, and the relay would fail on it at every round. Numbered
        # before the alignment queues its records: on a compacted topic, one of those going out
        # marks a set-aside record of its key as superseded (a later seq), never to be retried.
        columns = (
            "topic, key, record_value, headers, twin_topic, twin_key, twin_ends, error, created_at, failed_at, "
            "superseded_at, twin_superseded_at"
        )
        sequence = await session.fetchval("SELECT pg_get_serial_sequence($1, 'seq')", f'"{fresh}".outbox')
        await session.execute(
            f'INSERT INTO "{fresh}".outbox_failed (seq, {columns}) '
            f'SELECT nextval($1::regclass), {columns} FROM "{live}".outbox_failed ORDER BY seq',
            sequence,
        )
        queued = await rattrapage.accorder(
            cible,
            await rattrapage.journal_floor(session, live),
            pending=pending,
            handled_before=await rattrapage.handled_by(session, live),
        )
        await carry_dead_letters(session, live, fresh)
    finally:
        await cible.close()
    async with session.transaction():
        await session.execute(f'ALTER SCHEMA "{live}" RENAME TO "{former}"')
        await session.execute(f'ALTER SCHEMA "{fresh}" RENAME TO "{live}"')
    return queued


async def carry_dead_letters(session: asyncpg.Connection, live: str, fresh: str) -> None:
    """The refusals as the service logged them, into the rebuilt schema: when each came, whether an
    operator replayed it (replayed once: ./dev dead-letters), and when one that waited for its
    établissement was judged again, which the replay cannot know (the live judgement taken
    whole; without one, the rebuild's own replay's, if it judged the record again), and when a
    replay found its DLQ copy gone (copy_missing_at: the rebuild sends no copy of a record the
    service handled, so it stays gone, and a replay would take it among the oldest again, in the
    place of others under its --limit). One the live schema settled waits no longer in the rebuilt one."""
    columns = 'topic, partition, "offset", reason, message, received_at, source, id, type, subject, key'
    settled = "replayed_at, accepted_at, rejudged_at, copy_missing_at"
    live_judged = "EXCLUDED.accepted_at IS NOT NULL OR EXCLUDED.rejudged_at IS NOT NULL"
    await session.execute(
        f'INSERT INTO "{fresh}".dead_letters AS d ({columns}, {settled}) '
        f'SELECT {columns}, {settled} FROM "{live}".dead_letters '
        'ON CONFLICT (topic, partition, "offset") DO UPDATE '
        "SET received_at = EXCLUDED.received_at, replayed_at = EXCLUDED.replayed_at, "
        "copy_missing_at = EXCLUDED.copy_missing_at, "
        + ", ".join(
            f"{column} = CASE WHEN {live_judged} THEN EXCLUDED.{column} ELSE d.{column} END"
            for column in ("accepted_at", "rejudged_at", "reason", "message")
        )
    )
    await session.execute(
        f'DELETE FROM "{fresh}".attente_referentiel a USING "{fresh}".dead_letters d '
        'WHERE (a.topic, a.partition, a."offset") = (d.topic, d.partition, d."offset") '
        "AND (d.replayed_at IS NOT NULL OR d.accepted_at IS NOT NULL OR d.rejudged_at IS NOT NULL)"
    )


async def _on_a_session(
    settings: ServiceSettings, session: asyncpg.Connection, work: Callable[[Any], Awaitable[T]]
) -> T:
    return await on_a_session(settings.database_url, session, work, server_settings={"application_name": APPLICATION})


async def _schema_exists(conn: asyncpg.Connection, name: str) -> bool:
    return await conn.fetchval("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)", name)


async def _switched(settings: ServiceSettings, session: asyncpg.Connection, former: str) -> bool:
    """Whether this run's rename committed (its name for the former schema exists). Unknown (the
    database away): said, and taken as not."""
    try:
        return await _on_a_session(
            settings,
            session,
            lambda conn: _schema_exists(conn, former),
        )
    except Exception as e:
        say(f"whether the switch committed is unknown ({type(e).__name__}): it did if schema {former} exists")
        return False


async def _drop_half_built(settings: ServiceSettings, session: asyncpg.Connection, fresh: str) -> None:
    """A rebuild that failed before its switch leaves nothing behind: its schema, as far as it
    got, is dropped (it could be GBs, and is of no use: the next rebuild starts from scratch),
    over a new session if PostgreSQL ended this one (a restart during the replay). If even that
    fails (the database gone), the next rebuild drops it first."""
    try:
        await _on_a_session(settings, session, lambda conn: conn.execute(f'DROP SCHEMA IF EXISTS "{fresh}" CASCADE'))
    except Exception as e:
        say(f"the half-built schema {fresh} is left ({type(e).__name__}): the next rebuild drops it first")
    else:
        say(f"rebuild failed: the half-built schema {fresh} was dropped; the service keeps its schema")


async def _drain(settings: ServiceSettings, schema: str, producer: AIOKafkaProducer) -> None:
    """Publish what the service's outbox still holds (its relay may be doing it too: they take
    turns under the relay's lock), so that Kafka holds everything the service published."""
    session = {"search_path": schema, "application_name": APPLICATION}
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1, server_settings=session)
    try:
        relay = OutboxRelay(pool, producer, schema, batch=settings.outbox_batch_records)
        deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
        while await relay.pending():
            if time.monotonic() > deadline:
                raise ReconstructionError(f"the outbox of {schema} is not drained after {DRAIN_TIMEOUT_SECONDS} s")
            if not await relay.drain_once():
                await asyncio.sleep(0.1)
        if absent := relay.absent:
            raise ReconstructionError(
                f"the outbox of {schema} holds records for topics Kafka does not have or will not let it "
                f"write: {', '.join(absent)}; make them (or grant the writes), then run it again"
            )
    finally:
        await pool.close()


def say(line: str) -> None:
    print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.reconstruire",
        description="Rebuild a service's state from its input topics into a fresh schema, then switch the "
        "running service to it (the service's environment: DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS, DB_SCHEMA…).",
    )
    parser.add_argument("service", choices=sorted(SPECS))
    args = parser.parse_args(argv)
    spec = SPECS[args.service]
    if problems := check_environment(os.environ, [spec.settings]):
        print("\n".join(problems), file=sys.stderr)
        return 2
    settings = spec.settings()
    configure_logging(f"reconstruire-{spec.name}", settings.log_format, "WARNING", settings.library_log_level)
    try:
        asyncio.run(rebuild(spec, settings))
    except SESSION_ENDED as e:  # PostgreSQL restarted meanwhile, most likely
        why = redact(str(e)) or type(e).__name__
        print(f"error: the rebuild's session with PostgreSQL ended ({why}): run it again", file=sys.stderr)
        return 1
    except SwitchedSessionsLeft as e:
        print(f"error: {e}", file=sys.stderr)
        return 4
    except (ReconstructionError, rattrapage.JournalIncomplet, OSError, asyncpg.PostgresError, KafkaError) as e:
        print(f"error: {redact(str(e)) or type(e).__name__}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # what was left is said above (rebuild failed, or the switch committed)
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
