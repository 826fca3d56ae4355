"""Partners as they really connect (CONTRACTS.md, Identity), for the demo and the tests.

Collectivités and rectorats post their declarations to the HTTP ingestion service
(`POST /v1/evenements`, batched mode) with a bearer token naming them as declarant; the
ministère and the GAR write the référentiel and the catalogue to Kafka as their own SCRAM
principal. Each channel (a declarant over HTTP, a Kafka principal) sends its records in the
order given, in batches, one channel after the other in the order they first appear: an
entity is always declared by the same declarant, and the outcome never depends on the order
between entities (CONTRACTS.md, Payloads).

The ingestion service checks rights against its own view of the référentiel, which follows
Kafka: an établissement published a moment ago may not be there yet. Like a partner's client,
`send` posts again what was refused `uai-inconnu` until `settle_seconds` have passed; what is
still refused then is reported, never dropped silently.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import httpx
from aiokafka import AIOKafkaProducer

import contracts as c
from services.common.messaging.connection import KafkaAccess

Record = tuple[str, str, bytes]  # topic, key, value: a CloudEvent in structured JSON mode
OVER_HTTP = frozenset(c.DECLARED_OVER_HTTP)
KAFKA_PRINCIPALS = {"/ministere": "ministere", "/gar": "gar"}
BATCH_EVENTS = 1000  # CONTRACTS.md, Identity: a batch holds at most 1,000 events
BATCH = "application/cloudevents-batch+json"
NOT_YET_KNOWN = "uai-inconnu"


@dataclass
class Sent:
    """What the partners wrote; `refused`: (declarant, event id, code, message) of each event
    the ingestion service still refused at the end."""

    accepted: int = 0
    refused: list[tuple[str, str, str, str]] = field(default_factory=list)


class Partenaires:
    def __init__(
        self,
        passerelle_url: str,
        jeton: Callable[[str], str],
        kafka: Callable[[str], KafkaAccess],
        prefix: str = "",
        settle_seconds: float = 30,
    ):
        """`jeton(declarant)`: a bearer token for that source; `kafka(principal)`: its access."""
        self._url = passerelle_url.rstrip("/") + "/v1/evenements"
        self._jeton = jeton
        self._kafka = kafka
        self._prefix = prefix
        self._settle = settle_seconds

    async def send(self, records: Iterable[Record]) -> Sent:
        sent = Sent()
        channels: dict[tuple[str, bool], list[Record]] = {}
        for record in records:
            channels.setdefault(_channel(record), []).append(record)
        async with httpx.AsyncClient(timeout=60) as http:
            for (channel, over_http), batch in channels.items():
                if over_http:
                    await self._post(http, channel, [json.loads(value) for _, _, value in batch], sent)
                else:
                    sent.accepted += await self._produce(channel, batch)
        return sent

    async def _post(self, http: httpx.AsyncClient, declarant: str, events: list[dict], sent: Sent) -> None:
        headers = {"authorization": f"Bearer {self._jeton(declarant)}", "content-type": BATCH}
        deadline = time.monotonic() + self._settle
        for start in range(0, len(events), BATCH_EVENTS):
            pending = events[start : start + BATCH_EVENTS]
            while pending:
                response = await http.post(self._url, content=json.dumps(pending).encode(), headers=headers)
                if response.status_code == 429:
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                    continue
                if response.status_code not in (202, 207):
                    raise RuntimeError(
                        f"{self._url} answered {response.status_code} to {declarant}: {response.text[:300]}"
                    )
                refused = [r for r in response.json()["resultats"] if r["statut"] != "accepted"]
                sent.accepted += len(pending) - len(refused)
                settling = time.monotonic() < deadline
                retry = [r for r in refused if settling and r["code"] == NOT_YET_KNOWN]
                sent.refused += [
                    (declarant, pending[r["index"]]["id"], r["code"], r["message"]) for r in refused if r not in retry
                ]
                pending = [pending[r["index"]] for r in retry]
                if pending:
                    await asyncio.sleep(0.5)

    async def _produce(self, principal: str, records: list[Record]) -> int:
        producer = AIOKafkaProducer(**self._kafka(principal).aiokafka(), acks="all", enable_idempotence=True)
        try:
            await producer.start()
            futures = [
                await producer.send(
                    self._prefix + topic, value, key=key.encode(), headers=[("content-type", c.CONTENT_TYPE.encode())]
                )
                for topic, key, value in records
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        return len(records)


def _channel(record: Record) -> tuple[str, bool]:
    """(declarant, True) for a record posted over HTTP as that declarant; (principal, False)
    for one written to Kafka as that principal."""
    topic, _, value = record
    source = json.loads(value)["source"]
    if topic in OVER_HTTP:
        return source, True
    if source not in KAFKA_PRINCIPALS:
        raise ValueError(f"{topic}: {source} is written neither over HTTP nor by a partner's Kafka principal")
    return KAFKA_PRINCIPALS[source], False
