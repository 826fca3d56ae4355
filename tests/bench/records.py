"""Partner records the figures send: CloudEvents built with the contract's own models, as
`deploy.referentiel` builds the référentiel's."""

from datetime import UTC, date, datetime

import contracts as c
from contracts import Abonnement, Affectation, Etablissement, Exigence, Logiciel, Lot, RessourcePubliee, make_event
from deploy.local.scenario import equipeur

T0 = datetime(2026, 9, 1, 8, tzinfo=UTC)
START = date(2026, 9, 1)


def lot(e: Etablissement, ipados: str, when: datetime = T0, quantity: int = 30) -> bytes:
    """The établissement's one lot: `quantity` tablets on iPadOS `ipados`, declared by its collectivité."""
    data = Lot(
        uai=e.uai, lot_id="tablettes", kind="tablette", quantity=quantity, os=Logiciel(name="iPadOS", version=ipados)
    )
    source = equipeur(e)
    if source is None:
        raise ValueError(f"{e.uai} is of type {e.type}: no collectivité declares its equipment")
    return make_event(c.LOT, data, source=source, time=when).to_bytes()


def affectation(e: Etablissement) -> bytes:
    """One teacher counted at the établissement, declared by its académie's rectorat."""
    data = Affectation(teacher_id=f"ens-{e.uai}", uai=e.uai, start=START)
    return make_event(c.AFFECTATION, data, source=f"/rectorats/{e.code_academie}", time=T0).to_bytes()


def ressource(resource_id: str, ipados_min: str, when: datetime = T0) -> tuple[str, bytes]:
    """A resource for tablets on iPadOS >= `ipados_min`, published by the ministère."""
    data = RessourcePubliee(
        resource_id=resource_id,
        title="Bench",
        editor="Bench",
        requirements=[[Exigence(type="os", name="iPadOS", min_version=ipados_min)]],
    )
    return resource_id, make_event(c.RESSOURCE_PUBLIEE, data, source="/ministere", time=when).to_bytes()


def abonnement(resource_id: str, e: Etablissement) -> tuple[str, bytes]:
    """The GAR's subscription of the établissement to the resource."""
    data = Abonnement(resource_id=resource_id, uai=e.uai, start=START)
    return e.uai, make_event(c.ABONNEMENT, data, source="/gar", time=T0).to_bytes()
