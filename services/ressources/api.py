"""The dashboards' read API, served over HTTP by ressources beside its Kafka consumer.

FastAPI gives the OpenAPI document (`/openapi.json`, `/docs`, whose assets the API serves itself:
no CDN) and turns bad parameters into a 422 naming the parameter, in French (api_errors.py: each
parameter's description is the rule its error message states). Every parameter is bounded here,
before it reaches PostgreSQL: a value the database cannot take (a NUL, an integer beyond int64)
must be a 4xx, never a 500. Everything here reads; nothing writes.
"""

import asyncio
import base64
import json
import re
import socket
import struct
import unicodedata
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

import anyio
import asyncpg
import prometheus_client as prometheus
import structlog
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi_offline import FastAPIOffline
from pydantic import AfterValidator

from contracts import ALERT_KINDS, AlertKind, Etablissement, is_valid_uai, uai_check_letter
from contracts._identifiers import COMMUNE_PATTERN, DEPARTEMENT_PATTERN, REGION_PATTERN
from contracts.internal import CouvertureFormation
from services.common.runtime.app import AnswerHeaders, ServiceApp
from services.common.runtime.metrics import HttpMetrics
from services.common.runtime.outages import EveryFew
from services.common.runtime.settings import ServiceSettings
from services.common.runtime.telemetry import HTTP_TELEMETRY
from services.common.storage.db import create_pool
from services.ressources import api_home, queries, stream
from services.ressources.api_errors import HANDLERS, REFUSED, Erreur
from services.ressources.api_reponses import AlertState, FicheEtablissement, PageAlertes, SyntheseRessource
from services.ressources.hotes import AllowedHosts
from services.ressources.rules import MIN_TEACHERS_DETAILED, Seuils, evaluate, is_evaluated
from services.ressources.settings import RessourcesSettings
from services.ressources.store import EVERY_RESOURCE, RessourcesStore, stored_ressource
from services.ressources.stream import AlertHub, Subscription


async def known_parameters(request: Request) -> None:
    """A query parameter the route does not read is refused: a misspelt filter (`academie=14`)
    would otherwise answer every alert as if it filtered them. So is one given twice, which none
    reads (FastAPI took the last: `kind=a&kind=b` answered the alerts of `b` alone)."""
    route = request.scope.get("route")
    known, dependants = set(), [route.dependant] if route else []
    while dependants:  # the route's parameters and its dependencies'
        dependant = dependants.pop()
        known |= {p.alias for p in dependant.query_params}
        dependants += dependant.dependencies
    if unknown := sorted(set(request.query_params) - known):
        expected = ", ".join(sorted(known)) or "aucun"
        listed = unknown[: UNKNOWN_LISTED - 1] if len(unknown) > UNKNOWN_LISTED else unknown
        refusals = [_refused(name, f"paramètre inconnu (attendus : {expected})") for name in listed]
        if len(unknown) > len(listed):  # a 14 KB query of 3,500 names was answered in 679 KB
            after = len(unknown) - len(listed) - 1
            refusals.append(_refused(unknown[len(listed)], f"paramètre inconnu, et {after} autre(s) après lui"))
        raise RequestValidationError(refusals)
    given = Counter(name for name, _ in request.query_params.multi_items())
    if repeated := sorted(name for name, times in given.items() if times > 1):
        raise RequestValidationError([_refused(name, "paramètre répété : une valeur au plus") for name in repeated])


UNKNOWN_LISTED = 10
"""Unknown query parameters a refusal names at most, the last one saying how many more follow."""


def _refused(name: str, why: str) -> dict[str, Any]:
    """A refused query parameter, as FastAPI's own refusals are (api_errors words it)."""
    return {"loc": ("query", name), "type": "value_error", "msg": why, "ctx": {"error": why}}


def _refused_query(name: str, why: str) -> RequestValidationError:
    return RequestValidationError([_refused(name, why)])


router = APIRouter(responses=REFUSED, dependencies=[Depends(known_parameters)])
log = structlog.get_logger(__name__)

