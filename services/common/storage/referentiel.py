"""The part of the référentiel each service keeps: one row per UAI, latest `time` wins."""

import functools
from collections.abc import Iterable, Sequence

from contracts import CloudEvent, Etablissement
from services.common.storage.db import Conn
from services.common.storage.entities import store_latest

_COLUMNS = {
    "nom": "text",
    "type": "text",
    "statut": "text",
    "code_commune": "text",
    "code_departement": "text",
    "code_academie": "text",
    "code_region": "text",
    "ouvert": "boolean",
}


async def apply(conn: Conn, events: Sequence[CloudEvent]) -> tuple[list[CloudEvent], dict[str, CloudEvent]]:
    """Store the winning `etablissement` events; returns (stale events, the UAIs that changed,
    each with the event that changed it: the cause of what follows from it, for its trace)."""
    verdicts = await store_latest(
        conn,
        "etablissements",
        ("uai",),
        _COLUMNS,
        events,
        row_of=lambda e: tuple(getattr(e.data, c) for c in _COLUMNS),
    )
    return verdicts.stale, {uai: e for (uai,), e in verdicts.winners.items()}


async def load(conn: Conn, uais: Iterable[str]) -> dict[str, Etablissement]:
    if not (uais := set(uais)):  # a batch of records derived by our own services: nothing to look up
        return {}
    rows = await conn.fetch(
        f"SELECT uai, {', '.join(_COLUMNS)} FROM etablissements WHERE uai = ANY($1::text[])", list(uais)
    )
    return {r["uai"]: _etablissement(tuple(r)) for r in rows}


_FIELDS = ("uai", *_COLUMNS)
_new, _set = object.__new__, object.__setattr__
# What `_etablissement` relies on: a plain model (pydantic's model_construct does more otherwise).
assert not Etablissement.__pydantic_post_init__ and not Etablissement.__pydantic_root_model__
assert Etablissement.model_config.get("extra") != "allow" and tuple(Etablissement.model_fields) == _FIELDS


@functools.lru_cache(maxsize=8192)
def _etablissement(row: tuple) -> Etablissement:
    """The model of a row's values. Frozen, so one serves every reading of an unchanged row: a
    batch reads its UAIs' rows twice (the rights, then the evaluation), and building the model
    cost more than the reading. Not validated (the row was, when stored), and built as
    `Etablissement.model_construct` builds it without its look for aliases and defaults field
    by field, which took three times as long (3.2 µs, 1.1 here): a fan-out reads tens of
    thousands of distinct rows. tests/unit/services/test_referentiel_rows.py checks the two agree."""
    etab = _new(Etablissement)
    _set(etab, "__dict__", dict(zip(_FIELDS, row, strict=True)))
    _set(etab, "__pydantic_fields_set__", set(_FIELDS))
    _set(etab, "__pydantic_extra__", None)
    _set(etab, "__pydantic_private__", None)
    return etab
