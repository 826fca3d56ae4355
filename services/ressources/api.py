"""The dashboards' read API, served over HTTP by ressources beside its Kafka consumer.

FastAPI gives the OpenAPI document (`/openapi.json`, `/docs`) and turns bad parameters into a
422 naming the parameter. Every parameter is bounded here, before it reaches PostgreSQL: a value
the database cannot take (a NUL, an integer beyond int64) must be a 4xx, never a 500. Everything
here reads; nothing writes.
"""

import asyncio
import json
import unicodedata
from contextlib import asynccontextmanager
from typing import Annotated, Literal

import anyio
import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import AfterValidator

from contracts import ALERT_KINDS, AlertKind, RessourcePubliee, is_valid_uai, uai_check_letter
from services.common.runtime.app import ServiceApp
from services.common.runtime.health import health_report
from services.common.runtime.settings import ServiceSettings
from services.ressources import queries, stream
from services.ressources.rules import Seuils, evaluate, is_evaluated
from services.ressources.settings import RessourcesSettings
from services.ressources.store import RessourcesStore
from services.ressources.stream import AlertHub, Subscription

router = APIRouter()

MAX_OFFSET = 1_000_000  # deeper than any dashboard pages; filters narrow a search instead
MAX_RESOURCE_ID = 256  # CONTRACTS.md, Limits
RETRY_AFTER_SECONDS = 10  # what a refused SSE client is told to wait
# A stream whose client stops reading never reaches its final event: past its lifetime and
# this grace, the response is cut, so a stuck client cannot hold a connection forever.
SSE_HARD_GRACE_SECONDS = 30


def _no_control(value: str) -> str:
    """PostgreSQL refuses NUL in text, and no identifier of the platform holds a control
    character: refused here, with the parameter's name, rather than by the database with a 500."""
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        raise ValueError("caractère de contrôle interdit (NUL, retour à la ligne…)")
    return value


CodeAcademie = Annotated[str, Query(pattern=r"^[0-9]{2}$", description="code académie, e.g. 14")]
CodeDepartement = Annotated[str, Query(pattern=r"^([0-9]{3}|02[AB])$", description="code département, e.g. 035")]


def _uai(value: str) -> str:
    _no_control(value)
    if not is_valid_uai(value):
        digits = value[:7]
        known = len(value) == 8 and digits.isascii() and digits.isdigit()
        hint = f" (lettre attendue {uai_check_letter(digits)})" if known else ""
        raise ValueError(f"{value!r} n'est pas un UAI valide{hint}")
    return value


Uai = Annotated[str, Path(description="UAI of the établissement, e.g. 0350042F"), AfterValidator(_uai)]
ResourceId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=MAX_RESOURCE_ID,
        description="resource_id, e.g. ark:/67375/xyz (at most 256 characters)",
    ),
    AfterValidator(_no_control),
]
LastEventId = Annotated[
    int | None,
    Header(
        alias="Last-Event-ID",
        ge=0,
        le=2**63 - 1,
        description="the `id:` of the last event received: the stream first replays the journal after it",
    ),
]


def _pool(request: Request) -> asyncpg.Pool:
    pipeline = request.app.state.pipeline
    if not pipeline.started:
        raise HTTPException(503, "service en cours de démarrage")
    return pipeline.pool


def _hub(request: Request) -> AlertHub:
    return request.app.state.hub


def _seuils(request: Request) -> Seuils:
    return request.app.state.seuils


# What the endpoints need, as FastAPI dependencies (the runtime is set on the app by create_api).
Pool = Annotated[asyncpg.Pool, Depends(_pool)]
Hub = Annotated[AlertHub, Depends(_hub)]
Thresholds = Annotated[Seuils, Depends(_seuils)]


@router.get("/alertes", summary="Alerts, filtered and paginated (newest raise first)")
async def alertes(
    pool: Pool,
    code_academie: CodeAcademie | None = None,
    code_departement: CodeDepartement | None = None,
    responsable_type: Literal["commune", "departement", "region"] | None = None,
    responsable_code: Annotated[str | None, Query(min_length=1, max_length=5), AfterValidator(_no_control)] = None,
    kind: AlertKind | None = None,
    state: Literal["open", "resolved"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500, description="page size, 1 … 500")] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description=f"items skipped, 0 … {MAX_OFFSET:,}")] = 0,
) -> dict:
    f = queries.AlertFilter(code_academie, code_departement, responsable_type, responsable_code, kind, state)
    async with pool.acquire() as conn:
        total, items = await queries.list_alertes(conn, f, limit, offset)
    return {"total": total, "limit": limit, "offset": offset, "items": items}


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
            with anyio.move_on_after(self._hub.max_seconds + SSE_HARD_GRACE_SECONDS):
                await super().__call__(scope, receive, send)
        finally:
            self._hub.unsubscribe(self._sub)