MAX_LIMIT = 500
MAX_CURSOR = 512  # a cursor holds an instant and an alert_id
MAX_OFFSET = 1_000_000  # deeper than any dashboard pages; filters narrow a search instead
MAX_RESOURCE_ID = 256  # CONTRACTS.md, Limits
MAX_STORED_RESOURCE_ID = 2700
"""The longest resource_id a path may name: the contract's 256 since 30 November 2026, longer
ones stored before (read, not refused); a btree entry (the primary key) holds about 2,700 bytes,
so none longer was ever stored."""
RETRY_AFTER_SECONDS = 10  # what a refused SSE client is told to wait
READ_RETRY_SECONDS = 2  # what a read refused for want of a connection, or stopped, is told to wait
ANSWER_GRACE_SECONDS = 1.0
"""How much longer than API_STATEMENT_TIMEOUT_MS a read waits for a statement's answer: past
it, the server is not there to stop it (gone without closing the connection, frozen)."""
# A last bound on a stream, whatever holds it: past its lifetime and this grace, the response is
# cut (one whose client stops reading is cut sooner, once a frame has waited SSE_SEND_SECONDS).
SSE_HARD_GRACE_SECONDS = 30
SSE_SEND_SECONDS = 30
"""How long one frame of a stream may wait for its client to read (the socket's buffers full)."""
TRANSPORT = "feo.transport"
"""Where a request's scope holds its connection's transport (uvicorn's), when known: `_with_transport`."""


def _no_control(value: str) -> str:
    """PostgreSQL refuses NUL in text, and no identifier of the platform holds a control
    character: refused here, with the parameter's name, rather than by the database with a 500."""
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        raise ValueError("caractère de contrôle interdit (NUL, retour à la ligne…)")
    return value


def _one_of(values: tuple[str, ...]) -> str:
    return ", ".join(values[:-1]) + " ou " + values[-1]


def _integer(low: int, high: int) -> str:
    return f"un entier entre {low} et {high:,}".replace(",", " ")


# Each description is the rule a refused value is told, after "doit être" (api_errors.py). The
# optional filters are `Annotated[X | None, …]`: in `Annotated[X, …] | None`, FastAPI loses the
# description.
ResponsableType = Literal["commune", "departement", "region"]
CodeAcademie = Annotated[
    str | None, Query(pattern=r"^[0-9]{2}$", description="un code académie de 2 chiffres, par ex. 14")
]
CodeDepartement = Annotated[
    str | None,
    Query(pattern=r"^([0-9]{3}|02[AB])$", description="un code département de 3 caractères, par ex. 035 ou 02A"),
]
Kind = Annotated[AlertKind | None, Query(description=f"{_one_of(ALERT_KINDS)} (le type d'alerte)")]
ResponsableTypeFilter = Annotated[
    ResponsableType | None,
    Query(description=f"{_one_of(get_args(ResponsableType))} (la collectivité responsable de l'équipement)"),
]
_RESPONSABLE_CODES = {"commune": COMMUNE_PATTERN, "departement": DEPARTEMENT_PATTERN, "region": REGION_PATTERN}
_RESPONSABLE_FORMS = {
    "commune": "un code commune INSEE de 5 caractères, par ex. 35016 ou 2A004",
    "departement": "un code département de 3 caractères, par ex. 035 ou 02A",
    "region": "un code région de 2 chiffres, par ex. 53",
}
ResponsableCode = Annotated[
    str | None,
    Query(
        pattern="^(" + "|".join(p.strip("^$") for p in _RESPONSABLE_CODES.values()) + ")$",
        description="un code de l'annuaire : de commune (35016, 2A004), de département (035, 02A) ou de région (53)",
    ),
]


def _responsable(kind: str | None, code: str | None) -> None:
    """A code that cannot be of that type's form would match nothing: refused, not answered empty."""
    if kind is not None and code is not None and not re.fullmatch(_RESPONSABLE_CODES[kind], code):
        raise _refused_query("responsable_code", f"doit être {_RESPONSABLE_FORMS[kind]} (responsable_type={kind})")


def _uai(value: str) -> str:
    _no_control(value)
    if not is_valid_uai(value):
        digits = value[:7]
        known = len(value) == 8 and digits.isascii() and digits.isdigit()
        hint = (
            f"lettre de contrôle attendue {uai_check_letter(digits)}"
            if known
            else "7 chiffres puis la lettre de contrôle"
        )
        raise ValueError(f"pas un UAI valide : {hint}")
    return value


