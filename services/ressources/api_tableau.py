"""The dashboard page, `GET /tableau`, and the two reads it needs that the rest of the API lacked.

The page is plain HTML, CSS and JavaScript (tableau/): no build step, no CDN, nothing fetched
from elsewhere (its Content-Security-Policy says so). It reads this API as any dashboard would:
`/alertes` for the list, `/alertes/flux` for the changes, `/etablissements/{uai}`, and
`/ressources/{resource_id}` with `/repartition/{resource_id}` for a resource's chart.
"""

import hashlib
import os
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, Response

from services.ressources import queries
from services.ressources.api import NOT_IN_CATALOGUE, STARTING, Pool, ResourceId, built, known_parameters
from services.ressources.api_errors import REFUSED
from services.ressources.api_reponses import Repartition, Territoires
from services.ressources.store import EVERY_RESOURCE

router = APIRouter(responses=REFUSED)
KNOWN_PARAMETERS_ONLY = [Depends(known_parameters)]
"""The reads refuse a parameter they do not read, as the rest of the API; the page and its files
do not (a link may carry one)."""

NOMS_ACADEMIES = {
    "01": "Paris", "02": "Aix-Marseille", "03": "Besançon", "04": "Bordeaux", "06": "Clermont-Ferrand",
    "07": "Dijon", "08": "Grenoble", "09": "Lille", "10": "Lyon", "11": "Montpellier", "12": "Nancy-Metz",
    "13": "Poitiers", "14": "Rennes", "15": "Strasbourg", "16": "Toulouse", "17": "Nantes", "18": "Orléans-Tours",
    "19": "Reims", "20": "Amiens", "22": "Limoges", "23": "Nice", "24": "Créteil", "25": "Versailles", "27": "Corse",
    "28": "La Réunion", "31": "Martinique", "32": "Guadeloupe", "33": "Guyane", "40": "Nouvelle-Calédonie",
    "41": "Polynésie française", "42": "Wallis-et-Futuna", "43": "Mayotte", "44": "Saint-Pierre-et-Miquelon",
    "70": "Normandie",
}  # fmt: skip
"""Each académie's name by its code in the annuaire (DOMAIN.md: Caen 05 and Rouen 21 are Normandie's
70 since 2020): the référentiel carries codes only, and a reader of the dashboard reads names."""
PAGE = Path(__file__).parent / "tableau"
ASSETS = {"tableau.css": "text/css; charset=utf-8", "tableau.js": "text/javascript; charset=utf-8"}
# Everything the page loads or calls comes from this service; its data is written as text, never
# as HTML, and this header forbids any other script should that ever change.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "Cache-Control": "no-cache",
}


def _etag(path: Path) -> str:
    """The file's content's (read at each request: the page's files are a few tens of KB, asked
    once a page load): Starlette's, of its time and size alone, was the same for a release whose
    edits kept the file's size, built as reproducible images are (every file's time set to one
    instant), and browsers kept the former script against the new API (audit s67 read-API F2)."""
    return f'"{hashlib.sha256(path.read_bytes()).hexdigest()[:32]}"'


def served(request: Request, path: Path, media_type: str) -> Response:
    """The file, or 304 when the browser's copy is this one (`no-cache`: it asks at each load,
    and had the whole file again each time, 32 KB of script)."""
    etag = _etag(path)
    file = FileResponse(path, media_type=media_type, headers={**HEADERS, "etag": etag}, stat_result=os.stat(path))
    held = {tag.strip().removeprefix("W/") for tag in request.headers.get("if-none-match", "").split(",")}
    if etag in held or "*" in held:
        # With the page's own headers: the browser updates the copy it holds with those of a
        # 304, and without them its policy would be the one every answer gets (AnswerHeaders).
        return Response(status_code=304, headers={**HEADERS, "etag": etag})
    return file


# HEAD too: an uptime monitor's `curl -I` was answered 405.
@router.api_route("/tableau", methods=["GET", "HEAD"], include_in_schema=False)
async def tableau(request: Request) -> Response:
    return served(request, PAGE / "index.html", "text/html; charset=utf-8")


@router.api_route("/tableau/{fichier}", methods=["GET", "HEAD"], include_in_schema=False)
async def fichier(request: Request, fichier: str) -> Response:
    if fichier not in ASSETS:
        raise HTTPException(404, f"fichier : le tableau de bord n'a que {', '.join(ASSETS)}")
    return served(request, PAGE / fichier, ASSETS[fichier])


@router.get(
    "/territoires",
    summary="Les académies du référentiel et leurs départements (les filtres du tableau de bord)",
    description="`{academies: {code_academie: [code_departement, …]}, noms: {code_academie: nom}}`, "
    "dans l'ordre des codes.",
    **built(Territoires, "les académies et leurs départements", STARTING),
    dependencies=KNOWN_PARAMETERS_ONLY,
)
async def territoires(pool: Pool) -> dict:
    async with pool.acquire() as conn:
        return {"academies": await queries.territoires(conn), "noms": NOMS_ACADEMIES}


@router.get(
    "/repartition/{resource_id:path}",
    summary="Une ressource : les établissements abonnés par verdict, par département",
    description="Les mêmes comptes que `/ressources/{resource_id}` (`par_academie`), par département.",
    **built(Repartition, "les comptes de la ressource par département", NOT_IN_CATALOGUE, STARTING),
    dependencies=KNOWN_PARAMETERS_ONLY,
)
async def repartition(pool: Pool, resource_id: ResourceId) -> dict:
    async with pool.snapshot() as conn:
        if await queries.ressource(conn, resource_id) is None:
            raise HTTPException(404, f"resource_id : {resource_id} n'est pas dans le catalogue")
        par_departement = await queries.synthese(conn, resource_id, by="code_departement")
        pending = await queries.reevaluation_pending(conn, [resource_id, EVERY_RESOURCE])
    return {"resource_id": resource_id, "par_departement": par_departement, "reevaluation_en_attente": pending}
