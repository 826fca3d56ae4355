"""`POST /v1/evenements` (CONTRACTS.md, Identity): partners' declarations over HTTP.

A request goes, in order: bearer token (401), Content-Type (400), the subject's rate and its
requests under way (429; 503 when the replica's are all taken: nothing read), size (413, before
the body is read when Content-Length says so) and the time its body takes (408), shape (400;
413 beyond 1,000 events), the subject's rate for its events (429, nothing judged nor written),
each event judged (examen.py), the accepted ones written to Kafka (acks=all, idempotent; 503
when Kafka does not take them in time) without the attributes and fields the contract does not
know (inconnus.py), then the answer: 202 when every event is accepted, else 207 with each
event's result in request order (an accepted one naming the fields left out). Every record
carries the `auth-principal` header (the token's `sub`) and, when well-formed, the request's
W3C Trace Context (`traceparent`, `tracestate`), as a partner's Kafka record would. Errors
answer `{"detail": "…"}` in French; no answer or log line shows the token.
"""

import asyncio
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import asyncpg
import prometheus_client as prometheus
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

import contracts as c
from contracts import Etablissement
from contracts.parsing import MAX_RECORD_BYTES
from services.common.messaging.connection import KafkaAccess
from services.common.messaging.outbox import OUT_OF_STEP, sender_died
from services.common.rules.rights import Refusal
from services.common.runtime.app import AnswerHeaders, ServiceApp, internal_error, started
from services.common.runtime.metrics import HttpMetrics, Metrics, answered
from services.common.runtime.outages import EveryFew
from services.common.runtime.settings import ServiceSettings
from services.common.runtime.startup import StartupFailed
from services.common.runtime.telemetry import HTTP_TELEMETRY, trace_headers
from services.common.storage import referentiel
from services.passerelle import corps, examen
from services.passerelle.corps import BATCHED, STRUCTURED, CorpsRefuse
from services.passerelle.debit import Debit, EnCours, retry_after
from services.passerelle.examen import Accepte, Verdict
from services.passerelle.jetons import ClesAVerifier, JetonRefuse, JwksIndisponible, Principal, Verificateur
from services.passerelle.settings import MAX_BATCH_EVENTS, PasserelleSettings

log = structlog.get_logger(__name__)

REALM = 'Bearer realm="former-equiper-outiller"'
RETRY_UNAVAILABLE_SECONDS = 5
BUSY_RETRY_SECONDS = 1
"""Retry-After of a request beyond those handled at once (`busy`): they last a few milliseconds
to a few seconds (a 16 MiB batch)."""
SPLITTER = ThreadPoolExecutor(1, thread_name_prefix="corps")
"""The one thread requests' bodies are read into events in, one body after the other (as on the
event loop before): the GIL would run several no faster, and each holds its body and decoded
text (a 16 MiB body, up to four times that); the default executor stays free for the rest."""


class Erreur(BaseModel):
    detail: str = Field(description="ce qui ne va pas, en français (jamais le jeton)")


class Resultat(BaseModel):
    index: int = Field(description="rang de l'événement dans la requête, à partir de 0")
    id: str | None = Field(description="son `id`, quand il en a un lisible")
    statut: Literal["accepted", "refused"] = Field(description="accepted : écrit sur Kafka avant cette réponse")
    code: str | None = Field(
        None,
        description="refused : la raison, avec les codes de la DLQ (CONTRACTS.md, Bad input et Limits) "
        "plus source-non-autorisee",
    )
    message: str | None = Field(None, description="refused : pourquoi, en français, nommant le champ et la règle")
    champs_ignores: list[str] | None = Field(
        None,
        description="accepted : les champs de `data` (`data.email`, `data.browsers[].canal`) et les attributs "
        "de l'enveloppe que le contrat ne connaît pas, au plus 16, non écrits sur Kafka : rien d'autre que ce que "
        "le contrat décrit n'entre dans la plateforme (aucun nom, e-mail ni NUMEN) ; absent quand il n'y en a pas",
    )


class Resultats(BaseModel):
    resultats: list[Resultat] = Field(description="un résultat par événement, dans l'ordre de la requête")


def _erreur(description: str) -> dict[str, Any]:
    return {"model": Erreur, "description": description}


RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": Resultats, "description": "tous les événements acceptés, écrits sur Kafka"},
    207: {"model": Resultats, "description": "au moins un événement refusé (les autres écrits sur Kafka)"},
    400: _erreur(f"le corps n'est pas un événement (objet JSON, {STRUCTURED}) ni un lot (tableau JSON, {BATCHED})"),
    401: _erreur("jeton absent ou refusé (signature, émetteur, audience, expiration)"),
    408: _erreur("corps pas reçu en entier dans PASSERELLE_BODY_TIMEOUT_SECONDS"),
    413: _erreur(
        f"corps au-delà de PASSERELLE_MAX_BODY_BYTES, plus de {MAX_BATCH_EVENTS} événements, "
        f"ou un événement structuré au-delà de {MAX_RECORD_BYTES} octets"
    ),
    429: _erreur(
        "au-delà du débit du déclarant, ou de ses requêtes en cours à la fois : réessayer après Retry-After secondes"
    ),
    503: _erreur(
        "Kafka, PostgreSQL ou les clés du fournisseur d'identité injoignables, ou la passerelle déjà pleine de "
        "requêtes : réessayer après Retry-After secondes (un événement déjà reçu n'a pas de second effet)"
    ),
}
_EVENT_SCHEMA = {"type": "object", "description": "un CloudEvent 1.0 (CONTRACTS.md, Envelope)"}
REQUEST_BODY = {
    "required": True,
    "content": {
        STRUCTURED: {"schema": _EVENT_SCHEMA},
        BATCHED: {"schema": {"type": "array", "maxItems": MAX_BATCH_EVENTS, "items": _EVENT_SCHEMA}},
    },
}

router = APIRouter()
bearer = HTTPBearer(
    auto_error=False, description="JWT du fournisseur d'identité (client credentials), claim `declarant`"
)


def new_producer(settings: PasserelleSettings) -> AIOKafkaProducer:
    """The producer the accepted events are written with."""
    return AIOKafkaProducer(
        **KafkaAccess.of(settings).aiokafka(),
        client_id="feo-passerelle-http",
        acks="all",
        enable_idempotence=True,  # a retried send is written once, in order
    )


