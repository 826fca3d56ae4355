"""Ingestion over HTTP: batches of 1,000 events posted to the passerelle until they are on
Kafka, against a raw producer writing the same events in the same run (issue 9's benchmark).

The passerelle runs as a real process and learns the référentiel (the ingress figure's 200
collèges) from Kafka first, so every lot posted is judged and accepted. Measured: events per
second from the first request to the last answer, `--clients` requests in flight at a time
(an answer comes once its events are acknowledged by Kafka, acks=all). Baseline: one aiokafka
producer (acks=all, idempotent) writing the same event bytes to the same kind of topic.
"""

import asyncio
import json
import time

import httpx
from aiokafka import AIOKafkaProducer

import contracts as c
from deploy.identite import IdentiteLocale
from harness import HEADERS, Row, Runtime, Stage, peak_rss_mb, produce, running, wait_until
from ingress import declaration, referentiel
from services.common.messaging.connection import kafka_options
from services.passerelle.settings import PasserelleSettings

BATCH = 1000
DEPARTEMENT = "/collectivites/departements/035"
MEDIA = "application/cloudevents-batch+json"


async def raw_rate(stage: Stage, events: list[tuple[str, bytes]]) -> float:
    """Events per second of one producer writing `events` to the stage's equipement topic."""
    producer = AIOKafkaProducer(
        **kafka_options(stage.bootstrap), acks="all", enable_idempotence=True, linger_ms=5, max_batch_size=256 * 1024
    )
    await producer.start()
    try:
        start = time.perf_counter()
        sent = [await producer.send(stage.topic(c.EQUIPEMENT), v, key=k.encode(), headers=HEADERS) for k, v in events]
        await asyncio.gather(*sent)
        return len(events) / (time.perf_counter() - start)
    finally:
        await producer.stop()


async def http_rate(url: str, headers: dict[str, str], bodies: list[bytes], clients: int) -> float:
    """Events per second of `clients` concurrent posters sending `bodies` (BATCH events each)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)

    async def poster(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            response = await http.post(url, content=queue.get_nowait(), headers=headers)
            if response.status_code != 202:
                raise RuntimeError(f"the passerelle answered {response.status_code}: {response.text[:200]}")

    async with httpx.AsyncClient(timeout=120) as http:
        start = time.perf_counter()
        await asyncio.gather(*(poster(http) for _ in range(clients)))
        return len(bodies) * BATCH / (time.perf_counter() - start)


async def figure(runtime: Runtime, events: int, clients: int) -> list[Row]:
    print(f"\n== passerelle: {events:,} lots posted over HTTP in batches of {BATCH:,}, {clients} requests in flight")
    events -= events % BATCH
    lots = [declaration("equipement", n) for n in range(events)]
    raw = await raw_rate(await runtime.stage("passerelle-raw"), lots)

    stage = await runtime.stage("passerelle")
    identite = IdentiteLocale(stage.log_dir / "identite")
    identite.ensure()
    token = identite.jeton(DEPARTEMENT, ttl_seconds=3600)
    bodies = [
        json.dumps([json.loads(value) for _, value in lots[i : i + BATCH]]).encode() for i in range(0, events, BATCH)
    ]
    await produce(stage.bootstrap, stage.topic(c.REFERENTIEL), referentiel())
    env = {
        "JWKS_FILE": str(identite.jwks_path),
        "PASSERELLE_RATE_EVENTS_PER_S": str(10 * events),
        # One subject here: its requests in flight are --clients, whatever the default bound.
        "PASSERELLE_REQUESTS_PER_SUBJECT": str(clients),
        "PASSERELLE_REQUESTS_TOTAL": str(
            max(clients, PasserelleSettings.model_fields["passerelle_requests_total"].default)
        ),
    }
    headers = {"authorization": f"Bearer {token}", "content-type": MEDIA}
    async with running(stage, ("passerelle",), env) as procs:
        url = f"http://127.0.0.1:{procs.ports['passerelle']}/v1/evenements"
        probe = json.dumps([json.loads(declaration("equipement", events)[1])]).encode()

        async def knows_the_referentiel() -> bool:
            async with httpx.AsyncClient(timeout=10) as http:
                return (await http.post(url, content=probe, headers=headers)).status_code == 202

        await wait_until(knows_the_referentiel, timeout=120, what="the passerelle learning the référentiel")
        rate = await http_rate(url, headers, bodies, clients)
        rss = peak_rss_mb(procs.pids()[0])
    print(f"  passerelle {rate:9,.0f} ev/s   raw producer {raw:9,.0f} ev/s   ratio {rate / raw:6.3f}x   "
          f"peak RSS {rss:5.0f} MB")  # fmt: skip
    return [
        Row(
            f"passerelle: HTTP batches of {BATCH:,} -> Kafka ({events:,} events)",
            f"{rate:,.0f} ev/s = {rate / raw:.3f}x",
            f"raw producer {raw:,.0f} ev/s",
            "(no target: measured)",
            True,
        )
    ]
