"""Ingress throughput of one service alone, against a raw consumer of the same records, in one run.

    ./dev bench [--events 100000] [--services equipement formation]

Starts its own Kafka and PostgreSQL, fills a topic with N valid declarations (lots for
equipement, affectations for formation, on 200 real-shaped collèges), then measures:
- baseline: a raw aiokafka consumer in a group that json-decodes every record and commits
  after each fetched batch, as fast as it can;
- the service, as a real process (`python -m services.<name>`, as in production), from its first
  to its last accepted event (the inbox's `received_at`), with its peak RSS.
Prints events per second for both and their ratio (issue 8's first figure). A benchmark, not
a test: it asserts nothing about time; CI does not run it.
"""

import argparse
import asyncio
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

import contracts as c
from deploy.local.kafka import LocalKafka
from deploy.local.postgres import LocalPostgres
from deploy.local.processes import ServiceProcesses
from deploy.topic_admin import create_topics
from deploy.topology import platform_topics

COLLEGES = [f"0350{n:03d}" + c.uai_check_letter(f"0350{n:03d}") for n in range(200)]
T0 = datetime(2026, 9, 1, 8, tzinfo=UTC)
DECLARES = {"equipement": c.EQUIPEMENT, "formation": c.FORMATION}


def _event(type_: str, source: str, data: dict, n: int) -> bytes:
    return json.dumps({
        "specversion": "1.0", "id": f"bench-{n}", "source": source, "type": type_,
        "time": (T0 + timedelta(milliseconds=n)).isoformat(), "subject": data.get("uai"),
        "datacontenttype": "application/json", "data": data,
    }).encode()  # fmt: skip


def referentiel() -> list[tuple[str, bytes]]:
    return [(u, _event(c.ETABLISSEMENT, "/ministere", {
        "uai": u, "nom": f"Collège {u}", "type": "college", "statut": "public", "code_commune": "35238",
        "code_departement": "035", "code_academie": "14", "code_region": "53", "ouvert": True}, i))
        for i, u in enumerate(COLLEGES)]  # fmt: skip


def declaration(service: str, n: int) -> tuple[str, bytes]:
    uai = COLLEGES[n % len(COLLEGES)]
    if service == "equipement":
        data = {
            "uai": uai,
            "lot_id": f"lot-{n % 5000}",
            "kind": "tablette",
            "quantity": 1 + n % 30,
            "os": {"name": "iPadOS", "version": f"{12 + n % 6}.1"},
            "browsers": [{"name": "Safari", "version": "17"}],
        }
        return uai, _event(c.LOT, "/collectivites/departements/035", data, n)
    data = {"teacher_id": f"enseignant-{n % 20000:06d}", "uai": uai, "start": "2026-09-01", "end": None}
    return uai, _event(c.AFFECTATION, "/rectorats/14", data, n)


async def fill(bootstrap: str, topic: str, records: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    try:
        sent = [await producer.send(topic, v, key=k.encode()) for k, v in records]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def raw_rate(bootstrap: str, topic: str, n: int) -> float:
    """Events per second of a raw consumer that json-decodes and commits each fetched batch."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"raw-{time.monotonic_ns()}",
                                auto_offset_reset="earliest", enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    try:
        seen, start = 0, None
        while seen < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=500)
            for records in batch.values():
                for r in records:
                    json.loads(r.value)
                seen += len(records)
            if batch:
                start = start or time.perf_counter()
                await consumer.commit()
        return n / (time.perf_counter() - start)
    finally:
        await consumer.stop()


async def service_rate(service: str, env: dict, database_url: str, n: int, log_dir: Path) -> tuple[float, float]:
    """Events per second of the service from its first to its last accepted declaration, and its
    peak RSS in MB (sampled every 0.2 s)."""
    procs = ServiceProcesses(env, log_dir=log_dir, names=(service,))
    procs.start()
    conn = await asyncpg.connect(database_url)
    peak = 0.0
    try:
        process = psutil.Process(procs.pids()[0])
        deadline = time.monotonic() + 1800
        query = f"SELECT count(*) FROM {service}.inbox WHERE type <> $1"
        while time.monotonic() < deadline:
            peak = max(peak, sum(p.memory_info().rss for p in (process, *process.children(recursive=True))) / 2**20)
            try:
                if await conn.fetchval(query, c.ETABLISSEMENT) >= n:
                    break
            except asyncpg.UndefinedTableError:
                pass  # not migrated yet
            await asyncio.sleep(0.2)
        first, last = await conn.fetchrow(
            f"SELECT min(received_at), max(received_at) FROM {service}.inbox WHERE type <> $1", c.ETABLISSEMENT
        )
        return n / max((last - first).total_seconds(), 1e-3), peak
    finally:
        await conn.close()
        procs.stop()


async def load_referentiel(service: str, env: dict, database_url: str, log_dir: Path) -> None:
    """A first run of the service reads the référentiel and stops: the declarations measured
    next are then all about known établissements (none dead-lettered as uai-inconnu)."""
    procs = ServiceProcesses(env, log_dir=log_dir, names=(service,))
    procs.start()
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if await conn.fetchval(f"SELECT count(*) FROM {service}.etablissements") >= len(COLLEGES):
                    return
            except asyncpg.UndefinedTableError:
                pass
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{service} did not load the référentiel in 120 s (logs in {log_dir})")
    finally:
        await conn.close()
        procs.stop()


async def bench(events: int, services: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="feo-bench-") as tmp, LocalPostgres(Path(tmp) / "pg") as pg:
        kafka = LocalKafka(Path(tmp) / "kafka")
        kafka.start()
        try:
            await create_topics(kafka.bootstrap_servers, platform_topics())
            database_url = await pg.create_database("bench")
            await fill(kafka.bootstrap_servers, c.REFERENTIEL, referentiel())
            print(f"ingress, one service alone on a pre-filled topic of {events:,} valid events (2 cores, same run)")
            for service in services:
                topic = DECLARES[service]
                env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "DATABASE_URL": database_url,
                       "LOG_LEVEL": "WARNING", "LOG_FORMAT": "json"}  # fmt: skip
                await load_referentiel(service, env, database_url, Path(tmp))
                await fill(kafka.bootstrap_servers, topic, [declaration(service, n) for n in range(events)])
                raw = await raw_rate(kafka.bootstrap_servers, topic, events)
                rate, rss = await service_rate(service, env, database_url, events, Path(tmp))
                print(f"  {service:11s} {rate:9,.0f} ev/s   raw consumer {raw:9,.0f} ev/s   "
                      f"ratio {rate / raw:5.3f}x (target >= 0.2x)   peak RSS {rss:5.0f} MB")  # fmt: skip
        finally:
            kafka.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--services", nargs="+", choices=sorted(DECLARES), default=sorted(DECLARES))
    args = parser.parse_args()
    asyncio.run(bench(args.events, args.services))
