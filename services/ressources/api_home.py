"""`GET /`: the root of the read API, the way to everything else it serves.

A person's browser gets a small page in French with the links; a program that asks for JSON
(`Accept: application/json`, or any Accept header that ranks JSON above HTML) gets the same links
as JSON. A tie, `*/*` (curl's and most clients' default) or no Accept at all gets the page: a
program that wants JSON says so, a person typing the address does not.
"""

import re
from html import escape

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

router = APIRouter()

# (path, what it is); a path with `{…}` is a template (RFC 6570), shown but not linked.
LINKS = (
    ("/tableau", "le tableau de bord : les alertes filtrées et en direct, un établissement, une ressource"),
    ("/docs", "la documentation interactive (Swagger UI), servie par l'API elle-même"),
    ("/redoc", "la même documentation sur une seule page (ReDoc)"),
    ("/openapi.json", "le document OpenAPI"),
    ("/health", "l'état du service : 200 quand Kafka et PostgreSQL répondent"),
    (
        "/alertes?state=open",
        "les alertes ouvertes, les plus récentes d'abord (filtres et pages : voir /docs)",
    ),
    ("/alertes/flux", "le flux des changements d'alertes (Server-Sent Events)"),
    ("/etablissements/{uai}", "un établissement : équipement, formation, verdicts de chaque ressource abonnée"),
    ("/ressources/{resource_id}", "une ressource : établissements abonnés par verdict, par académie"),
    ("/repartition/{resource_id}", "la même, par département"),
    ("/territoires", "les académies du référentiel et leurs départements"),
)


class Lien(BaseModel):
    href: str = Field(description="chemin sur ce service ; `{…}` est à remplacer (RFC 6570)")
    description: str


class Accueil(BaseModel):
    titre: str
    liens: list[Lien]


_Q = re.compile(r"(?:^|;)\s*q\s*=\s*([01](?:\.[0-9]{0,3})?)\s*(?:;|$)")


def _quality(accept: str, media: str) -> float:
    """The weight an Accept header gives `media`: that of its most specific range (RFC 9110, 12.5.1)."""
    weights = {}
    for part in accept.split(","):
        media_range, _, params = part.partition(";")
        q = _Q.search(params)
        weights[media_range.strip().lower()] = float(q.group(1)) if q else 1.0
    ranges = (media, media.split("/")[0] + "/*", "*/*")
    return next((weights[r] for r in ranges if r in weights), 0.0)


def _page(title: str) -> str:
    items = "\n".join(
        f"<li><code>{escape(path)}</code> : {escape(what)}</li>"
        if "{" in path
        else f'<li><a href="{escape(path)}">{escape(path)}</a> : {escape(what)}</li>'
        for path, what in LINKS
    )
    return f"""<!DOCTYPE html>
<html lang="fr">
<head><meta charset="utf-8"><title>{escape(title)}</title></head>
<body>
<h1>{escape(title)}</h1>
<p>Les alertes de compatibilité des ressources pédagogiques, telles que le service ressources les voit.</p>
<ul>
{items}
</ul>
</body>
</html>
"""


@router.get(
    "/",
    summary="Cette page : les liens vers la documentation, l'état du service, les alertes et leur flux",
    response_model=None,
    responses={200: {"model": Accueil, "content": {"text/html": {"schema": {"type": "string"}}}}},
)
async def accueil(request: Request) -> Response:
    headers = {"Vary": "Accept"}  # one address, two answers: a cache must keep them apart
    accept = request.headers.get("accept", "")
    if _quality(accept, "application/json") > _quality(accept, "text/html"):
        links = [Lien(href=path, description=what) for path, what in LINKS]
        return JSONResponse(Accueil(titre=request.app.title, liens=links).model_dump(), headers=headers)
    return HTMLResponse(_page(request.app.title), headers=headers)
