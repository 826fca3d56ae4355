"""SIGTERM under load drains a service: the batch in flight commits, the relay publishes what
the outbox holds, Kafka's committed offsets catch up with the database's positions, and the
process exits 0 within its grace; started again, it goes on where it stopped, and every record
it publishes is published once. Real broker, real database, the service as a process."""

import asyncio
import json
import os
import signal
import socket
import time
from pathlib import Path

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

import contracts as c
from contracts.internal import PROFILS
from deploy.local.processes import ServiceProcesses
from deploy.rattrapage import committed_offsets
from helpers import at, college, event, eventually, lock_waiters, send, uai
from services.common.messaging.connection import kafka_options
from services.common.messaging.outbox import relay_lock

COLLEGES, LOTS = 100, 1500
DEPARTEMENT = "/collectivites/departements/035"
GRACE = 15  # SHUTDOWN_GRACE_SECONDS: for the batch, then as much for the relay


def lot(i: int) -> tuple[str, dict]:
    where = uai(f"035{i % COLLEGES:04d}")
    data = {"uai": where, "lot_id": f"L{i}", "kind": "tablette", "quantity": 1 + i % 7, "os": None, "browsers": []}
    return where, event(c.LOT, DEPARTEMENT, data, subject=where, time_=at(1))


def service_env(kafka, database_url: str, topic_prefix: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "DATABASE_URL": database_url,
        "TOPIC_PREFIX": topic_prefix,
        "LOG_FORMAT": "json",
        "SHUTDOWN_GRACE_SECONDS": str(GRACE),
    }


def send_queue(local_port: int, remote_port: int) -> int:
    """Bytes queued to send on the loopback TCP socket from `local_port` to `remote_port`
    (/proc/net/tcp: the kernel's, not yet acknowledged by the peer)."""
    ends = (f"0100007F:{local_port:04X}", f"0100007F:{remote_port:04X}")
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == ends:
            return int(fields[4].split(":")[0], 16)
    raise AssertionError(f"no socket from port {local_port} to {remote_port}")


def logged(path, event: str) -> list[dict]:
    return [e for e in map(json.loads, path.read_text().splitlines()) if e.get("event") == event]