Uai = Annotated[
    str, Path(description="un UAI (7 chiffres et leur lettre de contrôle), par ex. 0350042F"), AfterValidator(_uai)
]
ResourceId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=MAX_STORED_RESOURCE_ID,
        description=f"un identifiant, par ex. ark:/67375/xyz : de 1 à {MAX_RESOURCE_ID} caractères depuis le 30 "
        f"novembre 2026, jusqu'à {MAX_STORED_RESOURCE_ID} pour une ressource reçue avant",
    ),
    AfterValidator(_no_control),
]
MAX_SEQ = 2**63 - 1  # a journal position: PostgreSQL's bigint


def _seq(why: str) -> dict[str, Any]:
    """The bounds and the rule of a journal position given by a client (Last-Event-ID and its like)."""
    return {"ge": 0, "le": MAX_SEQ, "description": f"{_integer(0, MAX_SEQ)} ({why})"}


LastEventId = Annotated[
    int | None,
    Header(
        alias="Last-Event-ID",
        **_seq("l'`id:` du dernier événement reçu : le flux rejoue d'abord le journal après lui"),
    ),
]


class Reads:
    """The read API's connections: a pool of their own (API_CONNECTIONS), apart from the
    pipeline's. Dashboards reading at once then never hold the connections that the consumer's
    batches, the relay and /health need (sharing them, slow reads took /health's and stalled
    ingestion). A read waits at most API_STATEMENT_TIMEOUT_MS for a connection, and the server
    stops each of its statements past as long: either way a 503 that says which, rather than a
    request left hanging. A statement whose answer does not come ANSWER_GRACE_SECONDS after that
    (the server gone without closing the connection, frozen) is given up here too, its
    connection with it. Read-only on the server's side too (`default_transaction_read_only`)."""

    def __init__(self, pool: asyncpg.Pool, timeout_ms: int):
        self.pool, self.timeout_ms = pool, timeout_ms
        # Each 503's line at most once in 10 s (outages.EveryFew): one per request, PostgreSQL
        # away or a read too long for the bound wrote as many lines as dashboards asked.
        self._away_said, self._crowd_said = EveryFew(), EveryFew()
        self._too_long_said: dict[str | None, EveryFew] = {}  # by route: each slow one named

    def too_long(self, path: str | None) -> None:
        """A read's statement stopped past the bound: said at most once in 10 s per route."""
        said = self._too_long_said.setdefault(path, EveryFew())
        said.say(log.warning, "api.lecture_interrompue", path=path, limit_ms=self.timeout_ms)

    def away(self, exc: BaseException) -> HTTPException:
        """PostgreSQL away for a read: a 503 to retry, said at most once in 10 s."""
        self._away_said.say(log.warning, "api.base_injoignable", error=type(exc).__name__)
        return HTTPException(
            503,
            f"PostgreSQL injoignable pour le moment : réessayer dans {READ_RETRY_SECONDS} s",
            headers={"Retry-After": str(READ_RETRY_SECONDS)},
        )

    @classmethod
    async def open(cls, settings: RessourcesSettings, schema: str) -> "Reads":
        pool = await create_pool(
            settings.database_url,
            schema,
            max_size=settings.api_connections,
            purpose="lecture",
            settings={
                "statement_timeout": str(settings.api_statement_timeout_ms),
                "default_transaction_read_only": "on",
            },
            command_timeout=settings.api_statement_timeout_ms / 1000 + ANSWER_GRACE_SECONDS,
        )
        return cls(pool, settings.api_statement_timeout_ms)

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        try:
            conn = await self.pool.acquire(timeout=self.timeout_ms / 1000)
        except TimeoutError as exc:
            if self.pool.get_size() < self.pool.get_max_size():  # it waited for a connection to open
                raise self.away(exc) from None
            self._crowd_said.say(
                log.warning, "api.lectures_saturees", connections=self.pool.get_max_size(), waited_ms=self.timeout_ms
            )
            raise HTTPException(
                503,
                f"trop de lectures en cours : aucune connexion libre en {self.timeout_ms} ms "
                f"(API_CONNECTIONS = {self.pool.get_max_size()}) ; réessayer dans {READ_RETRY_SECONDS} s",
                headers={"Retry-After": str(READ_RETRY_SECONDS)},
            ) from None
        except stream.UNREACHABLE as exc:
            raise self.away(exc) from None
        try:
            yield conn
        except (TimeoutError, asyncpg.InterfaceError) as exc:
            # A statement unanswered past its bound (then its transaction's rollback refused: the
            # statement is still in progress for asyncpg): the connection is given up, not
            # handed to the next read, which would wait on it.
            conn.terminate()
            raise self.away(exc) from None
        finally:
            await self.pool.release(conn)

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        """A connection whose statements read one snapshot (a read-only repeatable-read
        transaction): an answer of several reads agrees with itself while a fan-out writes
        (a total and its page, a verdict and its alert_id)."""
        async with self.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            yield conn


