"""The read API's error bodies: French, like the DLQ's messages, and naming what they refuse.

A refused parameter answers 422 with FastAPI's shape, `{"detail": [{"loc", "msg", "type"}]}`
(`loc`: `query`, `path` or `header`, then the parameter's name), whose `msg` is
`"{parameter} : doit être {rule}"`; in a posted document (`body`), `"{path} : {rule}"` in the
words of the contract's models (contracts.messages, as in the DLQ). The rule is the parameter's
description in the OpenAPI document, so the document and the answer say the same thing; a
validator of ours that explains more (the UAI's check letter) is quoted instead. pydantic's
English never reaches a client, nor the refused value itself, but where the contract's message
quotes it as the DLQ's does (a UAI, a public identifier, with its expected check letter; never a
`teacher_id`). Every other error answers `{"detail": "…"}`.
"""

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from contracts import messages
from contracts._identifiers import IDENTIFIER_REASONS
from services.common.runtime.app import internal_error


class Erreur(BaseModel):
    detail: str = Field(description="ce qui ne va pas, en français")


class ParametreRefuse(BaseModel):
    loc: list[str | int] = Field(description="`query`, `path`, `header` ou `body`, puis le paramètre ou le chemin")
    msg: str = Field(description="`{paramètre} : {règle}`, en français")
    type: str = Field(
        description="le type de la règle : de pydantic pour un paramètre (`int_parsing`, `literal_error`), le code "
        "du contrat pour un corps refusé comme il le serait sur Kafka (`json-invalide`, `donnees-invalides`…)"
    )


class ParametresRefuses(BaseModel):
    detail: list[ParametreRefuse]


REFUSED: dict[int | str, dict[str, Any]] = {
    422: {"model": ParametresRefuses, "description": "un paramètre refusé : `msg` le nomme et dit sa règle"}
}

# What Starlette itself answers, in English, for a path or a method no route has.
_STARLETTE = {
    (404, "Not Found"): "aucun point d'accès à cette adresse : la liste est sur /",
    (400, "There was an error parsing the body"): "corps illisible : attendu un document JSON en UTF-8",
}


_NOT_AN_OBJECT = frozenset({"model_attributes_type", "model_type", "dict_type"})


def _message(request: Request, error: dict) -> str:
    where, name = error["loc"][0], error["loc"][-1]
    if where == "body":  # a posted document, checked by the contract's models: their own French rules
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"][1:]).removeprefix(".")
        if error["type"] == "json_invalid":
            return f"corps : JSON illisible ({error['ctx']['error']})"
        if error["type"] in _NOT_AN_OBJECT:  # FastAPI's own check, before the contract's models
            # The document itself (a form, text, an array), or an object within it.
            return (
                f"{path} : attendu un objet"
                if path
                else "corps : attendu un objet JSON (Content-Type: application/json)"
            )
        return f"{path or 'corps'} : {error['msg'] if error['type'] in IDENTIFIER_REASONS else messages.rule(error)}"
    if error["type"] == "value_error":  # one of our validators, whose message is already French
        return f"{name} : {error['ctx']['error']}"
    operation = request.app.openapi()["paths"][request.scope["route"].path_format][request.method.lower()]
    [rule] = [p["description"] for p in operation["parameters"] if (p["in"], p["name"]) == (where, name)]
    return f"{name} : doit être {rule}"


async def _refused(request: Request, exc: RequestValidationError) -> JSONResponse:
    detail = [{"loc": list(e["loc"]), "msg": _message(request, e), "type": e["type"]} for e in exc.errors()]
    return JSONResponse({"detail": detail}, 422)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    detail = _STARLETTE.get((exc.status_code, exc.detail), exc.detail)
    if (exc.status_code, exc.detail) == (405, "Method Not Allowed"):
        allowed = (exc.headers or {}).get("Allow", "GET")
        detail = f"méthode non permise : {allowed} seulement à cette adresse"
    return JSONResponse({"detail": detail}, exc.status_code, headers=exc.headers)


# Every error the API answers, in French: refused parameters, unknown paths, internal errors.
HANDLERS = {RequestValidationError: _refused, HTTPException: _http_error, Exception: internal_error}
