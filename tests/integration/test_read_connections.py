"""The read API's connections, apart from the pipeline's: reads that wait (here on a table lock,
as a slow query would) are answered 503 within API_STATEMENT_TIMEOUT_MS, and holding every one
of them leaves /health, the consumer and the relay their own connections."""

import asyncio
import time
from collections import Counter
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from fastapi import HTTPException

from helpers import Said, SilentRelay, eventually, serving
from services.ressources import api
from services.ressources.api import ANSWER_GRACE_SECONDS, Reads
from services.ressources.app import SPEC
from services.ressources.settings import RessourcesSettings

UAI = "0350042F"


@asynccontextmanager
async def api_with(settings, **update):
    async with serving(SPEC, RessourcesSettings.of(settings).model_copy(update=update)) as served:
        yield served


@asynccontextmanager
async def locked(pool: asyncpg.Pool, table: str):
    """`table` locked against any reader until the block ends (a query that never ends, to a reader)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        yield


async def readers_waiting(pool: asyncpg.Pool, n: int) -> bool:
    """Whether `n` of the read API's connections wait on a lock."""
    waiting = await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name LIKE 'feo-%-lecture' AND wait_event_type = 'Lock'"
    )
    return waiting == n


async def test_a_read_past_the_statement_timeout_answers_503_naming_the_limit(kafka, settings):
    async with api_with(settings, api_statement_timeout_ms=300) as (client, app):
        async with locked(app.state.pipeline.pool, "alertes"):
            # Without the timeout the read waits for the lock, as long as it is held.
            response = await asyncio.wait_for(client.get("/alertes"), 10)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "2"
        assert response.json() == {
            "detail": "lecture trop longue : interrompue après 300 ms (API_STATEMENT_TIMEOUT_MS) ; "
            "restreindre la demande (filtres, limit) ou réessayer dans 2 s"
        }
        assert (await client.get("/alertes")).status_code == 200  # the lock gone, the same read answers


async def test_reads_holding_every_api_connection_leave_the_pipeline_its_own(kafka, settings, monkeypatch):
    """Eight slow reads at once on two read connections: two wait on the lock, the others for a
    connection; /health meanwhile reaches PostgreSQL through the pipeline's own (sharing one
    pool, the eight held every connection, and /health waited behind them). Each kind of 503 is
    logged once for them all (a line per request before)."""
    logged = Said()
    monkeypatch.setattr(api, "log", logged)
    # 3 s: two reads wait on the lock long enough for a loaded machine to see them (audit helper-189 #16).
    async with api_with(settings, api_connections=2, api_statement_timeout_ms=3000) as (client, app):
        pipeline_pool = app.state.pipeline.pool
        # A deadline over it all: with one pool, the pipeline's own look below waits for ever.
        async with locked(pipeline_pool, "etablissements"), asyncio.timeout(20):
            reads = [asyncio.create_task(client.get(f"/etablissements/{UAI}")) for _ in range(8)]
            await eventually(lambda: readers_waiting(pipeline_pool, 2), what="two reads waiting on the lock")
            health = await client.get("/health")
            assert (health.status_code, health.json()["database"]) == (200, True)
            answers = await asyncio.gather(*reads)
        assert [r.status_code for r in answers] == [503] * 8
        # A read stopped frees its connection for a waiting one just as that one gives up, or not.
        said = Counter(r.json()["detail"].split(" :")[0] for r in answers)
        assert said.keys() == {"lecture trop longue", "trop de lectures en cours"}, said
        assert said["lecture trop longue"] >= 2, said
        busy = next(r for r in answers if r.json()["detail"].startswith("trop de lectures"))
        assert busy.json()["detail"] == (
            "trop de lectures en cours : aucune connexion libre en 3000 ms (API_CONNECTIONS = 2) ; réessayer dans 2 s"
        )
        assert busy.headers["Retry-After"] == "2"
        lines = [(line["event"], line["autres_requetes"]) for line in logged.lines if line["level"] == "warning"]
        assert sorted(lines) == [("api.lecture_interrompue", 0), ("api.lectures_saturees", 0)], logged.lines


async def test_the_read_api_cannot_write(kafka, settings):
    async with api_with(settings) as (_, app), app.state.reads.acquire() as conn:
        # In a transaction rolled back whatever happens: were the pool not read-only, the table
        # would be left as it was for the next tests.
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            async with conn.transaction():
                await conn.execute("DELETE FROM alertes")
                raise AssertionError("the read API's connection wrote")


async def test_a_read_whose_server_went_silent_is_503_and_its_connection_given_up(kafka, settings):
    """The server gone without closing the connection (a failover, a network cut, a frozen host):
    it cannot stop the statement, whose answer never comes. The read waited until TCP gave up (a
    minute), holding its connection; the next ones waited for it too. Given up a second past
    API_STATEMENT_TIMEOUT_MS: 503, and the next read, on a new connection, is answered. While
    no new connection opens, a read's wait for one is told as PostgreSQL unreachable, not as
    every connection being in use (API_CONNECTIONS)."""
    url = urlsplit(settings.database_url)
    async with api_with(settings), SilentRelay(url.hostname, url.port) as relay:  # the schema migrated
        through = urlunsplit(url._replace(netloc=f"{url.netloc.rpartition('@')[0]}@127.0.0.1:{relay.port}"))
        bounded = RessourcesSettings.of(settings).model_copy(
            update={"database_url": through, "api_statement_timeout_ms": 300, "api_connections": 1}
        )
        reads = await Reads.open(bounded, bounded.db_schema or SPEC.name)
        try:
            async with reads.snapshot() as conn:
                assert await conn.fetchval("SELECT count(*) FROM alertes") == 0
            relay.silence()
            started = time.monotonic()
            with pytest.raises(HTTPException) as away:
                async with asyncio.timeout(30), reads.snapshot() as conn:  # else waited on for ever
                    await conn.fetchval("SELECT count(*) FROM alertes")
            assert away.value.status_code == 503 and "PostgreSQL injoignable" in away.value.detail
            assert time.monotonic() - started < 0.3 + ANSWER_GRACE_SECONDS + 5, "not held until TCP gives up"
            relay.delay = 60  # the server taking no new connection: the read waits for one to open
            with pytest.raises(HTTPException) as away:
                async with asyncio.timeout(30), reads.snapshot() as conn:
                    await conn.fetchval("SELECT count(*) FROM alertes")
            assert away.value.status_code == 503 and "PostgreSQL injoignable" in away.value.detail, (
                "not a crowd of reads"
            )
            relay.delay = 0
            async with reads.snapshot() as conn:  # a connection made after the silence: relayed
                assert await conn.fetchval("SELECT count(*) FROM alertes") == 0
        finally:
            async with asyncio.timeout(10):
                await reads.pool.close()