async def read_too_long(request: Request, exc: Exception) -> JSONResponse:
    """A statement of a read stopped by the server (API_STATEMENT_TIMEOUT_MS)."""
    reads: Reads = request.app.state.reads
    limit = reads.timeout_ms
    reads.too_long(getattr(request.scope.get("route"), "path_format", None))
    return JSONResponse(
        {
            "detail": f"lecture trop longue : interrompue après {limit} ms (API_STATEMENT_TIMEOUT_MS) ; "
            f"restreindre la demande (filtres, limit) ou réessayer dans {READ_RETRY_SECONDS} s"
        },
        503,
        headers={"Retry-After": str(READ_RETRY_SECONDS)},
    )


async def database_away(request: Request, exc: Exception) -> JSONResponse:
    """PostgreSQL lost during a read (restarting, failing over): a 503 to retry, not a 500."""
    http = request.app.state.reads.away(exc)
    return JSONResponse({"detail": http.detail}, http.status_code, headers=http.headers)


def _pool(request: Request) -> Reads:
    reads = getattr(request.app.state, "reads", None)
    if reads is None:
        raise HTTPException(503, "le service démarre : réessayer dans quelques secondes")
    return reads


def _hub(request: Request) -> AlertHub:
    return request.app.state.hub


def _seuils(request: Request) -> Seuils:
    """This replica's thresholds (RessourcesSettings): what an answer's verdicts are computed
    with when no replica has stored any yet (`Seuils.in_force`)."""
    return request.app.state.seuils


# What the endpoints need, as FastAPI dependencies (the runtime is set on the app by create_api).
Pool = Annotated[Reads, Depends(_pool)]
Hub = Annotated[AlertHub, Depends(_hub)]
Thresholds = Annotated[Seuils, Depends(_seuils)]
STARTING: dict[int | str, dict[str, Any]] = {
    503: {
        "model": Erreur,
        "description": "le service démarre encore, ou la lecture n'a pas eu de connexion ou a duré plus que "
        "API_STATEMENT_TIMEOUT_MS (avec Retry-After)",
    }
}


def built(model: Any, description: str, *others: dict[int | str, dict[str, Any]]) -> dict[str, Any]:
    """A route's answers in the OpenAPI document when it builds its answer as plain data, which
    FastAPI then does not validate again (`response_model=None`): `model` is the schema of its
    200, then `others` (its refusals, STARTING)."""
    responses: dict[int | str, dict[str, Any]] = {200: {"model": model, "description": description}}
    for more in others:
        responses |= more
    return {"response_model": None, "responses": responses}


NOT_IN_CATALOGUE: dict[int | str, dict[str, Any]] = {
    404: {"model": Erreur, "description": "la ressource n'est pas dans le catalogue"}
}


@router.get(
    "/alertes",
    summary="Les alertes, filtrées et par pages (la levée la plus récente d'abord ; les résolues seules : "
    "la résolution la plus récente d'abord)",
    **built(PageAlertes, "une page d'alertes", STARTING),
)
async def alertes(
    pool: Pool,
    code_academie: CodeAcademie = None,
    code_departement: CodeDepartement = None,
    responsable_type: ResponsableTypeFilter = None,
    responsable_code: ResponsableCode = None,
    kind: Kind = None,
    state: Annotated[AlertState | None, Query(description=_one_of(get_args(AlertState)))] = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description=f"{_integer(1, MAX_LIMIT)} (la taille de la page)")
    ] = 50,
    offset: Annotated[
        int, Query(ge=0, le=MAX_OFFSET, description=f"{_integer(0, MAX_OFFSET)} (les alertes sautées)")
    ] = 0,
    apres: Annotated[
        str | None,
        Query(
            max_length=MAX_CURSOR,
            description="le `suivant` de la page précédente : la page qui la suit, sans sauter une alerte "
            "quand celles d'avant changent (au lieu d'`offset`)",
        ),
    ] = None,
) -> dict:
    _responsable(responsable_type, responsable_code)
    f = queries.AlertFilter(code_academie, code_departement, responsable_type, responsable_code, kind, state)
    after = None
    if apres is not None:
        if offset:
            raise _refused_query("apres", "ne va pas avec offset : suivre `suivant`, sans offset")
        after = _cursor_place(apres, f.order())
    async with pool.snapshot() as conn:
        page = await queries.list_alertes(conn, f, limit, offset, after)
    return {
        "total": page.total,
        "limit": limit,
        "offset": offset,
        "items": page.items,
        "suivant": None if page.after_last is None else _cursor(page.after_last, f.order()),
        "last_event_id": page.position,
    }


