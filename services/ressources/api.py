"""The dashboards' read API, served over HTTP by ressources beside its Kafka consumer.

FastAPI gives the OpenAPI document (`/openapi.json`, `/docs`) and turns bad parameters into a
422 naming the parameter. Every parameter is bounded here, before it reaches PostgreSQL: a value
the database cannot take (a NUL, an integer beyond int64) must be a 4xx, never a 500. Everything
here reads; nothing writes.
"""

import json
import unicodedata
from contextlib import asynccontextmanager
from typing import Annotated, Literal

import asyncpg
from fastapi import APIRouter, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from faststream.asgi import AsgiFastStream
from pydantic import AfterValidator

from contracts import ALERT_KINDS, AlertKind, RessourcePubliee, is_valid_uai, uai_check_letter
from services.common.app import health_report
from services.common.settings import ServiceSettings
from services.ressources import queries, store
from services.ressources.rules import Seuils, evaluate
from services.ressources.stream import AlertHub

router = APIRouter()

MAX_OFFSET = 1_000_000  # deeper than any dashboard pages; filters narrow a search instead
MAX_RESOURCE_ID = 256  # CONTRACTS.md, Limits


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
ResourceId = Annotated[str, Path(min_length=1, max_length=MAX_RESOURCE_ID,
                                 description="resource_id, e.g. ark:/67375/xyz (at most 256 characters)"),
                       AfterValidator(_no_control)]


def _pool(request: Request) -> asyncpg.Pool:
    pool = request.app.state.pipeline.pool
    if pool is None:
        raise HTTPException(503, "service en cours de démarrage")
    return pool


@router.get("/alertes", summary="Alerts, filtered and paginated (newest raise first)")
async def alertes(
    request: Request,
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
    async with _pool(request).acquire() as conn:
        total, items = await queries.list_alertes(conn, f, limit, offset)
    return {"total": total, "limit": limit, "offset": offset, "items": items}


@router.get("/alertes/flux", summary="Live alert changes (Server-Sent Events), same filters as /alertes")
async def flux(
    request: Request,
    code_academie: CodeAcademie | None = None,
    code_departement: CodeDepartement | None = None,
    kind: AlertKind | None = None,
) -> StreamingResponse:
    def keep(event: dict) -> bool:
        d = event["data"]
        return ((code_academie is None or d["code_academie"] == code_academie)
                and (code_departement is None or d["code_departement"] == code_departement)
                and (kind is None or d["kind"] == kind))

    hub: AlertHub = request.app.state.hub
    return StreamingResponse(hub.events(keep), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/etablissements/{uai}", summary="One établissement: equipment, training, each subscribed resource's verdicts")
async def etablissement(request: Request, uai: Uai) -> dict:
    seuils: Seuils = request.app.state.seuils
    async with _pool(request).acquire() as conn:
        etab = await queries.etablissement(conn, uai)
        if etab is None:
            raise HTTPException(404, f"l'UAI {uai} n'est pas dans le référentiel")
        profil = (await store.load_profils(conn, [uai])).get(uai)
        couverture = (await store.load_couvertures(conn, [uai])).get(uai)
        subs = await queries.abonnements_of(conn, uai)
        open_ids = await queries.open_alert_ids(conn, uai)
    ressources = []
    for sub in subs:
        ressource = RessourcePubliee.model_validate_json(sub["ressource"]) if sub["publiee"] else None
        evaluated = sub["end"] is None and etab["ouvert"] and ressource is not None
        entry = {"resource_id": sub["resource_id"], "title": ressource.title if ressource else None,
                 "abonnement": {"start": sub["start"].isoformat(), "end": sub["end"].isoformat() if sub["end"] else None},
                 "publiee": bool(sub["publiee"]), "evaluee": evaluated, "verdicts": None}
        if evaluated:
            ev = evaluate(ressource, profil, couverture, seuils)
            entry.update(compatible=ev.compatible, devices=ev.devices, coverage=ev.coverage)
            entry["verdicts"] = {
                kind: {"alerte": kind in ev.alerts, "reasons": [r.model_dump() for r in ev.alerts.get(kind, [])],
                       "alert_id": open_ids.get((sub["resource_id"], kind))}
                for kind in ALERT_KINDS
            }
        ressources.append(entry)
    return {
        "etablissement": {k: etab[k] for k in ("uai", "nom", "type", "statut", "code_commune", "code_departement",
                                              "code_academie", "code_region", "ouvert")},
        "equipement": json.loads(profil.model_dump_json()) if profil else None,
        "formation": json.loads(couverture.model_dump_json()) if couverture else None,
        "ressources": ressources,
    }


@router.get("/ressources/{resource_id:path}", summary="One resource: subscribed établissements by verdict, per académie")
async def ressource(request: Request, resource_id: ResourceId) -> dict:
    async with _pool(request).acquire() as conn:
        row = await queries.ressource(conn, resource_id)
        if row is None:
            raise HTTPException(404, f"ressource inconnue: {resource_id}")
        par_academie = await queries.synthese(conn, resource_id)
    total = {k: sum(a[k] for a in par_academie.values())
             for k in ("evalues", "compatibles", "partiels", "incompatibles", "sous_formes")}
    if not row["publiee"]:  # withdrawn: no pair is evaluated
        par_academie = {}
    title = json.loads(row["ressource"])["title"] if row["ressource"] else None
    return {"resource_id": resource_id, "title": title, "publiee": row["publiee"], "total": total,
            "par_academie": par_academie}


def create_api(stream_app: AsgiFastStream, settings: ServiceSettings) -> FastAPI:
    """The ASGI app ressources serves: this API, `/health`, and the Kafka consumer's lifespan."""
    @asynccontextmanager
    async def lifespan(api: FastAPI):
        hub = AlertHub(settings.database_url)
        await stream_app.start()
        await hub.start()
        api.state.hub = hub
        try:
            yield
        finally:
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
    api.state.seuils = Seuils(settings.min_compatible_share, settings.min_training_coverage)
    api.include_router(router)

    @api.get("/health", summary="200 when Kafka and PostgreSQL answer, 503 otherwise")
    async def health() -> JSONResponse:
        status, body = await health_report(stream_app.pipeline, stream_app.broker)
        return JSONResponse(body, status)

    return api