async def published(bootstrap: str, topic: str) -> list:
    """Every record of `topic`, read to its end."""
    producer = AIOKafkaProducer(**kafka_options(bootstrap))  # it waits for the topic's partitions
    await producer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await producer.partitions_for(topic))]
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(**kafka_options(bootstrap), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        records = []
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for batch in (await consumer.getmany(timeout_ms=1000)).values():
                records += batch
        return records
    finally:
        await consumer.stop()


async def test_sigterm_under_load_commits_flushes_and_exits_0_then_resumes_exactly(
    kafka, database_url, topic_prefix, tmp_path
):
    env = service_env(kafka, database_url, topic_prefix)
    procs = ServiceProcesses(env, log_dir=tmp_path, names=("equipement",), credentials=kafka.credentials)
    db = await asyncpg.connect(database_url)
    group, declarations = topic_prefix + "equipement", topic_prefix + c.EQUIPEMENT
    procs.start()
    try:
        await asyncio.to_thread(procs.wait_healthy)
        colleges = [uai(f"035{i:04d}") for i in range(COLLEGES)]
        await send(kafka.bootstrap_servers, topic_prefix + c.REFERENTIEL, [(u, college(u)) for u in colleges])
        await eventually(
            lambda: db.fetchval(f"SELECT count(*) = {COLLEGES} FROM equipement.etablissements"), what="référentiel"
        )
        # The relay held back (the test holds its lock): the outbox fills as lots are stored.
        await db.execute("SELECT pg_advisory_lock($1)", relay_lock("equipement"))
        # And the first batch held in flight: lot 0 alone, which needs college 0's lock, held by
        # the test; the rest waits behind it. The stop surely comes in the middle of a batch.
        holder = await asyncpg.connect(database_url)
        try:
            held = holder.transaction()
            await held.start()
            await holder.execute(
                "INSERT INTO equipement.verrous AS v (cle) VALUES ($1) ON CONFLICT (cle) DO UPDATE SET cle = v.cle",
                f"uai:{colleges[0]}",
            )
            await send(kafka.bootstrap_servers, declarations, [lot(0)])
            await eventually(lambda: lock_waiters(db), what="a batch waiting for college 0's lock")
            await send(kafka.bootstrap_servers, declarations, [lot(i) for i in range(1, LOTS)])
            assert await db.fetchval("SELECT count(*) FROM equipement.lots") == 0, "nothing committed yet"
            proc = procs.process("equipement")
            asked = time.monotonic()
            os.killpg(proc.pid, signal.SIGTERM)
            log = tmp_path / "equipement.log"
            await eventually(lambda: asyncio.to_thread(logged, log, "service.stopping"), what="the relay loop halted")
            await held.rollback()  # the batch in flight goes on, within the grace
        finally:
            await holder.close()
        await db.execute("SELECT pg_advisory_unlock($1)", relay_lock("equipement"))  # the flush waits for it
        code = await asyncio.to_thread(proc.wait, 2 * GRACE + 15)
        took = time.monotonic() - asked
        assert code == 0, f"exited with code {code}"
        assert took < 2 * GRACE + 10, took

        stored = await db.fetchval("SELECT count(*) FROM equipement.lots")
        assert stored > 0, "the batch in flight at the stop committed on the way out"
        assert await db.fetchval("SELECT count(*) FROM equipement.outbox") == 0, "the relay flushed the outbox"
        positions = {
            (r["topic"], r["partition"]): r["next_offset"]
            for r in await db.fetch("SELECT topic, partition, next_offset FROM equipement.positions")
        }
        committed = await committed_offsets(kafka.bootstrap_servers, group)
        assert committed == positions, "Kafka's committed offsets are the database's positions"
        [flushed] = logged(log, "outbox.flushed")
        assert flushed["records"] == stored, "each lot's profile record, published on the way out"

        procs.restart("equipement")
        await asyncio.to_thread(procs.wait_healthy)
        await eventually(
            lambda: db.fetchval(f"SELECT count(*) = {LOTS} FROM equipement.lots"), what="every lot", timeout=120
        )
        await eventually(lambda: db.fetchval("SELECT count(*) = 0 FROM equipement.outbox"), what="the outbox drained")
        records = await published(kafka.bootstrap_servers, topic_prefix + PROFILS)
        keys = [r.key for r in records if r.value is not None]
        assert len(keys) == LOTS == len(set(keys)), "each lot's profile published once, none lost"
        assert all(json.loads(r.value)["data"]["version"] == 1 for r in records if r.value is not None)
    finally:
        await db.close()
        await asyncio.to_thread(procs.stop)


async def test_sigterm_ends_the_live_alert_streams_first_and_ressources_exits_0(
    kafka, database_url, topic_prefix, tmp_path
):
    """uvicorn waits for every open connection to end before the app's shutdown: a dashboard's
    live stream (an hour at most) held ressources' stop until it was killed, nothing drained.
    The streams are ended first, each told why (`fin`, arret-du-service)."""
    env = service_env(kafka, database_url, topic_prefix)
    procs = ServiceProcesses(env, log_dir=tmp_path, names=("ressources",), credentials=kafka.credentials)
    procs.start()
    try:
        await asyncio.to_thread(procs.wait_healthy)
        url = f"http://127.0.0.1:{procs.ports['ressources']}/alertes/flux"
        timeout = httpx.Timeout(5, read=None)
        async with httpx.AsyncClient(timeout=timeout) as client, client.stream("GET", url) as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            await anext(lines)  # the stream is open (its first line, a comment)
            proc = procs.process("ressources")
            asked = time.monotonic()
            os.killpg(proc.pid, signal.SIGTERM)
            told: list[str] = []
            try:
                async with asyncio.timeout(2 * GRACE):  # a comment keeps an idle stream open: a deadline
                    told += [line async for line in lines]
            except TimeoutError:
                raise AssertionError(f"the live stream still open {2 * GRACE} s after SIGTERM: {told}") from None
        assert "event: fin" in told and any("arret-du-service" in line for line in told), told
        code = await asyncio.to_thread(proc.wait, 2 * GRACE + 15)
        assert code == 0, f"exited with code {code}"
        assert time.monotonic() - asked < 2 * GRACE, "not held until killed"
    finally:
        await asyncio.to_thread(procs.stop)


async def test_sigterm_cuts_a_client_that_does_not_read_its_answers_after_the_grace_and_drains(
    kafka, database_url, topic_prefix, tmp_path
):
    """uvicorn waits for the HTTP requests in flight before the app's shutdown: a client that
    does not read its answers (here: requests pipelined, never read, until the server's writes
    wait on it) held the stop until the process was killed, nothing drained. The requests get
    SHUTDOWN_GRACE_SECONDS, then are cut; the service drains and exits 0."""
    grace = 2
    env = service_env(kafka, database_url, topic_prefix) | {"SHUTDOWN_GRACE_SECONDS": str(grace)}
    procs = ServiceProcesses(env, log_dir=tmp_path, names=("ressources",), credentials=kafka.credentials)
    procs.start()
    try:
        await asyncio.to_thread(procs.wait_healthy)
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
        client.connect(("127.0.0.1", procs.ports["ressources"]))
        client.setblocking(False)
        # An answer the service has at hand (/metrics waits on Kafka and PostgreSQL: a slow reader
        # of its own, which its own bounds cover).
        request = b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        url = f"http://127.0.0.1:{procs.ports['ressources']}/openapi.json"
        async with httpx.AsyncClient() as http:
            answer = len((await http.get(url)).content)
        _, writer = await asyncio.open_connection(sock=client)
        writer.write(request * (16 * 1024 * 1024 // answer))  # far beyond what the sockets' buffers hold
        queued: list[int] = []

        async def server_waits_on_the_client() -> bool:  # its socket's send queue full and not moving
            # For 2 s (20 looks): a server starved of CPU also leaves it unchanged for a moment,
            # and a SIGTERM then let its answer finish (audit helper-189 #17).
            queued.append(send_queue(procs.ports["ressources"], client.getsockname()[1]))
            return len(queued) >= 20 and queued[-1] > 0 and len(set(queued[-20:])) == 1

        await eventually(server_waits_on_the_client, what="the server's writes waiting on the client")
        proc = procs.process("ressources")
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            code = await asyncio.to_thread(proc.wait, 3 * grace + 20)
        finally:
            writer.transport.abort()
        assert code == 0, f"exited with code {code}"
        assert logged(tmp_path / "ressources.log", "outbox.flushed"), "the stop drained"
        said = (tmp_path / "ressources.log").read_text()
        assert "timeout graceful shutdown exceeded" in said, "the stop says it cut a request"
        assert "Exception in ASGI application" not in said, "not as the app's failure, with its traceback"
    finally:
        await asyncio.to_thread(procs.stop)
