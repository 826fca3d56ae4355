"""ressources builds an alert's content as plain data and encodes it once with pydantic-core
(lifecycle.Content): what goes out, on the stream, into the journal and into the alert's row,
must be byte for byte what the models give (make_event(...).to_bytes(), model_dump_json())."""

from collections.abc import Sequence
from datetime import date

import pytest
from memory_stores import RessourcesMemory
from test_use_cases import RID, at, college, profil, subscription

import contracts as c
from contracts.internal import COUVERTURE_ENSEIGNANTS, CouvertureEnseignants
from services.common.pipeline import EncodedEvent
from services.ressources.handlers import SOURCE, make_apply, reevaluate_chunk
from services.ressources.rules import Seuils
from services.ressources.store import AlertRow

ressources = make_apply(Seuils())


class Recording(RessourcesMemory):
    def __init__(self, etablissements: Sequence[c.Etablissement]) -> None:
        super().__init__(etablissements)
        self.rows: list[AlertRow] = []

    async def save_alertes(self, rows: Sequence[AlertRow]) -> None:
        self.rows += rows
        await super().save_alertes(rows)


def publication(minute: int, min_ipados: str) -> c.CloudEvent:
    ressource = c.RessourcePubliee(
        resource_id=RID,
        title="Atlas",
        editor="E",
        requirements=[[c.Exigence(type="os", name="iPadOS", min_version=min_ipados)]],
        tools=[c.OutilRequis(kind="TNI", min_quantity=1)],
        training=c.Formation(competences=[c.Competence(code="3.4", level=3)]),
    )
    return c.make_event(c.RESSOURCE_PUBLIEE, ressource, source="/ministere", time=at(minute))


def coverage(uai: str, trained: int) -> c.CloudEvent:
    data = CouvertureEnseignants(
        uai=uai, version=trained, enseignants=3, competences={"3.4": [3, 3, trained] + [0] * 5}
    )
    return c.make_event(COUVERTURE_ENSEIGNANTS, data, source="/plateforme/formation", time=at(trained))


def as_the_model_encodes(event: EncodedEvent) -> bytes:
    """The event's record value as make_event gives it, from its content validated by the model."""
    payload = c.PAYLOADS[event.type].model_validate(event.data)
    time = c.CloudEvent.model_validate_json(event.value).time
    return c.make_event(event.type, payload, source=SOURCE, id=event.id, time=time).to_bytes()


@pytest.mark.parametrize("type_", ["college", "ecole", "autre"])
async def test_alert_events_and_rows_are_the_bytes_the_models_give(type_):
    uais = ["0350042F", "0350043G"]
    store = Recording([college(u).model_copy(update={"type": type_}) for u in uais])
    # One UAI on iPadOS 12.5 (incompatible), one on 17.1; one teacher of three trained (formation).
    inputs = [profil(1, "12.5", uais[0]), profil(1, "17.1", uais[1]), *(coverage(u, 1) for u in uais)]
    await ressources(store, [*inputs, *(subscription(u) for u in uais)], set())
    events: list[EncodedEvent] = []
    for batch in (
        [publication(2, "15")],  # raises
        [publication(3, "17.2")],  # raises, updates
        [coverage(u, 2) for u in uais],  # resolves the training alerts
        [subscription(u, end=date(2026, 12, 31), minute=4) for u in uais],  # resolves the others
    ):
        outgoing = (await ressources(store, batch, set())).outgoing
        while chunk := await reevaluate_chunk(store, Seuils(), 10):  # a publication's fan-out
            outgoing += chunk.outgoing
        events += [o.event for o in outgoing if o.topic == c.ALERTES]

    kinds = {(e.type, e.data["kind"]) for e in events}
    assert {(c.ALERTE_LEVEE, "formation-insuffisante"), (c.ALERTE_RESOLUE, "formation-insuffisante")} <= kinds
    assert (c.ALERTE_RESOLUE, "equipement-incompatible") in kinds
    for event in events:
        assert event.value == as_the_model_encodes(event)
    assert {r.ouverte for r in store.rows} == {True}, "a resolution stores no content: the held one stays"
    for row in store.rows:
        alerte = c.AlerteLevee.model_validate_json(row.alerte)
        assert row.alerte == alerte.model_dump_json()