def _cursor(place: tuple[datetime, str], order: str) -> str:
    """A place in the list's order as an opaque text for a query string, with that order: an
    instant of one order given to a list in the other would be a meaningless place."""
    instant, alert_id = place
    # The raise's order, every list's but the resolved alerts' alone, said by none (as before
    # the resolved alerts had one of their own).
    said = [instant.isoformat(), alert_id] + ([] if order == queries.BY_RAISE else [order])
    return base64.urlsafe_b64encode(json.dumps(said).encode()).decode().rstrip("=")


def _cursor_place(cursor: str, order: str) -> tuple[datetime, str]:
    try:
        instant, alert_id, *its_order = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if its_order not in ([], [queries.BY_RAISE], [queries.BY_RESOLUTION]):
            raise ValueError
        if (its_order or [queries.BY_RAISE])[0] != order:
            raise _refused_query("apres", "curseur d'une autre liste : reprendre le `suivant` d'une page de celle-ci")
        place = datetime.fromisoformat(instant), alert_id
        if place[0].tzinfo is None or not isinstance(alert_id, str):
            raise ValueError
        place[0].astimezone(UTC)  # OverflowError: an instant PostgreSQL cannot hold
        _no_control(alert_id)  # NUL, a lone surrogate: refused by PostgreSQL
    except (ValueError, TypeError, OverflowError):
        raise _refused_query("apres", "curseur illisible : reprendre tel quel le `suivant` d'une page") from None
    return place


