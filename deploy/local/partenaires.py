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
import inspect
import json
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import quote

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
LATER = {429: "débit dépassé", 502: "indisponible", 503: "indisponible", 504: "indisponible"}
"""Answers that say "later" (the passerelle's rate for the declarant, or the passerelle or a
proxy before it unavailable): the batch posted again."""
RETRY_SECONDS = 300.0
"""How long a batch is posted again while the passerelle says "later" or is unreachable, before
the run stops (`PasserelleIndisponible`): its events are the same (same ids), a repeat changes
nothing. 429s that long: another client of the same declarant takes its whole rate."""


FIRST_RETRY_SECONDS = 1.0
"""The first wait after the passerelle was unreachable (or answered "later" without Retry-After),
doubled at each attempt, 60 s at most."""


class PasserelleIndisponible(RuntimeError):
    """The passerelle stayed unavailable or unreachable RETRY_SECONDS for a batch."""


@dataclass
class Sent:
    """What the partners wrote; `refused`: (declarant, event id, code, message) of each event
    the ingestion service still refused at the end."""

    accepted: int = 0
    refused: list[tuple[str, str, str, str]] = field(default_factory=list)


class ClientCredentials:
    """Bearer tokens of an identity provider's client-credentials flow (RFC 6749, 4.4), as a
    partner system gets them (README, Tokens for the HTTP ingestion), for a run that outlives one
    token (a provider's usually live 5 minutes; a région's GLPI run reads its files for longer
    than that before its first batch): the one in hand until EXPIRY_MARGIN_SECONDS before it
    expires (`expires_in`), or until the passerelle refused it (`refused`), then another."""

    EXPIRY_MARGIN_SECONDS = 60.0

    def __init__(self, token_url: str, client_id: str, secret: str):
        self._url, self._client, self._secret = token_url, client_id, secret
        self._token: str | None = None
        self._until = 0.0

    async def jeton(self, declarant: str = "") -> str:
        """A token of the client's (whose `declarant` claim names what it may declare)."""
        if self._token is None or time.monotonic() >= self._until:
            self._token, self._until = await self._ask()
        return self._token

    def refused(self, token: str) -> None:
        """The passerelle refused `token` (401): the next `jeton` asks for another."""
        if token == self._token:
            self._token = None

    async def _ask(self) -> tuple[str, float]:
        async with httpx.AsyncClient(timeout=30) as http:
            try:
                # RFC 6749, 2.3.1: each form-urlencoded before Basic (a secret holding `+` or `%`
                # was read otherwise by a provider that decodes them, as Keycloak does).
                credentials = (quote(self._client, safe=""), quote(self._secret, safe=""))
                answer = await http.post(self._url, data={"grant_type": "client_credentials"}, auth=credentials)
            except httpx.TransportError as error:
                raise RuntimeError(f"{self._url} injoignable ({type(error).__name__}) : aucun jeton") from error
        try:
            body = answer.json()
        except ValueError:
            body = None
        if answer.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            # The provider's own words (RFC 6749, 5.2: `error`, `error_description`), never the secret.
            said = {k: body[k] for k in ("error", "error_description") if k in body} if isinstance(body, dict) else {}
            raise RuntimeError(
                f"{self._url} a refusé le client {self._client} ({answer.status_code}"
                f"{', ' + json.dumps(said, ensure_ascii=False) if said else ''}) : aucun jeton"
            )
        written = body.get("expires_in")  # a number, or a numeric string (some providers')
        try:
            lives = float(written) if isinstance(written, int | float | str) and not isinstance(written, bool) else 0.0
        except ValueError:
            lives = 0.0
        until = (
            time.monotonic() + max(lives - self.EXPIRY_MARGIN_SECONDS, lives / 2)
            if math.isfinite(lives) and lives > 0
            else float("inf")  # said nowhere: kept until the passerelle refuses it
        )
        return body["access_token"], until


