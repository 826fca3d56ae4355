"""Who may declare what (CONTRACTS.md), as a pure function of the declarant, the event type
and the établissement the event is about.

The declarant is the CloudEvents `source`; a later issue binds it to the authenticated Kafka
principal, so every rule takes it as a first-class input.
"""

import functools
from dataclasses import dataclass
from typing import Literal

import contracts as c
from contracts import CloudEvent, Declarant, Etablissement

HORS_COMPETENCE = "hors-competence"
UAI_INCONNU = "uai-inconnu"

_CATALOGUE_TYPES = {c.RESSOURCE_PUBLIEE, c.RESSOURCE_RETIREE, c.ABONNEMENT}
_EQUIPEMENT_TYPES = {c.LOT, c.CONNECTIVITE}
# The collectivité that equips each type of établissement (Code de l'éducation); nobody equips `autre`.
Collectivite = Literal["commune", "departement", "region"]
EQUIPEUR: dict[str, Collectivite] = {"ecole": "commune", "college": "departement", "lycee": "region", "erea": "region"}


@dataclass(frozen=True)
class Refusal:
    code: str
    message: str


def _territory(kind: str, etab: Etablissement) -> str:
    """The code of `etab`'s commune, département, région or académie, for a declarant of that kind."""
    return {
        "commune": etab.code_commune,
        "departement": etab.code_departement,
        "region": etab.code_region,
        "rectorat": etab.code_academie,
    }[kind]


def responsable(etab: Etablissement) -> c.Responsable | None:
    """The collectivité that equips `etab`, as alerts name it: the only one that may declare its equipment."""
    kind = EQUIPEUR.get(etab.type)
    return None if kind is None else _responsable(kind, _territory(kind, etab))


@functools.lru_cache(maxsize=4096)
def _responsable(kind: Collectivite, code: str) -> c.Responsable:
    """One frozen model per collectivité: every alert of a fan-out names one, a few hundred in all."""
    return c.Responsable(type=kind, code=code)


def check(event: CloudEvent, declarant: Declarant, etab: Etablissement | None) -> Refusal | None:
    """`None` when the declarant may send this event; else why not. `etab` is the
    référentiel's entry for the event's UAI (None: unknown or the type has no UAI)."""
    return check_declaration(event.type, event.source, c.uai_of(event), declarant, etab)


def check_declaration(
    t: str, source: str, uai: str | None, declarant: Declarant, etab: Etablissement | None
) -> Refusal | None:
    """`check` from what it reads of an event: its type, its source and its UAI (the passerelle
    keeps only those of the events it holds, not the events)."""
    kind = declarant.kind
    if t == c.ETABLISSEMENT:
        allowed = kind == "ministere"
    elif t in _CATALOGUE_TYPES:
        allowed = kind in ("ministere", "gar")
    elif t in (c.AFFECTATION, c.FORMATION_SUIVIE):
        allowed = kind == "rectorat"
    elif t in _EQUIPEMENT_TYPES:
        allowed = kind in EQUIPEUR.values()
    else:
        allowed = False
    if not allowed:
        return Refusal(HORS_COMPETENCE, f"{source} ne peut pas déclarer {t}")
    if uai is None or t == c.ETABLISSEMENT:
        return None
    if etab is None:
        return Refusal(UAI_INCONNU, f"l'UAI {uai} n'est pas dans le référentiel")
    if t in _EQUIPEMENT_TYPES:
        equipeur = responsable(etab)
        if equipeur is None or (equipeur.type, equipeur.code) != (kind, declarant.code):
            return Refusal(HORS_COMPETENCE, f"{source} n'équipe pas {uai} ({etab.type}, {_territory(kind, etab)})")
    elif t == c.AFFECTATION and etab.code_academie != declarant.code:
        return Refusal(HORS_COMPETENCE, f"{uai} est dans l'académie {etab.code_academie}, pas {declarant.code}")
    return None