class Passerelle:
    """What a request needs: the token verifier, the rate and the requests under way, the
    référentiel view and Kafka."""

    def __init__(
        self,
        settings: PasserelleSettings,
        verificateur: Verificateur,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        debit: Debit,
    ):
        self.settings, self.verificateur, self.pool, self.producer, self.debit = (
            settings,
            verificateur,
            pool,
            producer,
            debit,
        )
        self.en_cours = EnCours(settings.passerelle_requests_per_subject, settings.passerelle_requests_total)
        self._renewing = asyncio.Lock()
        self._renew_after = 0.0  # after a renewal that failed, none is tried before this (monotonic)
        self._retiring: set[asyncio.Task[None]] = set()  # replaced producers, stopped once unused
        # Each 503's line at most once in 10 s: they come before any rate or bound, so a made-up
        # token repeated (its `kid` unknown, its `iat` now), or the provider away, wrote a line
        # per request, anyone's for the asking.
        self._new_key_said, self._keys_away_said = EveryFew(), EveryFew()
        self._unwritten_said, self.referentiel_away_said = EveryFew(), EveryFew()

    async def principal(self, credentials: HTTPAuthorizationCredentials | None) -> Principal:
        if credentials is None:
            raise HTTPException(
                401, "jeton absent : attendu l'en-tête Authorization: Bearer <jeton>", {"WWW-Authenticate": REALM}
            )
        try:
            return await self.verificateur.verifier(credentials.credentials)
        except JetonRefuse as e:
            raise HTTPException(
                401, f"jeton refusé : {e}", {"WWW-Authenticate": f'{REALM}, error="invalid_token"'}
            ) from None
        except ClesAVerifier as e:  # its key may be one the provider published since: not told invalid
            self._new_key_said.say(log.warning, "jwks.cle_a_verifier", error=str(e))
            raise Indisponible(
                "cle-a-verifier",
                "la clé du jeton n'est pas encore connue : réessayer quand les clés du fournisseur d'identité "
                "auront été relues",
                {"Retry-After": str(math.ceil(e.retry_after))},
            ) from None
        except JwksIndisponible as e:  # no key to check any token with: not the client's fault
            self._keys_away_said.say(log.error, "jwks.indisponible", error=str(e))
            raise Indisponible(
                "cles-indisponibles",
                "les clés du fournisseur d'identité sont illisibles : réessayer",
                {"Retry-After": str(RETRY_UNAVAILABLE_SECONDS)},
            ) from None

    async def etablissements(self, uais: list[str]) -> dict[str, Etablissement]:
        if not uais:
            return {}
        async with self.pool.acquire() as conn:
            return await referentiel.load(conn, uais)

    async def write(self, accepted: Sequence[Accepte], headers: list[tuple[str, bytes]]) -> None:
        """Every accepted event on Kafka with `headers`, acknowledged by all in-sync replicas, or 503."""
        if died := sender_died(self.producer):  # it would refuse them all, for as long as it lives
            await self._renew(self.producer, died)
        topic, producer = self.settings.topic, self.producer
        try:
            async with asyncio.timeout(self.settings.passerelle_write_timeout_seconds):
                sent = [
                    await producer.send(topic(a.topic), a.raw, key=a.key.encode(), headers=headers) for a in accepted
                ]
                await asyncio.gather(*sent)
        except (KafkaError, TimeoutError) as e:
            if isinstance(e, OUT_OF_STEP):  # refused by the broker (a topic's limits): the operator's to fix
                log.error("evenements.refuses_par_kafka", events=len(accepted), error=type(e).__name__)
                await self._renew(producer, e)
            else:
                self._unwritten_said.say(
                    log.warning, "evenements.non_ecrits", events=len(accepted), error=type(e).__name__
                )
            raise Indisponible(
                "kafka",
                "Kafka n'a pas confirmé l'écriture des événements acceptés : renvoyer la requête "
                "(un événement déjà reçu, même source et même id, n'a pas de second effet)",
                {"Retry-After": str(RETRY_UNAVAILABLE_SECONDS)},
            ) from None

    async def _renew(self, failed: AIOKafkaProducer, error: BaseException) -> None:
        """A new producer in place of `failed`, once however many requests saw it fail: its
        sequence numbers are out of step with the broker's on the partition of the refused
        record, whose later events would all be refused as out of order for as long as it lives;
        or its sender died (outbox.sender_died), and it would refuse every event."""
        async with self._renewing:
            if self.producer is not failed or time.monotonic() < self._renew_after:
                return
            producer = new_producer(self.settings)
            try:  # bounded: the requests waiting on this lock have their own write timeout
                async with asyncio.timeout(self.settings.passerelle_write_timeout_seconds):
                    await producer.start()
            except (KafkaError, TimeoutError) as e:  # Kafka away: tried again once the pause is over
                log.warning("kafka.producteur_non_renouvele", error=type(e).__name__)
                self._renew_after = time.monotonic() + RETRY_UNAVAILABLE_SECONDS
                await producer.stop()
                return
            except BaseException:  # cancelled (the request, the shutdown): not left unclosed
                await producer.stop()
                raise
            self.producer = producer
        log.info("kafka.producteur_renouvele", reason=type(error).__name__)
        # Other requests may still be writing with it (their sends queued one by one): stopped
        # once the longest of them has had its write timeout, not under them.
        retiring = asyncio.create_task(self._retire(failed), name="passerelle-producer-retired")
        self._retiring.add(retiring)
        retiring.add_done_callback(self._retiring.discard)

    async def _retire(self, producer: AIOKafkaProducer) -> None:
        try:
            await asyncio.sleep(self.settings.passerelle_write_timeout_seconds)
        finally:  # cancelled at shutdown: stopped at once
            await producer.stop()

    async def close(self) -> None:
        """At shutdown: the producer, and those replaced but not yet stopped."""
        for retiring in list(self._retiring):
            retiring.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        await self.producer.stop()


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


@router.post(
    "/v1/evenements",
    summary="Déclarer des événements (CloudEvents, mode structuré ou par lots)",
    status_code=202,
    response_model=Resultats,
    responses=RESPONSES,
    openapi_extra={"requestBody": REQUEST_BODY},
)
async def evenements(request: Request, credentials: Credentials) -> JSONResponse:
    started = time.monotonic()
    passerelle: Passerelle = request.app.state.passerelle
    settings = passerelle.settings
    principal = await passerelle.principal(credentials)
    media = corps.media_type(request.headers.get("content-type"), request.headers.get("content-encoding"))
    if wait := passerelle.debit.waiting(principal.subject):  # refused before its body is even read
        raise too_fast(settings, principal.subject, wait)
    if bound := passerelle.en_cours.refus(principal.subject):  # likewise
        raise busy(settings, principal.subject, bound)
    with passerelle.en_cours.tenue(principal.subject):
        return await _receive(request, passerelle, principal, media, started)


