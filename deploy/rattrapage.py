"""Catching a service's schema up with the log, its publications held back, then publishing
only what differs from what Kafka already holds.

A rebuild (`deploy.reconstruire`: a fresh schema) and a restore (`deploy.sauvegarde`: an older
backup) both leave a schema behind the log. `rattraper` replays the service's input topics
into it from its stored positions (storage/positions.py; from the beginning when it has none)
with the service's own pipeline, in this process, with no consumer group and no relay: what the
replay would publish stays in the schema's outbox. Then `accorder` makes the schema's memory of
its publications what Kafka says was published, and lets the service's own rules publish the
real differences, with the ids they would have had:

- equipement, formation: `publies` takes the highest version of every key on the service's
  compacted topic, and its groups' sequence goes past the highest group there; then each key
  whose replayed content differs is published once more, as the next version, a UAI's in one
  group (services/common/storage/derived.py); the others publish nothing. What Kafka holds is
  staged in temporary tables (`_Scratch`), not held in memory.
- ressources: `alertes` takes, per alert_id, its last event on alertes.compatibilite.v1 or its
  table alertes.etat.v1 (open or resolved, its raise count, its content); the table gets what
  it lacks (an open alert's last event, a resolved one's tombstone: a deployment from before
  the table fills it so); then every subscribed pair is evaluated again
  (handlers.Reevaluations): an alert that did not change is not announced again, one that did
  is raised with its next cycle's id or resolved with its cycle's. The alert journal (SSE)
  keeps only what was announced: the replay's entries are dropped, and its next ids go past
  every id handed out before, in this schema or in the one it replaces (`journal_allocated`,
  read by the caller while that schema's writers are held or stopped: a rolled-back
  transaction consumes ids that no event on the stream accounts for).

The outbox records the replay made are dropped first, and so are the records of a restored
backup for those topics (what they carried, Kafka holds or `accorder` recomputes). A refusal's
DLQ copy, the replay's or a restored backup's, stays only for a record the service never
handled (at or past the position of the schema it ran on, `handled_by`, and its consumer
group's committed offset) whose DLQ on Kafka holds no copy (by its `dlq-topic`,
`dlq-partition`, `dlq-offset`): such a record gets its copy once.
"""

import asyncio
import hashlib
import itertools
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import GroupCoordinatorNotAvailableError, TopicAuthorizationFailedError

import contracts as c
from contracts.internal import COUVERTURES, GROUP_FIELDS, PROFILS
from services.common.messaging import dlq
from services.common.messaging.connection import KafkaAccess, kafka_options
from services.common.messaging.consumer import Outside, in_another_log, outside_their_log, record_stamps
from services.common.messaging.outbox import OutboxRelay, load_headers
from services.common.messaging.records import lenient_consumer
from services.common.messaging.stall import Stall
from services.common.messaging.topics import admin_client, partitions_of
from services.common.pipeline import TOMBSTONE, Outgoing, Pipeline
from services.common.runtime.lifecycle import restored_mark
from services.common.runtime.settings import ServiceSettings
from services.common.runtime.spec import ServiceSpec
from services.common.storage import positions
from services.common.storage.db import Conn, advisory_key, create_pool, migrate, owner_of, relation
from services.common.storage.derived import Derived, PgPublished, publish_changes, stable_id
from services.equipement import handlers as equipement
from services.formation import handlers as formation
from services.ressources import handlers as ressources
from services.ressources.lifecycle import event_id
from services.ressources.settings import RessourcesSettings

log = structlog.get_logger(__name__)

DERIVED: dict[str, tuple[str, str, tuple[Derived, ...]]] = {
    "equipement": (PROFILS, equipement.SOURCE, (equipement.LOTS, equipement.LINKS)),
    "formation": (COUVERTURES, formation.SOURCE, (formation.ENSEIGNANTS, formation.OUTILS)),
}
"""Per service that derives records: its compacted topic, its CloudEvents source, its kinds of record."""
MAX_CYCLE = 1_000_000


def read_by(spec: ServiceSpec) -> list[str]:
    """The topics (unprefixed) a catch-up of `spec` reads: its inputs, its dead letters, and what
    it published (its compacted topic, or the alerts' stream and table)."""
    published = [DERIVED[spec.name][0]] if spec.name in DERIVED else [c.ALERTES, c.ALERTES_ETAT]
    return [*spec.consumes, *(c.dlq(t) for t in spec.dead_letters_for), *published]


class AccesInsuffisant(RuntimeError):
    """What a catch-up would read that Kafka does not give it: the message names the topics."""


CHECK_SECONDS = 30
"""How long `check_access` waits for Kafka to answer a fetch of every topic."""
RESTORE_LOCK = advisory_key("sauvegarde:restore")
"""A session lock: a restore holds it alone, each rebuild shared, so that neither starts while
the other replaces schemas (rebuilds of different schemas run together)."""


async def check_access(settings: ServiceSettings, specs: Iterable[ServiceSpec]) -> None:
    """AccesInsuffisant naming the topics a catch-up of `specs` reads that the Kafka principal of
    `settings` may not (or that do not exist). A service's own may read its inputs, not what it
    published nor its dead letters: the rebuild and the restore need an operator's (locally
    `env $(./dev credentials admin) ...`), and find out here, before they touch the database."""
    access = KafkaAccess.of(settings)
    topics = sorted({settings.topic(t) for spec in specs for t in read_by(spec)})
    if not topics:
        return
    async with admin_client(access) as admin:  # a topic it may not even describe: aiokafka would wait for ever
        described = {t["topic"]: t["error_code"] for t in await admin.describe_topics(topics)}
    if missing := [t for t in topics if described.get(t) not in (0, TopicAuthorizationFailedError.errno)]:
        raise AccesInsuffisant(f"topics {', '.join(missing)} do not exist on {access.bootstrap_servers}")
    refused = [t for t in topics if described[t] == TopicAuthorizationFailedError.errno]
    if readable := [TopicPartition(t, 0) for t in topics if t not in refused]:
        refused += await _unfetchable(access, readable)
    if refused:
        raise AccesInsuffisant(
            f"Kafka's principal {access.principal or '(none)'} may not read {', '.join(sorted(refused))}: "
            "run this as an operator (locally: env $(./dev credentials admin) ./dev ...)"
        )


