"""The platform's state as rows, and waiting until it has settled: for the tests that rebuild a
service from the log or restore a backup, and compare the state with the original row for row."""

import asyncio
import time

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

import contracts as c
from contracts.internal import COUVERTURES, PROFILS
from deploy.local import scenario
from deploy.local.kafka import LocalKafka
from deploy.local.partenaires import Partenaires
from deploy.referentiel.publish import publish_etablissements
from helpers import send
from partner import declare
from services.common.messaging.connection import KafkaAccess, kafka_options
from services.common.messaging.topics import partitions_of
from services.equipement.app import SPEC as EQUIPEMENT
from services.formation.app import SPEC as FORMATION
from services.passerelle.app import SPEC as PASSERELLE
from services.ressources.app import SPEC as RESSOURCES

SPECS = (FORMATION, EQUIPEMENT, RESSOURCES)
SERVICES = tuple(s.name for s in SPECS)
"""The services whose state the tests compare (the passerelle's is a view of the référentiel)."""
OUTPUTS = (
    PROFILS,
    COUVERTURES,
    c.ALERTES,
    c.ALERTES_ETAT,
    *(c.dlq(t) for t in (c.REFERENTIEL, c.FORMATION, c.EQUIPEMENT, c.CATALOGUE)),
)
NOT_STATE = {"schema_migrations", "verrous", "alert_journal", "alert_journal_horizon"}
"""Bookkeeping rather than state: migrations applied, lock rows, the SSE journal (24 hours)."""
WHEN_HANDLED = {"received_at", "failed_at", "created_at"}
"""Columns saying when this schema handled something, not what."""


async def snapshot(database_url: str, schema: str) -> dict[str, list[tuple]]:
    """Every table of `schema` but NOT_STATE, without WHEN_HANDLED columns, as sorted rows of text."""
    conn = await asyncpg.connect(database_url)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 AND table_type = 'BASE TABLE'",
            schema,
        )
        out = {}
        for t in sorted(r["table_name"] for r in tables if r["table_name"] not in NOT_STATE):
            columns = [
                f'"{r["column_name"]}"::text'
                for r in await conn.fetch(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2 "
                    "ORDER BY ordinal_position",
                    schema,
                    t,
                )
                if r["column_name"] not in WHEN_HANDLED
            ]
            rows = await conn.fetch(f'SELECT {", ".join(columns)} FROM "{schema}"."{t}"')
            out[t] = sorted(tuple(r) for r in rows)
        return out
    finally:
        await conn.close()


async def end_offsets(bootstrap: str, topics: list[str]) -> dict[TopicPartition, int]:
    partitions = await partitions_of(KafkaAccess.from_environ(bootstrap_servers=bootstrap), topics)
    consumer = AIOKafkaConsumer(**kafka_options(bootstrap), group_id=None)
    await consumer.start()
    try:
        return await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()


async def _busy(bootstrap: str, database_url: str, prefix: str) -> list[str]:
    """What is still to do: a service behind the end of a topic it reads, an outbox, a
    re-evaluation or the revival of a record that waited for its établissement not done."""
    conn = await asyncpg.connect(database_url)
    try:
        busy = []
        for spec in (*SPECS, PASSERELLE):
            ends = await end_offsets(bootstrap, [prefix + t for t in spec.consumes])
            rows = await conn.fetch(f"SELECT topic, partition, next_offset FROM {spec.name}.positions")
            at = {TopicPartition(r["topic"], r["partition"]): r["next_offset"] for r in rows}
            busy += [f"{spec.name} at {tp}: {at.get(tp, 0)} < {end}" for tp, end in ends.items() if at.get(tp, 0) < end]
            if pending := await conn.fetchval(f"SELECT count(*) FROM {spec.name}.outbox"):
                busy.append(f"{spec.name}: {pending} in the outbox")
            if due := await conn.fetchval(
                f"SELECT count(*) FROM {spec.name}.attente_referentiel a "
                f"WHERE EXISTS (SELECT FROM {spec.name}.etablissements e WHERE e.uai = a.uai)"
            ):
                busy.append(f"{spec.name}: {due} refused uai-inconnu, their établissement known since")
        if await conn.fetchval("SELECT count(*) FROM ressources.reevaluations"):
            busy.append("ressources: re-evaluations pending")
        return busy
    finally:
        await conn.close()


async def settled(bootstrap: str, database_url: str, prefix: str, timeout: float = 120) -> None:
    """Until every service has handled everything, twice in a row (what one publishes, another reads)."""
    deadline, quiet, busy = time.monotonic() + timeout, 0, []
    while quiet < 2:
        if time.monotonic() > deadline:
            raise AssertionError(f"the platform did not settle in {timeout} s: {busy}")
        busy = await _busy(bootstrap, database_url, prefix)
        quiet = 0 if busy else quiet + 1
        await asyncio.sleep(0.3)


async def play_morning(
    kafka: LocalKafka, partners: Partenaires, database_url: str, prefix: str, count: int = 60
) -> list:
    """The demo's scenario on `count` établissements, sent as its partners send it: the
    référentiel, the declarations, the catalogue, one record a partner got wrong
    (dead-lettered); settled after each step."""
    bootstrap = kafka.bootstrap_servers
    etabs = scenario.referentiel(count)
    await publish_etablissements(bootstrap, etabs, prefix + c.REFERENTIEL, access=kafka.access_as("ministere"))
    await settled(bootstrap, database_url, prefix)
    for step in (scenario.declarations(etabs), scenario.catalogue(etabs)):
        await declare(partners, step)
        await settled(bootstrap, database_url, prefix)
    # Not JSON: the passerelle refuses it before Kafka, so it goes to the topic as admin, for a
    # record the services dead-letter.
    await send(bootstrap, prefix + c.EQUIPEMENT, [(etabs[0].uai, b"{not json")])
    await settled(bootstrap, database_url, prefix)
    return etabs