class _EventStream(StreamingResponse):
    """An SSE response that gives its client's place back however it ends (finished, client
    gone, cut), even when its body never started."""

    def __init__(self, hub: AlertHub, sub: Subscription, last_event_id: int | None):
        super().__init__(
            hub.events(sub, last_event_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._hub, self._sub = hub, sub

    async def __call__(self, scope, receive, send) -> None:
        try:
            with anyio.move_on_after(self._hub.max_seconds + SSE_HARD_GRACE_SECONDS) as whole:

                async def sent_in_time(message) -> None:
                    # A client that does not read: once the socket's buffers are full, a frame
                    # waits for it. Past SSE_SEND_SECONDS the stream is cut, its place freed.
                    with anyio.move_on_after(SSE_SEND_SECONDS) as sending:
                        await send(message)
                    if sending.cancelled_caught:
                        log.warning("sse.client_cut", reason="not reading", waited_s=SSE_SEND_SECONDS)
                        # Closed, the connection would stay open until its buffered frames were
                        # read, which they never are: reset (what the kernel holds dropped too).
                        if (transport := scope.get(TRANSPORT)) is not None:
                            _reset(transport)
                        whole.cancel()

                await super().__call__(scope, receive, sent_in_time)
        finally:
            self._hub.unsubscribe(self._sub)


@router.get(
    "/alertes/flux",
    summary="Les changements d'alertes en direct (Server-Sent Events), filtrés par académie, département, type",
    description="Chaque `alerte-levee` / `alerte-resolue` dès qu'elle est enregistrée (`event:` son type, `data:` "
    "le CloudEvent, `id:` son numéro dans le journal), et `alerte-deplacee` quand l'établissement d'une alerte "
    "ouverte change d'académie, de département ou de collectivité responsable (l'alerte telle qu'elle est, aux "
    "filtres de l'endroit où elle est et de celui où elle était ; propre à ce flux, absente de Kafka). Avec "
    "`Last-Event-ID`, le journal après lui est rejoué d'abord. Des commentaires gardent ouvert un flux inactif ; "
    "un dernier événement `fin` (son `id:` dit où reprendre) clôt un flux qui a atteint sa durée maximale, "
    "un client trop lent à lire, une reprise trop longue ou l'arrêt du service.",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        503: {
            "model": Erreur,
            "description": "trop de flux ouverts, ou le service s'arrête : `Retry-After` dit quand réessayer. Un "
            "client qui accepte `text/event-stream` (EventSource, qui tiendrait un 503 pour définitif) reçoit à la "
            "place un flux 200 d'un seul `fin` (`raison` `trop-de-flux` ou `arret-du-service`, `retry:` le même "
            "délai, son `id:` le Last-Event-ID reçu, à défaut la position du flux, d'où il reprend)",
        },
    },
)
async def flux(
    request: Request,
    hub: Hub,
    code_academie: CodeAcademie = None,
    code_departement: CodeDepartement = None,
    responsable_type: ResponsableTypeFilter = None,
    responsable_code: ResponsableCode = None,
    kind: Kind = None,
    depuis: Annotated[
        int | None,
        Query(
            **_seq(
                "comme `Last-Event-ID`, pour un client qui ne peut pas l'envoyer : le `last_event_id` de "
                "`/alertes`, ou l'`id:` du dernier événement reçu ; l'en-tête l'emporte quand les deux sont là"
            )
        ),
    ] = None,
    polyfill_id: Annotated[
        int | None,
        Query(
            alias="lastEventId",
            **_seq(
                "ce que des polyfills d'EventSource envoient à la place de l'en-tête `Last-Event-ID` quand ils "
                "se reconnectent ; comme `depuis`"
            ),
        ),
    ] = None,
    last_event_id: LastEventId = None,
) -> Response:
    _responsable(responsable_type, responsable_code)
    f = queries.AlertFilter(code_academie, code_departement, responsable_type, responsable_code, kind)
    resume = next((n for n in (last_event_id, polyfill_id, depuis) if n is not None), None)  # the freshest first
    sub = hub.subscribe(f)
    if sub is None:
        why = "le service s'arrête" if hub.stopping else f"trop de flux ouverts ({hub.max_clients})"
        message, headers = f"{why} : réessayer dans {RETRY_AFTER_SECONDS} s", {"Retry-After": str(RETRY_AFTER_SECONDS)}
        if "text/event-stream" in request.headers.get("accept", ""):
            reason = "arret-du-service" if hub.stopping else "trop-de-flux"
            return Response(
                stream.refusal(reason, message, hub.position if resume is None else resume, RETRY_AFTER_SECONDS * 1000),
                media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache"},
            )
        return JSONResponse({"detail": message}, 503, headers=headers)
    return _EventStream(hub, sub, resume)


@router.get(
    "/etablissements/{uai}",
    summary="Un établissement : son équipement, sa formation, les verdicts de chaque ressource abonnée",
    **built(
        FicheEtablissement,
        "l'établissement, son équipement, sa formation et ses ressources abonnées",
        {404: {"model": Erreur, "description": "l'UAI n'est pas dans le référentiel"}},
        STARTING,
    ),
)
async def etablissement(pool: Pool, seuils: Thresholds, uai: Uai) -> dict:
    async with pool.snapshot() as conn:
        etab = await queries.etablissement(conn, uai)
        if etab is None:
            raise HTTPException(404, f"uai : {uai} n'est pas dans le référentiel")
        stored = RessourcesStore(conn)
        seuils = seuils.in_force(await stored.seuils())  # the alerts', whatever this replica's settings
        profils, couvertures = await stored.load_entrees([uai])
        profil, couverture = profils.get(uai), couvertures.get(uai)
        subs = await queries.abonnements_of(conn, uai)
        open_ids = await queries.open_alert_ids(conn, uai)
        pending = await queries.pending_reevaluations(conn, uai)
    ressources = []
    for sub in subs:
        ressource = stored_ressource(sub["resource_id"], sub["ressource"]) if sub["publiee"] else None
        evaluated = is_evaluated(sub["end"], etab["ouvert"], ressource is not None)
        entry = {
            "resource_id": sub["resource_id"],
            # One a stricter rule refuses since: its title as stored, not evaluated (stored_ressource).
            "title": ressource.title if ressource else _title(sub["ressource"]) if sub["publiee"] else None,
            "abonnement": {"start": sub["start"].isoformat(), "end": sub["end"].isoformat() if sub["end"] else None},
            "publiee": bool(sub["publiee"]),
            "au_catalogue": sub["publiee"] is not None,  # else subscribed to before its publication
            "evaluee": evaluated,
            "verdicts": None,
            "reevaluation_en_attente": bool(pending & {sub["resource_id"], EVERY_RESOURCE}),
        }
        if evaluated and ressource is not None:
            # The loop's other work between two (audit s67 read-API F1): at the contract's bounds
            # (2,000 lots of distinct configurations, 32 groups of 32 entries) one takes tens of
            # milliseconds, and a fiche of hundreds held the consumer, the streams and /livez
            # for seconds; several fiches at once, for as many times longer.
            await asyncio.sleep(0)
            ev = evaluate(ressource, profil, couverture, seuils)
            entry.update(compatible=ev.compatible, devices=ev.devices, coverage=ev.coverage)
            entry["verdicts"] = {
                kind: {
                    "alerte": kind in ev.alerts,
                    "reasons": [r.model_dump() for r in ev.alerts.get(kind, [])],
                    "alert_id": open_ids.get((sub["resource_id"], kind)),
                }
                for kind in ALERT_KINDS
            }
        ressources.append(entry)
    return {
        "etablissement": {k: etab[k] for k in Etablissement.model_fields},
        "equipement": json.loads(profil.model_dump_json()) if profil else None,
        "formation": formation_shown(couverture),
        "ressources": ressources,
    }


def _title(stored: str) -> str | None:
    title = json.loads(stored).get("title")
    return title if isinstance(title, str) else None


def formation_shown(couverture: CouvertureFormation | None) -> dict | None:
    """An établissement's training coverage as `/etablissements/{uai}` gives it: whole from
    MIN_TEACHERS_DETAILED counted teachers, else the count with `detail_masque`."""
    if couverture is None:
        return None
    if couverture.enseignants < MIN_TEACHERS_DETAILED:
        return {"uai": couverture.uai, "enseignants": couverture.enseignants, "detail_masque": True}
    return json.loads(couverture.model_dump_json()) | {"detail_masque": False}


@router.get(
    "/ressources/{resource_id:path}",
    summary="Une ressource : les établissements abonnés par verdict, en tout et par académie",
    **built(SyntheseRessource, "les comptes de la ressource, en tout et par académie", NOT_IN_CATALOGUE, STARTING),
)
async def ressource(pool: Pool, resource_id: ResourceId) -> dict:
    async with pool.snapshot() as conn:
        row = await queries.ressource(conn, resource_id)
        if row is None:
            raise HTTPException(404, f"resource_id : {resource_id} n'est pas dans le catalogue")
        par_academie = await queries.synthese(conn, resource_id)
        pending = await queries.reevaluation_pending(conn, [resource_id, EVERY_RESOURCE])
    total = {
        k: sum(a[k] for a in par_academie.values())
        for k in ("evalues", "compatibles", "partiels", "incompatibles", "sous_formes")
    }
    title = _title(row["ressource"]) if row["ressource"] else None
    return {
        "resource_id": resource_id,
        "title": title,
        "publiee": row["publiee"],
        "total": total,
        "par_academie": par_academie,
        "reevaluation_en_attente": pending,
    }


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _reset(transport: asyncio.Transport) -> None:
    """The connection ended at once, its unsent bytes dropped (an RST, not a FIN after them)."""
    if transport.is_closing():  # gone meanwhile: its socket closed already
        return
    try:
        if (sock := transport.get_extra_info("socket")) is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:  # closed under it: abort all the same
        pass
    transport.abort()


def _with_transport(api: FastAPI) -> None:
    """Each HTTP request's scope holds its connection's transport under TRANSPORT: what uvicorn's
    `send` is bound to (its request cycle's), seen before any middleware wraps it. None under
    another server."""
    build = api.build_middleware_stack

    def build_with_transport() -> Any:
        stack = build()

        async def app(scope, receive, send) -> None:
            if scope["type"] == "http":
                scope[TRANSPORT] = getattr(getattr(send, "__self__", None), "transport", None)
            await stack(scope, receive, send)

        return app

    api.build_middleware_stack = build_with_transport  # type: ignore[method-assign]


def create_api(stream_app: ServiceApp, settings: ServiceSettings) -> FastAPI:
    """The ASGI app ressources serves: this API, `/health`, and the Kafka consumer's lifespan."""
    settings = RessourcesSettings.of(settings)

    @asynccontextmanager
    async def lifespan(api: FastAPI):
        from services.ressources.api_simulations import start_workers, stop_workers

        # What is started is stopped in the reverse order, also when a later start fails.
        async with AsyncExitStack() as started:
            started.push_async_callback(asyncio.to_thread, stop_workers)
            await stream_app.start()
            started.push_async_callback(stream_app.stop)
            pipeline = stream_app.pipeline
            schema = settings.db_schema or pipeline.service
            reads = await Reads.open(settings, schema)
            started.push_async_callback(reads.pool.close)
            hub = AlertHub(
                settings.database_url,
                schema,
                reads.pool,
                max_clients=settings.sse_max_clients,
                queue_size=settings.sse_queue_size,
                keepalive_seconds=settings.sse_keepalive_seconds,
                max_seconds=settings.sse_max_seconds,
                replay_max=settings.sse_replay_max,
                replay_timeout_ms=settings.api_statement_timeout_ms,
            )
            started.push_async_callback(hub.stop)  # also after a start that failed midway
            await hub.start()
            api.state.hub, api.state.reads = hub, reads
            # The hub's streams end (fin, arret-du-service) before uvicorn waits for them.
            api.state.before_shutdown = [hub.stop]
            if settings.simulation_workers:
                start_workers(settings.simulation_workers)
            purge = asyncio.create_task(
                stream.purge_periodically(pipeline.pool, settings.sse_journal_retention_hours), name="sse-journal-purge"
            )
            started.push_async_callback(_cancel, purge)
            if settings.alerts_resolved_retention_days:
                forget = asyncio.create_task(
                    stream.purge_resolved_periodically(pipeline.pool, settings.alerts_resolved_retention_days),
                    name="alerts-resolved-purge",
                )
                started.push_async_callback(_cancel, forget)
            yield

    api = FastAPIOffline(  # FastAPI serving the assets of /docs and /redoc itself (no CDN)
        title="former-équiper-outiller — API de lecture des alertes",
        version="1",
        description="Les alertes, établissements et ressources tels que le service ressources les voit ; "
        "un flux des changements d'alertes (SSE) pour les tableaux de bord qui ne lisent pas Kafka. "
        "Une erreur répond en français et nomme le paramètre refusé.",
        lifespan=lifespan,
        telemetry=HTTP_TELEMETRY,
        # No redirect from `/x/` to `/x` (a 404 names the paths): behind a proxy ending TLS, its
        # Location said http://, and a client following a 307 sent the body again in clear.
        redirect_slashes=False,
        exception_handlers={
            **HANDLERS,
            asyncpg.QueryCanceledError: read_too_long,
            **dict.fromkeys(stream.STOPPING, database_away),  # during a read, too
        },
    )
    api.add_middleware(AllowedHosts, names=settings.allowed_hosts)
    api.add_middleware(AnswerHeaders)  # outside: on the refusals of AllowedHosts too
    metrics = stream_app.pipeline.metrics
    api.add_middleware(HttpMetrics, metrics=metrics)  # every answer, AllowedHosts' refusals too
    prometheus.Gauge(
        "feo_sse_clients",
        "open streams of /alertes/flux on this replica (SSE_MAX_CLIENTS: beyond, 503)",
        ["service"],
        registry=metrics.registry,
    ).labels(metrics.service).set_function(lambda: hub.clients if (hub := getattr(api.state, "hub", None)) else 0)
    _with_transport(api)
    api.state.pipeline = stream_app.pipeline
    api.state.seuils = settings.seuils
    api.state.simulation_workers = settings.simulation_workers
    api.include_router(api_home.router)
    api.include_router(router)
    from services.ressources import api_tableau  # imported here: it builds on this module's types

    api.include_router(api_tableau.router)
    from services.ressources import api_simulations  # imported here: it builds on this module's types

    api.include_router(api_simulations.router)

    stream_app.serve_probes(api)

    return api