class JournalIncomplet(RuntimeError):
    """Kafka no longer holds what a schema has yet to read: records deleted past its positions
    (a retention shorter than the topic's, records deleted by hand), or positions in another log
    than their own (the topic made again, another cluster: past the partition's end, or within a
    new log that already reaches them). Replayed anyway, the catch-up's alignment published what
    the replay could not read as regressed or retired: refused."""

    def __init__(self, schema: str, outside: list[Outside]):
        parts = [
            f"{o.tp.topic}[{o.tp.partition}] from offset {o.position}: "
            + (
                f"{o.lost} records deleted (its first offset is {o.start})"
                if o.lost
                else f"the partition ends at {o.end} (the topic made again, or another cluster)"
                if o.position > o.end
                else "its log holds no record appended when the one before that offset was (the topic made again, "
                "or another cluster)"
            )
            for o in outside
        ]
        super().__init__(
            f"{schema}: Kafka no longer holds what it has to read, {'; '.join(parts)}. Nothing replayed: the "
            "records lost cannot be caught up with (their declarants may send them again), and a state aligned "
            "without them would publish what they changed as regressed or retired"
        )


async def require_log(
    consumer: AIOKafkaConsumer,
    schema: str,
    partitions: Iterable[TopicPartition],
    stored: Mapping[TopicPartition, int],
    appended: Mapping[TopicPartition, int],
    access: KafkaAccess,
    *,
    strict: bool,
) -> dict[TopicPartition, int]:
    """Where to read `schema`'s partitions from (each one's `stored` position, 0 without one, or
    the log's start of a compacted topic past it: records deleted from it, whose keys its
    producer's rebuild publishes again, Outside.republished); JournalIncomplet when Kafka no
    longer holds what it has to read. `appended`:
    when the record before each position was appended (positions.appended), which tells a topic
    made again whose new log already reaches a position (consumer.in_another_log, the record
    before a suspect read with `access`; `strict`, a restore's, which replaces schemas on it:
    LogUnchecked when Kafka did not let it check, where a rebuild's switch goes on, as a
    service's start does, from positions it reached itself)."""
    wanted = {tp: stored.get(tp, 0) for tp in partitions}
    outside = await outside_their_log(consumer, wanted)
    beyond = {o.tp for o in outside}
    within = {tp: p for tp, p in wanted.items() if tp not in beyond}
    outside += await in_another_log(consumer, within, appended, record_stamps(access), strict=strict)
    if missing := [o for o in outside if (o.lost and not o.republished) or o.another_log]:
        raise JournalIncomplet(schema, missing)
    for o in outside:
        if o.republished and o.tp in stored:  # a position it reached: it had yet to read them
            log.warning(
                "rattrapage.derives_perdus",
                schema=schema,
                **o.said(),
                hint="records deleted from a compacted topic before this schema read them: rebuild the service "
                "that publishes it (its alignment publishes their keys again), then this one if it is ressources",
            )
    return {**wanted, **{o.tp: o.start for o in outside}}


async def check_log(
    settings: ServiceSettings,
    spec: ServiceSpec,
    schema: str,
    stored: dict[TopicPartition, int],
    appended: Mapping[TopicPartition, int],
) -> None:
    """`require_log` for `schema` of `spec` whose positions are `stored` and `appended` (a
    backup's, before it replaces anything), on a consumer of its own."""
    topics = [settings.topic(t) for t in spec.consumes]
    partitions = await partitions_of(KafkaAccess.of(settings), topics)
    consumer = AIOKafkaConsumer(**KafkaAccess.of(settings).aiokafka(), enable_auto_commit=False)
    await consumer.start()
    try:
        await require_log(consumer, schema, partitions, stored, appended, KafkaAccess.of(settings), strict=True)
    finally:
        await consumer.stop()


@dataclass
class Cible:
    """A service's schema being caught up: its pipeline, whose relay is never started."""

    spec: ServiceSpec
    settings: ServiceSettings
    pipeline: Pipeline
    outbox_from: int
    """The outbox's last seq before the replay: records after it are the replay's."""
    journal_from: int
    """ressources: the alert journal's last seq before the replay (0 for the others)."""

    @property
    def schema(self) -> str:
        assert self.settings.db_schema is not None, "set by ouvrir"
        return self.settings.db_schema

    def topic(self, name: str) -> str:
        return self.settings.topic(name)

    async def close(self) -> None:
        await self.pipeline.pool.close()


async def ouvrir(
    spec: ServiceSpec, settings: ServiceSettings, schema: str, producer: AIOKafkaProducer, owner: str | None = None
) -> Cible:
    """The service's pipeline over `schema` (created and migrated if need be); `producer` is
    only held by its relay, which is never started. It acts as the schema's owner, or `owner`
    (the role a schema made here is for): what it makes is the service's role's (db.owner_of)."""
    settings = spec.settings.of(settings).model_copy(update={"db_schema": schema})
    if owner is None:
        conn = await asyncpg.connect(settings.database_url)
        try:
            owner = await owner_of(conn, schema)
        finally:
            await conn.close()
    pool = await create_pool(settings.database_url, schema, owner=owner)
    await migrate(pool, schema, spec.package_dir)
    pipeline = Pipeline(spec.name, settings, spec.apply(settings), spec.store, spec.parse, spec.dead_letters_for)
    pipeline.attach(pool, OutboxRelay(pool, producer, schema))
    outbox_from = await pool.fetchval("SELECT coalesce(max(seq), 0) FROM outbox")
    journal_from = (
        await pool.fetchval("SELECT coalesce(max(seq), 0) FROM alert_journal") if spec.name == "ressources" else 0
    )
    return Cible(spec, settings, pipeline, outbox_from, journal_from)


