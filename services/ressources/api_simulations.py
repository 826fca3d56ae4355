"""`POST /simulations/…`: "what if" before publishing a resource or buying equipment, JSON in
and out (simulations.py). Validated by the contract's own models; nothing written, nothing
published. Unauthenticated like the rest of the read API: whoever posts lots is not checked to
be the collectivité that equips their établissements."""

import asyncio
import json
import multiprocessing
from collections.abc import Callable, Coroutine
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from contracts import Lot, RessourcePubliee
from contracts.parsing import MAX_RECORD_BYTES, ContractError, check_document
from services.common.runtime.body import BodyTooLarge, read_capped
from services.ressources import simulations
from services.ressources.api import Pool, Thresholds, known_parameters
from services.ressources.api_errors import REFUSED, Erreur
from services.ressources.rules import MIN_TEACHERS_DETAILED, Seuils

MAX_LOTS = 10_000  # a région's lycées, several lots each
MAX_BODY_BYTES = 8 * 1024 * 1024
"""An equipment simulation's body: 10,000 lots of tablets with a few browsers each are about
3 MB. A resource simulation's is one `ressource-publiee` payload: a record's (MAX_RECORD_BYTES).
The body is held, then decoded twice (the contract's check, then FastAPI's): a 16 MiB body of
empty objects took the process from 89 to 507 MB (a security review), hence 8 MiB, and one
simulation at a time from its first byte on."""
READ_SECONDS = 10
"""How long a body may take to come: the simulation's turn is held while it does."""
RETRY_AFTER_SECONDS = 2
_BEYOND_ANY_BOUND = 10**4300


def _integer(text: str) -> int:
    """A JSON integer, however many digits: int() refuses more than 4,300 (and FastAPI's own
    reading then answered 400, "not JSON", naming no field); one that long is read as a number
    as large, which the field's bound then refuses by name, as any number beyond it."""
    try:
        return int(text)
    except ValueError:
        return -_BEYOND_ANY_BOUND if text.startswith("-") else _BEYOND_ANY_BOUND


UNKNOWN = "n'est pas dans le référentiel"
log = structlog.get_logger()