class Partenaires:
    def __init__(
        self,
        passerelle_url: str,
        jeton: Callable[[str], str | Awaitable[str]],
        kafka: Callable[[str], KafkaAccess],
        prefix: str = "",
        settle_seconds: float = 30,
        said: Callable[[str], None] = lambda _: None,
        jeton_refuse: Callable[[str], None] | None = None,
    ):
        """`jeton(declarant)`: a bearer token for that source, asked before each batch;
        `kafka(principal)`: its access; `said`: told each wait for the passerelle and each batch
        sent (a progress line); `jeton_refuse(token)`, when the tokens come from a provider
        (ClientCredentials.refused): told a token the passerelle refused (401), the batch then
        posted once more with the next one (it expired during a wait)."""
        self._url = passerelle_url.rstrip("/") + "/v1/evenements"
        self._jeton = jeton
        self._jeton_refuse = jeton_refuse
        self._kafka = kafka
        self._prefix = prefix
        self._settle = settle_seconds
        self._said = said

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

    async def _token(self, declarant: str) -> str:
        token = self._jeton(declarant)
        return await token if inspect.isawaitable(token) else token

    async def _post(self, http: httpx.AsyncClient, declarant: str, events: list[dict], sent: Sent) -> None:
        deadline = time.monotonic() + self._settle
        done = 0
        for batch in batches(events):
            pending = batch
            unavailable_since: float | None = None
            attempts = 0
            token, renewed = await self._token(declarant), False
            while pending:
                headers = {"authorization": f"Bearer {token}", "content-type": BATCH}
                try:
                    response = await http.post(self._url, content=json.dumps(pending).encode(), headers=headers)
                    status, why = response.status_code, f"{response.status_code}"
                except httpx.TransportError as error:  # unreachable, or no answer in time
                    response, status, why = None, None, type(error).__name__
                if status is None or status in LATER:
                    what = LATER.get(status, "injoignable") if status else "injoignable"
                    unavailable_since = unavailable_since or time.monotonic()
                    waited = time.monotonic() - unavailable_since
                    if waited >= RETRY_SECONDS:
                        raise PasserelleIndisponible(
                            f"{self._url} {what} depuis {waited:.0f} s ({why}) : {done} événements envoyés "
                            f"sur {len(events)} pour {declarant}, les autres non ; relancer envoie les mêmes"
                        )
                    delay = min(_retry_after(response, FIRST_RETRY_SECONDS * 2**attempts), 60.0)
                    attempts += 1
                    self._said(f"{self._url} {what} ({why}) : nouvel essai dans {delay:.0f} s")
                    await asyncio.sleep(delay)
                    continue
                assert response is not None
                unavailable_since, attempts = None, 0
                if status == 401 and self._jeton_refuse is not None and not renewed:
                    self._jeton_refuse(token)
                    token, renewed = await self._token(declarant), True
                    self._said(f"{self._url} : jeton refusé (401), nouvel essai avec un nouveau jeton")
                    continue
                if status not in (202, 207):
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
            done += len(batch)
            if len(events) > BATCH_EVENTS:
                self._said(f"{declarant} : {done}/{len(events)} événements envoyés")

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


def batches(events: list[dict]) -> Iterable[list[dict]]:
    """The events in batches of BATCH_EVENTS at most, each cut where the subject (an
    établissement) changes, unless one's events alone fill a batch: an établissement's events
    taken in one batch (a GLPI run's lots of an établissement and the retirement of the lots
    gone, counted together a moment otherwise)."""
    batch: list[dict] = []
    for event in events:
        if len(batch) == BATCH_EVENTS:
            subject, cut = event.get("subject"), len(batch)
            while cut and batch[cut - 1].get("subject") == subject:  # back to where its events began
                cut -= 1
            cut = cut or len(batch)  # its events alone fill the batch: cut there
            yield batch[:cut]
            batch = batch[cut:]
        batch.append(event)
    if batch:
        yield batch


def _retry_after(response: httpx.Response | None, default: float) -> float:
    """The answer's Retry-After in seconds (a number; an HTTP date is not read), else `default`."""
    try:
        return max(0.0, float(response.headers["retry-after"])) if response is not None else default
    except (KeyError, ValueError):
        return default


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