async def _receive(
    request: Request, passerelle: Passerelle, principal: Principal, media: str, started: float
) -> JSONResponse:
    """The request's body read, its events judged, the accepted ones written: its answer."""
    settings = passerelle.settings
    cap = corps.limit(media, settings.passerelle_max_body_bytes)
    # Read into events in a thread of its own (SPLITTER): 16 MiB took 0.2 s of CPU, during which
    # the event loop answered nobody; there, the loop gets its turn every few milliseconds (the
    # GIL's switch interval: longest turn 6-41 ms, measured 2 December 2026).
    try:
        length = request.headers.get("content-length")
        raw = await corps.read(request.stream(), length, cap, settings.passerelle_body_timeout_seconds)
        elements = await asyncio.get_running_loop().run_in_executor(SPLITTER, corps.split, raw, media)
    except CorpsRefuse:
        # Read and split for nothing: counted as a full batch, so that a client repeating such a
        # request meets 429 before its body is read, as a client sending too many events does.
        passerelle.debit.spend(principal.subject, MAX_BATCH_EVENTS)
        raise
    except ClientDisconnect:  # gone before its whole body came: nobody to answer, nothing went wrong here
        log.info("requete.abandonnee", subject=principal.subject, step="corps")
        return JSONResponse({"detail": "le client a fermé la connexion avant la fin du corps"}, 400)
    del raw  # not kept once split: each event holds its own bytes
    # An empty batch costs one: each request is a signature checked and a line logged.
    if wait := passerelle.debit.take(principal.subject, max(len(elements), 1)):
        raise too_fast(settings, principal.subject, wait)
    # Elements too long or too deeply nested to be decoded were read token by token to
    # find their ends, up to corps.SKIPPED_TOKENS (0.04 s): a full batch more, as a body
    # refused whole costs (the bucket in debt by as much at most).
    if any(e.skimmed for e in elements):
        passerelle.debit.spend(principal.subject, MAX_BATCH_EVENTS)
    not_after = datetime.now(UTC) + settings.max_clock_skew

    async def lookup(uais: list[str]) -> dict[str, Etablissement]:
        # The read alone is bounded: judging a large request's events is CPU, not a slow database.
        async with asyncio.timeout(settings.passerelle_lookup_timeout_seconds):
            return await passerelle.etablissements(uais)

    try:
        verdicts = await examen.judge(elements, principal.declarants, not_after, lookup)
    except _DATABASE_AWAY as e:
        passerelle.referentiel_away_said.say(log.warning, "referentiel.injoignable", error=type(e).__name__)
        raise Indisponible(
            "postgresql", "PostgreSQL injoignable : réessayer", {"Retry-After": str(RETRY_UNAVAILABLE_SECONDS)}
        ) from None
    accepted = [v for v in verdicts if isinstance(v, Accepte)]
    await passerelle.write(accepted, record_headers(principal.subject, request.headers.items()))
    request.app.state.compteurs.events_judged(verdicts)
    status, body = answer([e.id for e in elements], verdicts)
    log.info(
        "evenements.recus",
        subject=principal.subject,
        events=len(verdicts),
        refused=dict(Counter(v.code for v in verdicts if isinstance(v, Refusal))),
        # How many, never which: a key is the partner's own text.
        events_with_unknown_fields=sum(bool(a.ignores) for a in accepted),
        duration_ms=round((time.monotonic() - started) * 1000),
    )
    return JSONResponse(body, status)


_DATABASE_AWAY = (
    OSError,
    TimeoutError,  # no answer within PASSERELLE_LOOKUP_TIMEOUT_SECONDS
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, restarting, not accepting yet
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections
)


def too_fast(settings: PasserelleSettings, subject: str, wait: float) -> HTTPException:
    return HTTPException(
        429,
        f"débit dépassé pour {subject} : au plus {settings.passerelle_rate_events_per_s:g} "
        f"événements par seconde, {settings.passerelle_rate_burst} d'un coup",
        {"Retry-After": retry_after(wait)},
    )