STALL_SECONDS = 120
"""How long a read of the log may go without a record while some are left to read: Kafka gone,
the catch-up fails (a rebuild then drops its schema and lets the service write again) rather
than wait for ever, holding, during a rebuild's switch, the service's writes."""


PROGRESS_SECONDS = 30.0
"""How often a long replay says how far it has gone (`rattraper`'s `said`)."""


async def rattraper(cible: Cible, said: Callable[[str], None] | None = None, *, strict: bool = False) -> int:
    """Every record of the service's input topics after the schema's positions, up to their
    end as they are now, handled as the service would, in batches; returns how many. `said`
    is told how far it has gone every PROGRESS_SECONDS (a rebuild's replay of the whole log
    takes hours nationally).

    Records are handed over in the order of their Kafka timestamps across partitions and
    topics (each partition in its own order), as close as the log allows to the order the
    service first met them in: a declaration is judged against the référentiel as it was then
    (an établissement published before its equipment is known to it; otherwise uai-inconnu,
    and the declaration judged again once it comes, as the service does: Pipeline.revive)."""
    settings = cible.settings
    consumer = lenient_consumer(
        **KafkaAccess.of(settings).aiokafka(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="none",  # records deleted during the replay: an error, not skipped
        isolation_level="read_committed",  # as the service reads: never what a partner's transaction aborted
        max_poll_records=settings.batch_max_records,
    )
    try:
        await consumer.start()
        topics = [cible.topic(t) for t in cible.spec.consumes]
        partitions = await partitions_of(KafkaAccess.of(settings), topics)
        consumer.assign(partitions)
        stored = await positions.load(cible.pipeline.pool, partitions)
        appended = await positions.appended(cible.pipeline.pool, partitions)
        access = KafkaAccess.of(settings)
        first = await require_log(consumer, cible.schema, partitions, stored, appended, access, strict=strict)
        for tp in partitions:
            consumer.seek(tp, first[tp])
        ends = await consumer.end_offsets(partitions)
        total = sum(max(0, ends[tp] - first[tp]) for tp in partitions)
        told = time.monotonic()
        queues: dict[TopicPartition, deque[ConsumerRecord]] = {tp: deque() for tp in partitions}
        batch: list[ConsumerRecord] = []
        handled, progress = 0, Stall(f"replaying {', '.join(topics)}: no record from Kafka", STALL_SECONDS)
        while True:
            # A partition with nothing buffered but more to read may hold the earliest record.
            if unread := [tp for tp in partitions if not queues[tp] and await consumer.position(tp) < ends[tp]]:
                fetched = await progress.getmany(
                    consumer, unread, timeout_ms=1000, max_records=settings.batch_max_records
                )
                for tp, records in fetched.items():
                    queues[tp].extend(r for r in records if r.offset < ends[tp])
                continue
            heads = [tp for tp in partitions if queues[tp]]
            if heads:
                batch.append(queues[min(heads, key=lambda tp: (queues[tp][0].timestamp, tp))].popleft())
            if batch and (len(batch) == settings.batch_max_records or not heads):
                await cible.pipeline.handle(batch)
                await cible.pipeline.revive_if_due()  # as the service, right after the batch
                handled, batch = handled + len(batch), []
                if said is not None and time.monotonic() - told >= PROGRESS_SECONDS:
                    told = time.monotonic()
                    share = 100 * handled // max(total, 1)
                    said(f"{cible.schema}: {handled} of about {total} records replayed ({share} %)")
            if not heads:
                break
        log.info("rattrapage.replayed", schema=cible.schema, records=handled)
        return handled
    finally:
        await consumer.stop()


async def committed_offsets(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the offset `group` committed there (none: it committed nothing).
    A broker that has not yet made its offsets topic (a cluster no consumer group has used: a
    restore onto a new Kafka) answers that no coordinator is available until it has: asked
    again for up to CHECK_SECONDS."""
    deadline = time.monotonic() + CHECK_SECONDS
    async with admin_client(KafkaAccess.from_environ(bootstrap_servers=bootstrap)) as admin:
        while True:
            try:
                offsets = await admin.list_consumer_group_offsets(group)
                break
            except GroupCoordinatorNotAvailableError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
    return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


async def read_topic(bootstrap: str, topic: str) -> list[ConsumerRecord]:
    """Every record of `topic` now, partition after partition, in offset order."""
    return [record async for record in records_of(bootstrap, topic)]


async def records_of(bootstrap: str, topic: str) -> AsyncIterator[ConsumerRecord]:
    """The records of `topic` now, batch after batch (none held beyond its batch)."""
    # A position the retention deleted meanwhile (the oldest records, under a long scan) goes back
    # to the first record left, not to the end: aiokafka's default would skip all the rest.
    consumer = lenient_consumer(
        **kafka_options(bootstrap), group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = await partitions_of(KafkaAccess.from_environ(bootstrap_servers=bootstrap), [topic])
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        progress = Stall(f"reading {topic}: no record from Kafka", STALL_SECONDS)
        while pending := [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            batch = await progress.getmany(consumer, pending, timeout_ms=1000)
            for record in [r for tp in sorted(batch) for r in batch[tp] if r.offset < ends[tp]]:
                yield record
    finally:
        await consumer.stop()


async def journal_allocated(conn: Conn, schema: str) -> int:
    """The highest alert journal id `schema` may have handed out (0 without a journal)."""
    sequence = await relation(conn, schema, "alert_journal_seq_seq")
    return 0 if sequence is None else int(await conn.fetchval(f"SELECT last_value FROM {sequence}"))


async def journal_floor(conn: Conn, schema: str) -> int:
    """The highest alert journal id `schema` handed out, or that the schema a restore replaced
    had handed out (kept in its mark until it has caught up): a journal's next ids go past it."""
    allocated = await journal_allocated(conn, schema)
    mark = await restored_mark(conn, schema)
    return allocated if mark is None else max(allocated, await conn.fetchval(f"SELECT journal_floor FROM {mark}"))


async def pending_dead_letters(
    conn: Conn, schema: str, spec: ServiceSpec, settings: ServiceSettings
) -> set[dlq.Origin]:
    """The refused records whose DLQ copy `schema` holds, unpublished (the service stopped before
    its relay sent it, its offset committed already; or Kafka refused it for good, set aside in
    outbox_failed): what a restore replacing that schema, or a rebuild of a schema a restore
    marked, must send again (`accorder`'s `pending`)."""
    topics = [c.dlq(settings.topic(t)) for t in spec.dead_letters_for]
    if not topics or not await relation(conn, schema, "outbox"):
        return set()
    if await restored_mark(conn, schema):
        # A restore whose catch-up failed: its outbox is the backup's (copies sent since, maybe
        # expired from their DLQ) or the replay's, not a service's; those the first run found
        # in the schema it replaced are kept with its mark.
        if not await relation(conn, schema, COPIES_PENDING):
            return set()
        rows = await conn.fetch(f'SELECT topic, partition, "offset" FROM "{schema}".{COPIES_PENDING}')
        return {(r["topic"], r["partition"], r["offset"]) for r in rows}
    rows = await conn.fetch(
        f'SELECT headers FROM "{schema}".outbox WHERE topic = ANY($1::text[]) '
        f'UNION ALL SELECT headers FROM "{schema}".outbox_failed WHERE topic = ANY($1::text[])',
        topics,
    )
    return {o for r in rows if (o := dlq.origin(load_headers(r["headers"])))}


async def handled_by(conn: Conn, schema: str) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the position the service running on `schema` had reached: the
    records before it were handled there, their DLQ copies sent then (`accorder`'s
    `handled_before`). A schema a restore marked holds the backup's positions, not those: the
    ones its restore found in the schema it replaced, kept with the mark (HANDLED_BEFORE), so a
    restore run again, or a rebuild of it, judges as the first run did."""
    marked = await restored_mark(conn, schema)
    table = HANDLED_BEFORE if marked else "positions"
    if not await relation(conn, schema, table):
        return {}
    rows = await conn.fetch(f'SELECT topic, partition, next_offset FROM "{schema}".{table}')
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


HANDLED_BEFORE = "rattrapage_positions_servies"
"""Beside a restored schema's catch-up mark, the positions of the schema it replaced (handled_by)."""


def handled_before_sql(schema: str, handled: Mapping[tuple[str, int], int]) -> str:
    """The statements keeping `handled` with `schema`'s mark (HANDLED_BEFORE; none: nothing)."""
    columns = "topic text, partition int, next_offset bigint, PRIMARY KEY (topic, partition)"
    return _kept_with_mark(schema, HANDLED_BEFORE, columns, [(t, p, o) for (t, p), o in handled.items()])


def _kept_with_mark(schema: str, table: str, columns: str, rows: Collection[tuple[str, int, int]]) -> str:
    """The statements making `table` (`columns`) beside `schema`'s catch-up mark and keeping
    `rows` in it, (topic, partition, offset) each; nothing when there are none."""
    if not rows:
        return ""
    values = ", ".join(f"('{t.replace(chr(39), chr(39) * 2)}', {int(p)}, {int(o)})" for t, p, o in sorted(rows))
    return (
        f'CREATE TABLE IF NOT EXISTS "{schema}".{table} ({columns});\n'
        f'INSERT INTO "{schema}".{table} VALUES {values} ON CONFLICT DO NOTHING;\n'
    )


COPIES_PENDING = "rattrapage_copies_dlq"
"""Beside a restored schema's catch-up mark, the DLQ copies `pending_dead_letters` found in the
schema it replaced: a restore run again after its catch-up failed still sends them."""


def copies_pending_sql(schema: str, pending: Collection[dlq.Origin]) -> str:
    """The statements keeping `pending` with `schema`'s mark (COPIES_PENDING; none: nothing)."""
    columns = 'topic text, partition int, "offset" bigint, PRIMARY KEY (topic, partition, "offset")'
    return _kept_with_mark(schema, COPIES_PENDING, columns, pending)


async def accorder(
    cible: Cible,
    journal_floor: int = 0,
    *,
    stored_thresholds: bool = False,
    pending: Collection[dlq.Origin] = (),
    handled_before: Mapping[tuple[str, int], int] | None = None,
) -> int:
    """Align the schema's memory of its publications with Kafka, and queue the real differences
    in its outbox (published by the service's relay once it runs on the schema); returns how many.
    ressources: the journal's next ids go past `journal_floor` too (`journal_allocated` of the
    schema this one replaces); its alerts evaluated with this process's thresholds (a rebuild
    may change them), or with `stored_thresholds` those the schema holds (a restore: the
    platform's at the backup, whatever this process's environment says; the service started
    with others re-evaluates as its thresholds change)."""
    name, bootstrap, sql = cible.spec.name, cible.settings.kafka_bootstrap_servers, _bare(cible)
    recomputed = [cible.topic(t) for t in (*(d[0] for d in DERIVED.values()), c.ALERTES, c.ALERTES_ETAT)]

    # A refusal's DLQ copy stays queued if its DLQ does not hold it already and the service never
    # handled its record (at or past where the service had gone, `handled_before`, its schema's
    # positions, and the offsets its consumer group committed: it came while a restored service
    # was down, or in the batch a rebuilt one held at the switch) or its copy was still in the
    # outbox of the schema a restore replaced (`pending`: the service stopped before its relay
    # sent it). Those of other records it handled went out then (and may since have expired from
    # the DLQ: not again). The committed offsets alone were forgotten by Kafka once the group had
    # been empty a week (offsets.retention.minutes): every copy the DLQ's retention had removed,
    # a partner's refused record, was sent again.
    dead_letter_topics = [c.dlq(cible.topic(t)) for t in cible.spec.dead_letters_for]
    on_kafka = {o for t in dead_letter_topics async for r in records_of(bootstrap, t) if (o := dlq.origin(r.headers))}
    handled = dict(handled_before or {})
    for key, offset in (await committed_offsets(bootstrap, cible.settings.topic(name))).items():
        handled[key] = max(handled.get(key, 0), offset)

    def unpublished(origin: dlq.Origin | None) -> bool:
        return (
            origin is not None
            and origin not in on_kafka
            and (origin[2] >= handled.get(origin[:2], 0) or origin in pending)
        )

    async def forget_replay(conn: Conn) -> list[Outgoing]:
        copies = await conn.fetch("SELECT seq, headers FROM outbox WHERE topic = ANY($1::text[])", dead_letter_topics)
        published = [r["seq"] for r in copies if not unpublished(dlq.origin(load_headers(r["headers"])))]
        await conn.execute(
            "DELETE FROM outbox WHERE (seq > $1 OR topic = ANY($2::text[])) AND NOT topic = ANY($3::text[]) "
            "OR seq = ANY($4::bigint[])",
            cible.outbox_from,
            recomputed,
            dead_letter_topics,
            published,
        )
        return []

    await sql.run_exclusive(forget_replay)
    # The topics are read record by record into temporary tables (`_Scratch`): held in memory,
    # each key's latest record took 2.6 KB (a lot) to 3.6 KB (an alert, kept for ever: a year of a
    # national platform's would not fit).
    if name in DERIVED:
        topic, source, kinds = DERIVED[name]
        async with _Scratch(cible.pipeline.pool, STAGED_PUBLIES, cible=cible) as staged:
            async for record in records_of(bootstrap, cible.topic(topic)):
                await staged.add(STAGED_PUBLIES, _published_row(record))
            await staged.flush()
            queued = await staged.sql.run_exclusive(lambda conn: _accord_derived(conn, kinds, source))
    elif name == "ressources":
        async with _Scratch(cible.pipeline.pool, STAGED_ALERTS, STAGED_SHOWN, cible=cible) as staged:
            announced, cycles = 0, _Cycles()
            async for record in records_of(bootstrap, cible.topic(c.ALERTES)):
                await staged.add(STAGED_ALERTS, cycles.row(record))
                announced += 1
            async for record in records_of(bootstrap, cible.topic(c.ALERTES_ETAT)):
                digest = None if record.value is None else hashlib.sha256(record.value).digest()
                await staged.add(STAGED_SHOWN, (record.key.decode(), digest))
                if record.value is not None:
                    await staged.add(STAGED_ALERTS, cycles.row(record))
            await staged.flush()
            queued = await staged.sql.run_exclusive(
                lambda conn: _accord_alerts(conn, cible.journal_from, announced, journal_floor)
            )
        queued += await _reevaluate_everything(cible, stored_thresholds)
    else:
        raise ValueError(f"no rule to align what {name!r} published")
    log.info("rattrapage.aligned", schema=cible.schema, queued=queued)
    return queued


async def _unfetchable(access: KafkaAccess, partitions: list[TopicPartition]) -> list[str]:
    """The topics of `partitions` whose records Kafka refuses to give `access` (a fetch is what
    checks the right to read: describing a topic needs less, which writing it grants). Each
    partition is fetched until Kafka has answered it, records or not (its high watermark known):
    a fetch may return one partition's records before another's refusal, which comes next."""
    refused: list[str] = []
    answered: set[TopicPartition] = set()
    deadline = time.monotonic() + CHECK_SECONDS
    consumer = lenient_consumer(**access.aiokafka(), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        while partitions:
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            try:
                while left := [tp for tp in partitions if tp not in answered]:
                    if time.monotonic() > deadline:
                        topics = ", ".join(sorted({tp.topic for tp in left}))
                        raise AccesInsuffisant(f"Kafka answered no fetch of {topics} within {CHECK_SECONDS} s")
                    await consumer.getmany(*left, timeout_ms=500)
                    answered |= {tp for tp in left if consumer.highwater(tp) is not None}
                return refused
            except TopicAuthorizationFailedError as e:  # one topic at a time
                if not e.args or e.args[0] not in {tp.topic for tp in partitions}:
                    return [*refused, str(e)]
                refused.append(e.args[0])
                partitions = [tp for tp in partitions if tp.topic != e.args[0] and tp not in answered]
    finally:
        await consumer.stop()
    return refused


def _bare(cible: Cible, pool: Any = None) -> Pipeline:
    """The target's pipeline with the bare connection as its store, for work in SQL (through
    `pool`, else the target's)."""
    pipeline = Pipeline(cible.spec.name, cible.settings, cible.spec.apply(cible.settings), lambda conn: conn)
    pipeline.attach(pool or cible.pipeline.pool, cible.pipeline.relay)
    return pipeline


class _OneConnection:
    """A pool of one connection, held: the catch-up's scratch tables are temporary, its
    session's own (never in a backup, never locked by one, gone with it), so they are filled and
    read through the connection that made them."""

    def __init__(self, conn: Conn):
        self._conn = conn

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Conn]:
        yield self._conn

    async def execute(self, sql: str, *args: Any) -> str:
        return await self._conn.execute(sql, *args)

    async def copy_records_to_table(self, table: str, **kw: Any) -> str:
        return await self._conn.copy_records_to_table(table, **kw)


def _published_row(record: ConsumerRecord) -> tuple[str, str, str, int, str]:
    """A record of a compacted topic of derived state, staged: (type, uai, entity, version, data)."""
    event = json.loads(record.value)
    data = event["data"]
    entity = record.key.decode().partition("/")[2]  # `{uai}/{entity}`, or the UAI alone
    return event["type"], data["uai"], entity, data["version"], json.dumps(data)


RENUMBERED = "(extract(epoch FROM now()) * 1000)::bigint"
"""The version a key the replay derived and Kafka does not hold is published after (the time in
ms), with a content no derived one has (JSON null), so that the replayed one goes out. Kafka
lacks such a key when the live service never published it, or when its records were deleted
(the compacted topic's records also deleted by age, set by hand): numbered from the replay's
versions, which are not the live service's (its batches were others), it took the id of a
version ressources had handled, a duplicate, and ressources kept the version it held, and
every later one up to it, as older."""

ALIGNED_UAIS = 2000
"""UAIs whose replayed records one step of `_accord_derived` compares with Kafka's (memory)."""


async def _accord_derived(conn: Conn, kinds: tuple[Derived, ...], source: str) -> list[Outgoing]:
    """`publies` takes the highest version of each key Kafka holds (STAGED_PUBLIES); each key
    whose replayed content differs is published once more, as the next version, a UAI's in one
    group. A key the replay derived that Kafka does not hold is published too, numbered past
    any version the live service could have counted (RENUMBERED)."""
    await conn.execute(
        "CREATE TEMP TABLE rattrapage_derniers ON COMMIT DROP AS "
        f"SELECT DISTINCT ON (type, uai, entity) type, uai, entity, version, data FROM {STAGED_PUBLIES} "
        "ORDER BY type, uai, entity, version DESC, seq; "
        "CREATE INDEX ON rattrapage_derniers (uai); "
        "CREATE TEMP TABLE rattrapage_rejoues ON COMMIT DROP AS SELECT type, uai, entity, content FROM publies; "
        "CREATE INDEX ON rattrapage_rejoues (uai); "
        "DELETE FROM publies"
    )
    fields = {d.event_type: sorted({"uai", "version", d.entity_field or "uai", *GROUP_FIELDS}) for d in kinds}
    for type_, dropped in fields.items():
        await conn.execute(
            "INSERT INTO publies (type, uai, entity, version, content) "
            "SELECT type, uai, entity, version, data::jsonb - $2::text[] FROM rattrapage_derniers WHERE type = $1",
            type_,
            dropped,
        )
    await conn.execute(
        f"INSERT INTO publies (type, uai, entity, version, content) SELECT type, uai, entity, {RENUMBERED}, 'null' "
        "FROM rattrapage_rejoues ON CONFLICT DO NOTHING"
    )
    # The groups go on past those Kafka holds: a restored sequence would number a UAI's next
    # group below its last one, which ressources would then never see whole.
    await conn.execute(
        "SELECT setval('publies_groupes', greatest((SELECT coalesce(max((data->>'group')::bigint), 0) "
        "FROM rattrapage_derniers), last_value)) FROM publies_groupes"
    )
    uais = [
        r["uai"]
        for r in await conn.fetch(
            "SELECT uai FROM rattrapage_rejoues UNION SELECT uai FROM rattrapage_derniers ORDER BY uai"
        )
    ]
    queued: list[Outgoing] = []
    for n in range(0, len(uais), ALIGNED_UAIS):
        part = uais[n : n + ALIGNED_UAIS]
        replayed = await conn.fetch(
            "SELECT type, uai, entity, content FROM rattrapage_rejoues WHERE uai = ANY($1::text[])", part
        )
        # What Kafka holds and the replay no longer derives (a lot the live service accepted
        # against a référentiel it had not read to its end, refused by the replay): retired,
        # or ressources would count it until its entity changes again.
        gone = await conn.fetch(
            "SELECT d.type, d.uai, d.entity, d.data FROM rattrapage_derniers AS d WHERE d.uai = ANY($1::text[]) "
            "AND NOT EXISTS (SELECT FROM rattrapage_rejoues AS r "
            "WHERE (r.type, r.uai, r.entity) = (d.type, d.uai, d.entity))",
            part,
        )
        changes = []
        for derived in kinds:
            derived_now = {
                (r["uai"], r["entity"]): json.loads(r["content"]) for r in replayed if r["type"] == derived.event_type
            }
            if derived.retired is not None:
                for r in gone:
                    if r["type"] == derived.event_type:
                        held = {k: v for k, v in json.loads(r["data"]).items() if k not in fields[r["type"]]}
                        derived_now[(r["uai"], r["entity"])] = derived.retired(held)
            changes.append((derived, derived_now))
        queued += await publish_changes(PgPublished(conn), changes, source=source, causes={})
    return queued


STAGED_PUBLIES, STAGED_ALERTS = "rattrapage_publies_lus", "rattrapage_alertes_lues"
STAGED_SHOWN = "rattrapage_etat_lu"
STAGED_COLUMNS = {
    STAGED_PUBLIES: {"type": "text", "uai": "text", "entity": "text", "version": "bigint", "data": "json"},
    STAGED_ALERTS: {"alert_id": "text", "cycle": "int", "ouverte": "boolean", "value": "bytea"},
    STAGED_SHOWN: {"alert_id": "text", "digest": "bytea"},
}
"""The catch-up's scratch tables, temporary (its session's), each row with the order it was
read in (`seq`): the records of a derived state's compacted topic (as JSON text: a retirement
keeps its fields in the order Kafka holds them); every event of the alerts stream and its
table; the table's record of each key, digested. What Kafka holds was read into memory: a
national platform's (480,000 lots, a million alerts and more a year, about 3 KB each) took
more than the operators' pod has."""
STAGE_ROWS = 5000
"""Records staged by one COPY: what memory holds of the topics at a time."""


@dataclass(frozen=True)
class _Value:
    """A record value as Kafka holds it, published again as it is."""

    value: bytes

    def to_bytes(self) -> bytes:
        return self.value


class _Scratch:
    """Temporary tables (STAGED_COLUMNS) on a connection of `pool` held for the catch-up, filled
    STAGE_ROWS rows at a time (`conn`); `sql`, given the target, is its pipeline over that
    connection, for the alignment that reads them (a transaction with a batch's guarantees)."""

    def __init__(self, pool: Any, *tables: str, cible: Cible | None = None):
        self._pool, self._cible, self._tables = pool, cible, tables
        self._rows: dict[str, list[tuple]] = {t: [] for t in tables}
        self._seq = 0
        self._held: Any = None
        self.conn: _OneConnection
        self.sql: Pipeline

    async def __aenter__(self) -> "_Scratch":
        self._held = self._pool.acquire()
        self.conn = _OneConnection(await self._held.__aenter__())
        if self._cible is not None:
            self.sql = _bare(self._cible, self.conn)
        made = [
            f"CREATE TEMP TABLE {t} (seq bigint, {', '.join(f'{c} {k}' for c, k in STAGED_COLUMNS[t].items())})"
            for t in self._tables
        ]
        await self.conn.execute(f"DROP TABLE IF EXISTS {', '.join(self._tables)}; " + "; ".join(made))
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:  # else the connection may be gone: its session's tables go with it
                await self.conn.execute(f"DROP TABLE IF EXISTS {', '.join(self._tables)}")
        finally:
            await self._held.__aexit__(*exc)

    async def add(self, table: str, row: tuple) -> None:
        self._seq += 1
        rows = self._rows[table]
        rows.append((self._seq, *row))
        if len(rows) >= STAGE_ROWS:
            await self.flush()

    async def flush(self) -> None:
        for table, rows in self._rows.items():
            if rows:
                columns = ["seq", *STAGED_COLUMNS[table]]
                await self.conn.copy_records_to_table(table, records=rows, columns=columns)
                self._rows[table] = []


class _Cycles:
    """Each alert event's row for STAGED_ALERTS: its raise count found from its id, near the
    alert's former one (a hint kept for the latest alerts read, bounded)."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def row(self, record: ConsumerRecord) -> tuple[str, int, bool, bytes]:
        alert_id, cycle, opened = _alert_event(record.value, lambda alert: self._last.get(alert, 1))
        if len(self._last) >= 20 * STAGE_ROWS:
            self._last.clear()
        self._last[alert_id] = cycle
        return alert_id, cycle, opened, record.value


def _alert_event(value: bytes, hint: Callable[[str], int] = lambda _: 1) -> tuple[str, int, bool]:
    """An alert event's alert_id, raise count (found from its id, near `hint(alert_id)`) and
    whether it raises the alert."""
    event = json.loads(value)
    alert_id, opened = event["data"]["alert_id"], event["type"] == c.ALERTE_LEVEE
    raised_at = datetime.fromisoformat(event["data"]["raised_at"])
    return alert_id, _cycle(alert_id, event["id"], "levee" if opened else "resolue", raised_at, hint(alert_id)), opened


def _cycle(alert: str, id_: str, what: str, raised_at: datetime, hint: int) -> int:
    """The raise count an event's id was made from (lifecycle.event_id, or the form before it
    held the raise's instant), looked for near `hint` first: the alert's former event is of this
    cycle or the one before, so one or two tries."""
    for cycle in itertools.chain((hint, hint + 1), range(1, MAX_CYCLE)):
        if id_ in (event_id(alert, cycle, what, raised_at), _event_id_without_instant(alert, cycle, what)):
            return cycle
    raise ValueError(f"alert {alert}: event id {id_} was not made by lifecycle.event_id for any cycle")


def _event_id_without_instant(alert: str, cycle: int, what: str) -> str:
    """An alert event's id as made before 5 December 2026, from its raise count alone; the
    alerts stream keeps such events (forever by default)."""
    return stable_id(f"{alert}/{cycle}/{what}")


async def _accord_alerts(conn: Conn, journal_from: int, announced: int, floor: int) -> list[Outgoing]:
    """`alertes` as the stream says they were announced (STAGED_ALERTS, STAGED_SHOWN); the journal
    without the replay's entries, its next ids past every id handed out before (at most
    `announced`, the events the stream holds, were journalled since `journal_from`; `floor` were
    handed out by the schema this one replaces, rolled-back ones included), so a client resuming
    from an earlier one is told that its resumption is incomplete (stream.py), and one resuming
    from a later one misses no new event. Returns what the table (alertes.etat.v1) lacks:
    each open alert's last event, a tombstone for each resolved alert it still shows (a
    deployment from before the table fills it by a rebuild)."""
    await conn.execute(
        "CREATE TEMP TABLE rattrapage_dernieres ON COMMIT DROP AS "
        f"SELECT DISTINCT ON (alert_id) alert_id, cycle, ouverte, value FROM {STAGED_ALERTS} "
        "ORDER BY alert_id, cycle DESC, ouverte, seq"
    )
    await _supersede_set_aside(conn)
    await conn.execute("DELETE FROM alertes")
    await conn.execute(
        "INSERT INTO alertes (alert_id, uai, resource_id, kind, ouverte, cycle, raised_at, resolved_at, alerte) "
        "SELECT alert_id, d->>'uai', d->>'resource_id', d->>'kind', ouverte, cycle, (d->>'raised_at')::timestamptz, "
        """(d->>'resolved_at')::timestamptz, d || '{"resolved_at": null}' """
        "FROM (SELECT alert_id, ouverte, cycle, (convert_from(value, 'UTF8')::jsonb)->'data' AS d "
        "FROM rattrapage_dernieres) AS dernieres"
    )
    await conn.execute("DELETE FROM alert_journal WHERE seq > $1", journal_from)
    horizon = max(journal_from + announced, floor)
    await conn.execute("SELECT setval(pg_get_serial_sequence('alert_journal', 'seq'), $1)", max(horizon, 1))
    await conn.execute("UPDATE alert_journal_horizon SET purged_through = $1", horizon)
    lacking = await conn.fetch(
        "SELECT d.alert_id, d.ouverte, d.value FROM rattrapage_dernieres AS d LEFT JOIN "
        f"(SELECT DISTINCT ON (alert_id) alert_id, digest FROM {STAGED_SHOWN} ORDER BY alert_id, seq DESC) AS s "
        "USING (alert_id) "
        "WHERE CASE WHEN d.ouverte THEN s.digest IS DISTINCT FROM sha256(d.value) ELSE s.digest IS NOT NULL END"
    )
    return [Outgoing(c.ALERTES_ETAT, r["alert_id"], _Value(r["value"]) if r["ouverte"] else TOMBSTONE) for r in lacking]


async def _supersede_set_aside(conn: Conn) -> None:
    """The alert rows set aside (outbox_failed, with their twin on the table) of which Kafka
    holds the alert's event or a later one (rattrapage_dernieres) marked superseded, as the relay
    marks them when it publishes that later event: a restore brings them back as they were at the
    backup, and `./dev outbox retry` then put the raise after its resolution on the stream (a
    rebuild copies the live marks). A row whose event or cycle cannot be read is left as it is."""
    rows = await conn.fetch(
        "SELECT seq, record_value FROM outbox_failed WHERE twin_topic IS NOT NULL AND twin_superseded_at IS NULL"
    )
    set_aside: dict[int, tuple[str, int, bool]] = {}
    for r in rows:
        try:
            alert_id, cycle, opened = _alert_event(r["record_value"])
        except (ValueError, KeyError, TypeError):
            continue
        set_aside[r["seq"]] = (alert_id, cycle, not opened)
    if not set_aside:
        return
    held = {
        r["alert_id"]: (r["cycle"], not r["ouverte"])
        for r in await conn.fetch(
            "SELECT alert_id, cycle, ouverte FROM rattrapage_dernieres WHERE alert_id = ANY($1::text[])",
            sorted({alert_id for alert_id, _, _ in set_aside.values()}),
        )
    }
    passed = [
        seq for seq, (alert_id, *event) in set_aside.items() if alert_id in held and held[alert_id] >= tuple(event)
    ]
    await conn.execute("UPDATE outbox_failed SET twin_superseded_at = now() WHERE seq = ANY($1::bigint[])", passed)


async def _reevaluate_everything(cible: Cible, stored_thresholds: bool) -> int:
    """Every subscribed pair evaluated against the alerts as announced (the service's own
    re-evaluation, as when its thresholds change), with the thresholds the schema holds
    (this process's when it holds none, or not `stored_thresholds`: the evaluations read them
    from the schema); returns the alert events queued (each also goes to the table)."""
    settings = RessourcesSettings.of(cible.settings)

    async def request(store: Any) -> list[Outgoing]:
        await ressources.request_every_pair(store, settings.seuils, keep_stored=stored_thresholds)
        return []

    await cible.pipeline.run_exclusive(request)
    reevaluations, queued = ressources.Reevaluations(cible.pipeline, settings), 0
    while True:
        if chunk := await reevaluations.step():  # a chunk that fails raises: the catch-up stops
            queued += sum(1 for o in chunk.outgoing if o.topic == c.ALERTES)
        elif await cible.pipeline.run(lambda store: store.reevaluations_pending()):
            await asyncio.sleep(settings.reevaluation_poll_ms / 1000)  # a part put off after a failure
        else:
            return queued + await _resolve_unsubscribed(cible, settings)


async def _resolve_unsubscribed(cible: Cible, settings: RessourcesSettings) -> int:
    """The alerts the stream holds open for pairs the replay did not subscribe (their abonnement
    refused by a rule or a setting stricter since the live service accepted it) resolved, as when
    a subscription ends (CONTRACTS.md: "including when the pair stops being evaluated"): no
    re-evaluation sees a pair without an abonnement row, so they stayed open for good. Returns
    the alert events queued."""
    queued = 0
    while True:
        evaluated: ressources.Evaluated | None = None

        async def work(store: Any) -> list[Outgoing]:
            nonlocal evaluated
            evaluated = await ressources.resolve_unsubscribed(store, settings.seuils, settings.reevaluation_chunk)
            return evaluated.outgoing if evaluated else []

        await cible.pipeline.run_exclusive(work)
        if evaluated is None:
            return queued
        evaluated.say()
        if not (resolved := sum(1 for o in evaluated.outgoing if o.topic == c.ALERTES)):
            # Each chunk closes what it took, or the next takes the same pairs again, for ever.
            raise RuntimeError("open alerts without an abonnement that resolving their pairs left open")
        queued += resolved