@router.get(
    "/alertes/flux",
    summary="Live alert changes (Server-Sent Events), filtered by académie, département, kind",
    description="Each `alerte-levee` / `alerte-resolue` as it is committed (`event:` the type, `data:` the "
    "CloudEvent, `id:` its journal number). With `Last-Event-ID`, the journal after it is replayed first. "
    "Comments keep an idle stream open; a final `fin` event (its `id:` is where to resume) ends a stream "
    "that reached its lifetime, a client too slow to read, a replay too long, or a stopping service.",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        503: {"description": "too many open streams; `Retry-After` says when to try again"},
    },
)
async def flux(
    hub: Hub,
    code_academie: CodeAcademie | None = None,
    code_departement: CodeDepartement | None = None,
    kind: AlertKind | None = None,
    last_event_id: LastEventId = None,
) -> Response:
    sub = hub.subscribe(queries.AlertFilter(code_academie, code_departement, kind=kind))
    if sub is None:
        return JSONResponse(
            {"detail": f"trop de flux ouverts ({hub.max_clients}) : réessayer dans {RETRY_AFTER_SECONDS} s"},
            503,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    return _EventStream(hub, sub, last_event_id)


@router.get(
    "/etablissements/{uai}", summary="One établissement: equipment, training, each subscribed resource's verdicts"
)
async def etablissement(pool: Pool, seuils: Thresholds, uai: Uai) -> dict:
    async with pool.acquire() as conn:
        etab = await queries.etablissement(conn, uai)
        if etab is None:
            raise HTTPException(404, f"l'UAI {uai} n'est pas dans le référentiel")
        stored = RessourcesStore(conn)
        profil = (await stored.load_profils([uai])).get(uai)
        couverture = (await stored.load_couvertures([uai])).get(uai)
        subs = await queries.abonnements_of(conn, uai)
        open_ids = await queries.open_alert_ids(conn, uai)
    ressources = []
    for sub in subs:
        ressource = RessourcePubliee.model_validate_json(sub["ressource"]) if sub["publiee"] else None
        evaluated = is_evaluated(sub["end"], etab["ouvert"], ressource is not None)
        entry = {
            "resource_id": sub["resource_id"],
            "title": ressource.title if ressource else None,
            "abonnement": {"start": sub["start"].isoformat(), "end": sub["end"].isoformat() if sub["end"] else None},
            "publiee": bool(sub["publiee"]),
            "evaluee": evaluated,
            "verdicts": None,
        }
        if evaluated and ressource is not None:
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
        "etablissement": {
            k: etab[k]
            for k in (
                "uai",
                "nom",
                "type",
                "statut",
                "code_commune",
                "code_departement",
                "code_academie",
                "code_region",
                "ouvert",
            )
        },
        "equipement": json.loads(profil.model_dump_json()) if profil else None,
        "formation": json.loads(couverture.model_dump_json()) if couverture else None,
        "ressources": ressources,
    }


@router.get(
    "/ressources/{resource_id:path}", summary="One resource: subscribed établissements by verdict, per académie"
)
async def ressource(pool: Pool, resource_id: ResourceId) -> dict:
    async with pool.acquire() as conn:
        row = await queries.ressource(conn, resource_id)
        if row is None:
            raise HTTPException(404, f"ressource inconnue: {resource_id}")
        par_academie = await queries.synthese(conn, resource_id)
    total = {
        k: sum(a[k] for a in par_academie.values())
        for k in ("evalues", "compatibles", "partiels", "incompatibles", "sous_formes")
    }
    title = json.loads(row["ressource"])["title"] if row["ressource"] else None
    return {
        "resource_id": resource_id,
        "title": title,
        "publiee": row["publiee"],
        "total": total,
        "par_academie": par_academie,
    }


def create_api(stream_app: ServiceApp, settings: ServiceSettings) -> FastAPI:
    """The ASGI app ressources serves: this API, `/health`, and the Kafka consumer's lifespan."""
    settings = RessourcesSettings.of(settings)

    @asynccontextmanager
    async def lifespan(api: FastAPI):
        await stream_app.start()
        pipeline = stream_app.pipeline
        hub = AlertHub(
            settings.database_url,
            settings.db_schema or pipeline.service,
            pipeline.pool,
            max_clients=settings.sse_max_clients,
            queue_size=settings.sse_queue_size,
            keepalive_seconds=settings.sse_keepalive_seconds,
            max_seconds=settings.sse_max_seconds,
            replay_max=settings.sse_replay_max,
        )
        await hub.start()
        api.state.hub = hub
        purge = asyncio.create_task(
            stream.purge_periodically(pipeline.pool, settings.sse_journal_retention_hours), name="sse-journal-purge"
        )
        try:
            yield
        finally:
            purge.cancel()
            await asyncio.gather(purge, return_exceptions=True)
            await hub.stop()
            await stream_app.stop()

    api = FastAPI(
        title="former-équiper-outiller — API de lecture des alertes",
        version="1",
        description="Alerts, établissements and resources as the ressources service sees them; "
        "a live stream of alert changes (SSE) for dashboards that cannot read Kafka.",
        lifespan=lifespan,
    )
    api.state.pipeline = stream_app.pipeline
    api.state.seuils = settings.seuils
    api.include_router(router)

    @api.get("/health", summary="200 when Kafka and PostgreSQL answer, 503 otherwise")
    async def health() -> JSONResponse:
        status, body = await health_report(stream_app.pipeline, stream_app.kafka)
        return JSONResponse(body, status)

    return api
