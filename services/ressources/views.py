"""What ressources assembles per UAI from the records equipement and formation publish (one
per lot, connectivity, teachers, tool): the profile and the coverage the rules read. Pure; the
store feeds it from `recus`, the handlers' unit tests from memory."""

from collections.abc import Iterable

from pydantic_core import from_json

from contracts.internal import (
    COUVERTURE_ENSEIGNANTS,
    COUVERTURE_OUTIL,
    PROFIL_CONNECTIVITE,
    PROFIL_LOT,
    ConnectiviteProfil,
    CouvertureFormation,
    LotProfil,
    ProfilEquipement,
)
from services.ressources.rules import Coverage, Fleet

Record = tuple[str, str, dict]
"""(event type, uai, the record's data), in the order of their keys."""


def profils(records: Iterable[Record]) -> dict[str, ProfilEquipement]:
    """Per UAI with any equipment record: its lots in service and its link."""
    lots: dict[str, list[LotProfil]] = {}
    links: dict[str, ConnectiviteProfil] = {}
    for type_, uai, data in records:
        lots.setdefault(uai, [])
        if type_ == PROFIL_CONNECTIVITE:
            links[uai] = ConnectiviteProfil.model_validate(data)
        elif (lot := LotProfil.model_validate(data)).quantity > 0:
            lots[uai].append(lot)
    return {u: ProfilEquipement(uai=u, lots=lots[u], connectivite=links.get(u)) for u in lots}


def couvertures(records: Iterable[Record]) -> dict[str, CouvertureFormation]:
    """Per UAI with any training record: counted teachers, competences, tools someone holds."""
    parts: dict[str, dict] = {}
    for type_, uai, data in records:
        part = parts.setdefault(uai, {"uai": uai, "enseignants": 0, "competences": {}, "outils": {}})
        if type_ == COUVERTURE_ENSEIGNANTS:
            part.update(enseignants=data["enseignants"], competences=data["competences"])
        elif data["enseignants"] > 0:
            part["outils"][data["kind"]] = data["enseignants"]
    return {u: CouvertureFormation.model_validate(p) for u, p in parts.items()}


# The same assembly in SQL, over the rows `r` of `recus` of one UAI (GROUP BY uai), kept per UAI
# in `entrees` (ENTREES_SQL, store.assemble) when its records change: what the store and the
# simulations read, one JSON text per UAI that pydantic validates at once, instead of a model
# validated per record and assembled here. Without the uai (the caller knows it) and the
# records' uai and version, so that equal inputs read equal (simulations group them). NULL for a
# UAI without a record of the kind, as the dicts above leave it out. Tested against profils and
# couvertures.
_CONTENT = "(r.content - '{uai,version}'::text[])"
_LOT, _LINK = f"r.type = '{PROFIL_LOT}'", f"r.type = '{PROFIL_CONNECTIVITE}'"
_TEACHERS, _TOOL = f"r.type = '{COUVERTURE_ENSEIGNANTS}'", f"r.type = '{COUVERTURE_OUTIL}'"
PROFIL_SQL = f"""CASE WHEN bool_or({_LOT} OR {_LINK}) THEN json_build_object(
    'lots', coalesce(json_agg({_CONTENT} ORDER BY r.entity)
        FILTER (WHERE {_LOT} AND (r.content->>'quantity')::bigint > 0), '[]'),
    'connectivite', (array_agg({_CONTENT}) FILTER (WHERE {_LINK}))[1]
)::text END"""
COUVERTURE_SQL = f"""CASE WHEN bool_or({_TEACHERS} OR {_TOOL}) THEN json_build_object(
    'enseignants', coalesce((array_agg(r.content->'enseignants') FILTER (WHERE {_TEACHERS}))[1], '0'),
    'competences', coalesce((array_agg(r.content->'competences') FILTER (WHERE {_TEACHERS}))[1], '{{}}'),
    'outils', coalesce(json_object_agg(r.content->>'kind', r.content->'enseignants' ORDER BY r.entity)
        FILTER (WHERE {_TOOL} AND (r.content->>'enseignants')::bigint > 0), '{{}}')
)::text END"""

ENTREES_SQL = f"""INSERT INTO entrees (uai, profil, couverture)
SELECT r.uai, {PROFIL_SQL}, {COUVERTURE_SQL} FROM recus r
WHERE r.type = ANY('{{{PROFIL_LOT},{PROFIL_CONNECTIVITE},{COUVERTURE_ENSEIGNANTS},{COUVERTURE_OUTIL}}}'::text[])
  AND r.uai = ANY($1::text[])
GROUP BY r.uai
ON CONFLICT (uai) DO UPDATE SET profil = EXCLUDED.profil, couverture = EXCLUDED.couverture"""
"""`entrees` (migration ressources/0007) for the UAIs $1 assembled again from their `recus`."""


def profil(uai: str, assembled: str) -> ProfilEquipement:
    """A UAI's profile from its PROFIL_SQL text."""
    return ProfilEquipement.model_validate({**from_json(assembled), "uai": uai})


def couverture(uai: str, assembled: str) -> CouvertureFormation:
    """A UAI's coverage from its COUVERTURE_SQL text."""
    return CouvertureFormation.model_validate({**from_json(assembled), "uai": uai})


def fleet(assembled: str) -> Fleet:
    """A UAI's profile from its PROFIL_SQL text, as the rules read it (not validated: ressources
    assembled it from records it validated)."""
    return Fleet.from_values(from_json(assembled))


def coverage(assembled: str) -> Coverage:
    """A UAI's coverage from its COUVERTURE_SQL text, as the rules read it (see `fleet`)."""
    return Coverage.from_values(from_json(assembled))