def busy(settings: PasserelleSettings, subject: str, bound: str) -> HTTPException:
    """A request beyond the requests handled at once (debit.EnCours): of its subject, or past the
    places kept for others (429, as beyond its rate), or of every subject (503: the replica is
    full, not the client's doing)."""
    if bound in ("sujet", "reserve"):
        why = (
            f"au plus {settings.passerelle_requests_per_subject} en cours"
            if bound == "sujet"
            else "les dernières places de la passerelle sont gardées aux déclarants sans requête en cours"
        )
        return HTTPException(
            429,
            f"trop de requêtes à la fois pour {subject} : {why} ; "
            "attendre la réponse d'une requête avant d'en envoyer une autre",
            {"Retry-After": retry_after(BUSY_RETRY_SECONDS)},
        )
    return Indisponible(
        "passerelle-pleine",
        f"la passerelle traite déjà {settings.passerelle_requests_total} requêtes : réessayer",
        {"Retry-After": retry_after(BUSY_RETRY_SECONDS)},
    )


def record_headers(subject: str, http_headers: Iterable[tuple[str, str]]) -> list[tuple[str, bytes]]:
    """The headers of each record written: its content type, who was authenticated, and the
    request's trace context, checked and carried as the services carry one between records
    (a malformed `traceparent` is dropped, and `tracestate` with it). Only the W3C trace
    context (telemetry.W3C_TRACE_CONTEXT): a partner's `baggage` would travel on to the alerts
    other territories read."""
    trace = trace_headers([(name, value.encode()) for name, value in http_headers], None, with_state=True)
    return [
        ("content-type", c.CONTENT_TYPE.encode()),
        (c.PRINCIPAL_HEADER, subject.encode()),
        *((name, value.encode()) for name, value in trace.items()),
    ]


def answer(ids: Sequence[str | None], verdicts: Sequence[Verdict]) -> tuple[int, dict]:
    """202 when every event is accepted, else 207; one result per event, in order."""
    results: list[dict[str, Any]] = []
    for index, (id, verdict) in enumerate(zip(ids, verdicts, strict=True)):
        result: dict[str, Any] = {"index": index, "id": id}
        if isinstance(verdict, Refusal):
            result |= {"statut": "refused", "code": verdict.code, "message": verdict.message}
        else:
            result["statut"] = "accepted"
            if verdict.ignores:
                result["champs_ignores"] = list(verdict.ignores)
        results.append(result)
    refused = any(isinstance(v, Refusal) for v in verdicts)
    return (207 if refused else 202), {"resultats": results}


# What Starlette itself answers, in English, for a path or a method no route has.
_STARLETTE = {
    (404, "Not Found"): "aucun point d'accès à cette adresse : POST /v1/evenements",
    (405, "Method Not Allowed"): "méthode non permise : POST /v1/evenements",
}


async def _refused(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CorpsRefuse)
    return JSONResponse({"detail": exc.message}, exc.status)


class Indisponible(HTTPException):
    """A 503, and why: `raison`, one of INDISPONIBLE (feo_passerelle_unavailable_total)."""

    def __init__(self, raison: str, detail: str, headers: dict[str, str]) -> None:
        assert raison in INDISPONIBLE, raison
        super().__init__(503, detail, headers)
        self.raison = raison


INDISPONIBLE = ("cle-a-verifier", "cles-indisponibles", "kafka", "postgresql", "passerelle-pleine")
"""Why the passerelle answers 503: a token's key not among those in hand and not fetched again
for it yet, no key to verify any token with, Kafka not confirming the writes, PostgreSQL (its
référentiel) away, the replica's requests all taken."""


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, Indisponible):
        request.app.state.compteurs.unavailable.labels(request.app.state.compteurs.service, exc.raison).inc()
    detail = _STARLETTE.get((exc.status_code, exc.detail), exc.detail)
    return JSONResponse({"detail": detail}, exc.status_code, headers=exc.headers)


