"""A platform's Kafka and its database go together; each start checks that they still do.

The database holds the state built from the records in Kafka, and Kafka holds how far each
service has read (its consumer group's offsets). Put together with another Kafka (an empty one,
say, while DATABASE_URL kept the database of an earlier run), the services would wait for
offsets that no longer exist, or apply records again onto a state that already holds them. So
the first start records the id of the Kafka cluster in the database (`plateforme.kafka`), and
every start compares before any service runs.
"""

from __future__ import annotations

import asyncpg

from deploy.local.datadir import Refused
from services.common.storage.db import relation

SERVICE_SCHEMAS = ("formation", "equipement", "ressources")


async def check(url: str, database: str, cluster_id: str | None, kafka: str, remedy: str) -> None:
    """Refused unless the database at `url` goes with the Kafka of `cluster_id` (None: a Kafka
    about to start empty). `database` and `kafka` name them in the message, `remedy` ends it."""
    conn = await asyncpg.connect(url)
    try:
        recorded = None
        if await relation(conn, "plateforme", "kafka"):
            recorded = await conn.fetchval("SELECT cluster_id FROM plateforme.kafka")
        schemas = await conn.fetchval(
            "SELECT coalesce(string_agg(nspname, ', ' ORDER BY nspname), '') FROM pg_namespace "
            "WHERE nspname = ANY($1::text[])",
            SERVICE_SCHEMAS,
        )
    finally:
        await conn.close()
    this_kafka = f"{kafka} (cluster {cluster_id})" if cluster_id else f"{kafka}, which starts empty"
    if recorded is not None and recorded != cluster_id:
        raise Refused(f"{database} holds the state of Kafka cluster {recorded}, not of {this_kafka}; {remedy}")
    if recorded is None and schemas:
        raise Refused(
            f"{database} holds the services' state (schemas {schemas}) but no record of its Kafka, "
            f"so it cannot be paired with {this_kafka}; {remedy}"
        )
    if recorded is None and cluster_id is not None:
        raise Refused(f"{this_kafka} holds the records of an earlier run, but {database} is empty; {remedy}")


async def record(url: str, cluster_id: str) -> None:
    """Pair the database at `url` with the Kafka of `cluster_id` (once; `check` compares)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "CREATE SCHEMA IF NOT EXISTS plateforme; "
            "CREATE TABLE IF NOT EXISTS plateforme.kafka ("
            " one boolean PRIMARY KEY DEFAULT true CHECK (one),"
            " cluster_id text NOT NULL,"
            " recorded_at timestamptz NOT NULL DEFAULT now())"
        )
        await conn.execute("INSERT INTO plateforme.kafka (cluster_id) VALUES ($1) ON CONFLICT DO NOTHING", cluster_id)
    finally:
        await conn.close()
