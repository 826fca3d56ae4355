"""What ressources assembles per UAI from the records equipement and formation publish (one
per lot, connectivity, teachers, tool): the profile and the coverage the rules read. Pure; the
store feeds it from `recus`, the handlers' unit tests from memory."""

from collections.abc import Iterable

from contracts.internal import (
    COUVERTURE_ENSEIGNANTS,
    PROFIL_CONNECTIVITE,
    ConnectiviteProfil,
    CouvertureFormation,
    LotProfil,
    ProfilEquipement,
)

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
