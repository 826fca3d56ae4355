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
FAMILIES = ((PROFIL_LOT, PROFIL_CONNECTIVITE), (COUVERTURE_ENSEIGNANTS, COUVERTURE_OUTIL))
"""The records a profile is assembled from, and those a coverage is: each producer's groups."""
FAMILY = {type_: family for family in FAMILIES for type_ in family}


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


def whole(groups: Iterable[tuple[int | None, int | None]]) -> bool:
    """Whether the records of one family of a UAI, given by their (group, group_size), hold the
    whole of their latest group (records from before groups count as whole alone)."""
    numbered = [(g, size) for g, size in groups if g is not None]
    if not numbered:
        return True
    latest = max(g for g, _ in numbered)
    sizes = [size for g, size in numbered if g == latest]
    return len(sizes) == sizes[0]


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

_IN_FAMILY = (f"({_LOT} OR {_LINK})", f"({_TEACHERS} OR {_TOOL})")


def _whole(family: str) -> str:
    """Whether the UAI holds every record of its latest group of `family` (NULL: before groups)."""
    latest = f"{family} AND r.group_no = r.last_group"
    return f"count(*) FILTER (WHERE {latest}) = coalesce(max(r.group_size) FILTER (WHERE {latest}), 0)"


ENTREES_SQL = f"""INSERT INTO entrees (uai, profil, couverture)
SELECT r.uai,
    CASE WHEN {_whole(_IN_FAMILY[0])} THEN {PROFIL_SQL}
        ELSE (SELECT e.profil FROM entrees e WHERE e.uai = r.uai) END,
    CASE WHEN {_whole(_IN_FAMILY[1])} THEN {COUVERTURE_SQL}
        ELSE (SELECT e.couverture FROM entrees e WHERE e.uai = r.uai) END
FROM (
    SELECT r.*, max(r.group_no) OVER (PARTITION BY r.uai, {_IN_FAMILY[0]}) AS last_group FROM recus r
    WHERE r.type = ANY('{{{PROFIL_LOT},{PROFIL_CONNECTIVITE},{COUVERTURE_ENSEIGNANTS},{COUVERTURE_OUTIL}}}'::text[])
      AND r.uai = ANY($1::text[])
) r
GROUP BY r.uai
ON CONFLICT (uai) DO UPDATE SET profil = EXCLUDED.profil, couverture = EXCLUDED.couverture"""
"""`entrees` (migration ressources/0007) for the UAIs $1 assembled again from their `recus`; a
UAI's profile, or its coverage, kept as it was while part of the latest group of the records
it is made of is missing (migration 0010): the rest follows on the same partition, and assembles it."""


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