class Compteurs:
    """The passerelle's own figures, in its service's registry (/metrics): the requests to
    `/v1/evenements` by status (401, 413 and 429 too, which no log line says one by one), and the
    events of those judged by outcome, refusals by code. Labels of bounded sets only: never the
    client (`sub`), which a made-up token names as it likes."""

    def __init__(self, metrics: Metrics):
        self.service = metrics.service
        self.requests = prometheus.Counter(
            "feo_passerelle_requests",
            "requests to POST /v1/evenements, by HTTP status",
            ["service", "status"],
            registry=metrics.registry,
        )
        self.events = prometheus.Counter(
            "feo_passerelle_events",
            "events of the requests judged, by outcome (accepted: written to Kafka; refused) and refusal code",
            ["service", "outcome", "code"],
            registry=metrics.registry,
        )
        self.unavailable = prometheus.Counter(
            "feo_passerelle_unavailable",
            "503 answers to POST /v1/evenements, by reason",
            ["service", "reason"],
            registry=metrics.registry,
        )
        for reason in INDISPONIBLE:  # each at 0 from the start: a rate over a series born at its first is lost
            self.unavailable.labels(self.service, reason)
        self.keys: Callable[[], float] = lambda: math.nan  # the verifier's, once the lifespan made it
        prometheus.Gauge(
            "feo_passerelle_jwks_keys",
            "signing keys in hand to verify tokens with (0: every request 503)",
            ["service"],
            registry=metrics.registry,
        ).labels(self.service).set_function(lambda: self.keys())

    def events_judged(self, verdicts: Sequence[Verdict]) -> None:
        refused = Counter(v.code for v in verdicts if isinstance(v, Refusal))
        if accepted := len(verdicts) - sum(refused.values()):
            self.events.labels(self.service, "accepted", "").inc(accepted)
        for code, n in refused.items():
            self.events.labels(self.service, "refused", code).inc(n)


class CountRequests:
    """ASGI middleware: each answer of `/v1/evenements` counted by its status (Compteurs), an
    error no handler answered as the 500 the server sends for it."""

    def __init__(self, app: Any, compteurs: Compteurs) -> None:
        self.app, self.compteurs = app, compteurs

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/evenements":
            return await self.app(scope, receive, send)
        requests = self.compteurs.requests.labels
        await answered(
            self.app, scope, receive, send, lambda status: requests(self.compteurs.service, str(status)).inc()
        )


def create_api(stream_app: ServiceApp, settings: ServiceSettings) -> FastAPI:
    """The ASGI app the passerelle serves: this API, `/health`, and the référentiel consumer's lifespan."""
    settings = PasserelleSettings.of(settings)

    @asynccontextmanager
    async def lifespan(api: FastAPI):
        try:
            verificateur = Verificateur(
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience,
                max_lifetime_seconds=settings.jwt_max_lifetime_seconds,
                jwks_file=Path(settings.jwks_file) if settings.jwks_file else None,
                jwks_url=settings.jwks_url,
            )
        except ValueError as e:  # neither or both of JWKS_FILE and JWKS_URL (a bad URL: refused as a setting)
            log.error("startup.refused", reason=str(e))
            raise StartupFailed(str(e)) from None
        await started(stream_app, stream_app.start())
        passerelle: Passerelle | None = None
        producer = new_producer(settings)
        try:
            await producer.start()
            debit = Debit(settings.passerelle_rate_events_per_s, settings.passerelle_rate_burst)
            passerelle = Passerelle(settings, verificateur, stream_app.pipeline.pool, producer, debit)
            api.state.passerelle = passerelle
            compteurs.keys = verificateur.cles_en_main
            yield
        finally:
            try:
                await (passerelle.close() if passerelle else producer.stop())
            finally:
                await stream_app.stop()

    api = FastAPIOffline(  # FastAPI serving the assets of /docs and /redoc itself (no CDN)
        title="former-équiper-outiller — passerelle de déclaration",
        version="1",
        description="Les déclarations des partenaires par HTTP (CONTRACTS.md, Identity) : rectorats, "
        "collectivités, et le ministère et le GAR pour le référentiel et le catalogue ; "
        "un jeton porteur dont la claim `declarant` lie la `source` des événements, les contrôles du "
        "contrat et des droits faits avant de répondre, les événements acceptés écrits sur Kafka avant "
        "la réponse. Une erreur répond en français.",
        lifespan=lifespan,
        telemetry=HTTP_TELEMETRY,
        # No redirect from `/x/` to `/x` (a 404 names the paths): behind a proxy ending TLS, its
        # Location said http://, and a client following a 307 sent the body again in clear.
        redirect_slashes=False,
        exception_handlers={CorpsRefuse: _refused, StarletteHTTPException: _http_error, Exception: internal_error},
    )
    api.include_router(router)
    api.add_middleware(AnswerHeaders)
    api.state.compteurs = compteurs = Compteurs(stream_app.pipeline.metrics)
    api.add_middleware(CountRequests, compteurs=compteurs)
    api.add_middleware(HttpMetrics, metrics=stream_app.pipeline.metrics)

    stream_app.serve_probes(api)

    return api