class _CheckedBody(APIRoute):
    """One simulation at a time, from its first byte on: another meanwhile gets 503 before its
    body is read (bodies read at once would each hold their memory). Its body is read within its
    limit (413 beyond, before it is all held; 408 past READ_SECONDS), then judged as the contract
    judges any document (contracts.parsing.check_document: JSON without NaN or a repeated key,
    no NUL in a text, which PostgreSQL could not compare), then decoded (integers of any length:
    `_integer`) and handed to FastAPI: a body the service would refuse on Kafka is not simulated."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        cap = MAX_RECORD_BYTES if self.path.endswith("/ressource") else None

        async def checked(request: Request) -> Response:
            if _running.locked():
                return JSONResponse(
                    {"detail": f"une simulation est déjà en cours : réessayer dans {RETRY_AFTER_SECONDS} s"},
                    503,
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                )
            async with _running:
                try:
                    async with asyncio.timeout(READ_SECONDS):
                        length = request.headers.get("content-length")
                        body = await read_capped(request.stream(), length, cap or MAX_BODY_BYTES)
                    check_document(body)
                except BodyTooLarge as e:
                    return JSONResponse({"detail": e.message}, 413)
                except TimeoutError:
                    return JSONResponse({"detail": f"corps pas reçu en entier en {READ_SECONDS} s"}, 408)
                except ClientDisconnect:  # gone before its whole body came: nobody to answer, nothing went wrong
                    log.info("simulation.abandonnee", route=request.url.path)
                    return JSONResponse({"detail": "le client a fermé la connexion avant la fin du corps"}, 400)
                except ContractError as e:
                    detail = [{"loc": ["body"], "msg": f"corps : {e.message}", "type": e.code}]
                    return JSONResponse({"detail": detail}, 422)
                request._body = body  # what FastAPI then reads (Starlette's caches of the body
                request._json = json.loads(body, parse_int=_integer)  # and of its JSON)
                return await handler(request)

        return checked


router = APIRouter(
    prefix="/simulations",
    tags=["simulations"],
    responses=REFUSED,
    route_class=_CheckedBody,
    dependencies=[Depends(known_parameters)],  # a misspelt `population` would simulate the default one
)
_running = asyncio.Lock()  # one at a time (_CheckedBody): a national one is a second of this process's CPU
BUSY: dict[int | str, dict] = {
    503: {
        "model": Erreur,
        "description": "le service démarre, une simulation est déjà en cours, ou la lecture n'a pas eu de "
        "connexion ou a duré plus que API_STATEMENT_TIMEOUT_MS (avec Retry-After)",
    },
    413: {
        "model": Erreur,
        "description": "corps trop gros : une ressource au-delà de 256 Kio (le contrat), des lots au-delà de 8 Mio",
    },
    408: {"model": Erreur, "description": "corps pas reçu en entier à temps"},
}


_pools: dict[int, ProcessPoolExecutor] = {}


def _processes(n: int) -> ProcessPoolExecutor:
    """The worker processes judging resource simulations: one pool per service process, started
    with the service (`start_workers`), or at its first simulation after a broken pool was
    stopped (spawned: a fork would copy the running event loop and connections)."""
    if n not in _pools:
        _pools[n] = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"))
    return _pools[n]


def start_workers(n: int) -> None:
    """Start the `n` worker processes now, in the background (one warm-up task each): the first
    simulation does not wait for their start and imports (about a second on two cores)."""
    pool = _processes(n)
    for _ in range(n):
        pool.submit(simulations.judge, "", Seuils(), [])


async def _renewed(broken: ProcessPoolExecutor) -> ProcessPoolExecutor | None:
    """New worker processes in place of `broken`, a pool one of whose processes died (killed, out
    of memory: the pool refuses any work since), which is stopped off the event loop; None when
    the service stopped it meanwhile (stop_workers: no new ones then)."""
    n = next((n for n, pool in _pools.items() if pool is broken), None)
    if n is None:
        return None
    del _pools[n]
    log.warning("simulation.processus_remplaces", processus=n)
    await asyncio.to_thread(broken.shutdown, wait=True, cancel_futures=True)
    return _processes(n)


def stop_workers() -> None:
    """Stop the worker processes, if any started (the service stops: none is left behind)."""
    while _pools:
        _pools.popitem()[1].shutdown(wait=True, cancel_futures=True)


def _workers(request: Request) -> ProcessPoolExecutor | None:
    """SIMULATION_WORKERS processes, or None (0): judged in this process, on its event loop."""
    n: int = request.app.state.simulation_workers
    return _processes(n) if n else None


Workers = Annotated[ProcessPoolExecutor | None, Depends(_workers)]


class Comptes(BaseModel):
    evalues: int
    compatibles: int
    partiels: int
    incompatibles: int
    sous_formes: int = Field(
        description="sous-formés : l'alerte formation-insuffisante serait levée (parmi ceux dont la formation "
        "est comptée)"
    )
    formation_non_comptee: int = Field(
        description=f"établissements de moins de {MIN_TEACHERS_DETAILED} enseignants comptés dont la formation, "
        "jugée, n'est pas comptée (ni ses motifs) : l'API n'est pas authentifiée, et les niveaux de si peu "
        "d'enseignants seraient ceux de personnes que l'on peut nommer"
    )


class Motif(BaseModel):
    code: str
    detail: str = Field(description="le détail, sans ce qui est propre à un établissement (lot, effectifs) : …")
    etablissements: int = Field(description="combien d'établissements auraient ce motif")


class SimulationRessource(BaseModel):
    resource_id: str
    population: Literal["abonnes", "ouverts"]
    total: Comptes
    par_academie: dict[str, Comptes]
    par_departement: dict[str, Comptes]
    motifs: list[Motif] = Field(description=f"les {simulations.MAX_MOTIFS} motifs les plus fréquents")


class LotsSimules(BaseModel):
    lots: list[Lot] = Field(
        max_length=MAX_LOTS,
        description="des charges utiles `lot` (CONTRACTS.md) : chacune remplace le lot de même `lot_id` "
        "de son établissement ou s'y ajoute ; `quantity` 0 le retire",
    )


@router.post(
    "/ressource",
    summary="Et si cette ressource était publiée ? Les verdicts par académie et département, sans rien publier",
    description="Le corps est la charge utile `ressource-publiee` (CONTRACTS.md). Chaque établissement est jugé "
    "par les règles de l'évaluation en service sur son équipement et sa formation tels qu'enregistrés.",
    responses=BUSY,
)
async def simuler_ressource(
    pool: Pool,
    seuils: Thresholds,
    workers: Workers,
    ressource: Annotated[RessourcePubliee, Body()],
    population: Annotated[
        Literal["abonnes", "ouverts"],
        Query(
            description="abonnes ou ouverts (les établissements ouverts abonnés à ce resource_id, ou tous les "
            "établissements ouverts)"
        ),
    ] = "abonnes",
) -> SimulationRessource:
    async with pool.acquire() as conn:
        try:
            bilan = await simulations.simulate_ressource(conn, ressource, population == "abonnes", seuils, workers)
        except BrokenProcessPool:
            # A worker died (killed, out of memory) since the last simulation or during this one: judged
            # again, once, by new processes. Dying again is a fault (500), the next simulation on new ones.
            assert workers is not None
            if (workers := await _renewed(workers)) is None:
                raise
            try:
                bilan = await simulations.simulate_ressource(conn, ressource, population == "abonnes", seuils, workers)
            except BrokenProcessPool:
                await _renewed(workers)
                raise
    return SimulationRessource.model_validate(
        {"resource_id": ressource.resource_id, "population": population, **bilan.as_json()}
    )


@router.post(
    "/equipement",
    summary="Et si ces lots étaient déclarés ? Les alertes ouvertes résolues et celles levées, sans rien changer",
    description="Pour chaque ressource abonnée évaluée des établissements des lots : ce que l'évaluation en "
    "service ferait, à partir des alertes qu'elle tient. Les droits du déclarant ne sont pas vérifiés (l'API "
    "n'authentifie pas) : la passerelle les vérifiera à la déclaration.",
    response_model=simulations.Consequences,
    responses=BUSY,
)
async def simuler_equipement(pool: Pool, seuils: Thresholds, body: LotsSimules) -> Any:
    async with pool.acquire() as conn:
        try:
            return await simulations.simulate_equipement(conn, body.lots, seuils)
        except simulations.UaiInconnus as e:
            detail = [
                {"loc": ["body", "lots", i, "uai"], "msg": f"lots[{i}].uai : {uai} {UNKNOWN}", "type": "uai-inconnu"}
                for i, uai in e.lots.items()
            ]
            return JSONResponse({"detail": detail}, 422)
        except simulations.TropDePaires as e:
            why = (
                f"lots : leurs établissements ont {e.pairs} abonnements, au plus {simulations.MAX_PAIRS} "
                "par simulation : simuler moins d'établissements à la fois"
            )
            return JSONResponse({"detail": [{"loc": ["body", "lots"], "msg": why, "type": "trop-de-paires"}]}, 422)
