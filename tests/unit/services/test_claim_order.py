"""The pipeline's claim of a batch's events keeps their arrival order (CONTRACTS.md: of one
entity's events at the same `time`, the later arrival wins), also when an event refused is sent
again, corrected, in the same batch and is judged in a later round."""

import json
from types import SimpleNamespace

import contracts as c
from contracts import Etablissement, parse_event
from services.common import pipeline
from services.common.rules.state import latest_wins

SCHOOL, ELSEWHERE = "0351234B", "0350002M"  # an école of commune 35238, one of another commune


def lot(id_: str, uai: str, quantity: int) -> c.CloudEvent:
    event = {
        "specversion": "1.0", "id": id_, "source": "/collectivites/communes/35238", "type": c.LOT,
        "time": "2026-01-01T00:00:00Z",
        "data": {"uai": uai, "lot_id": "L1", "kind": "tablette", "quantity": quantity,
                 "os": {"name": "iPadOS", "version": "16"}},
    }  # fmt: skip
    return parse_event(json.dumps(event).encode(), c.EQUIPEMENT)


def ecole(uai: str, commune: str) -> Etablissement:
    return Etablissement(
        uai=uai, nom="École", type="ecole", statut="public", code_commune=commune,
        code_departement="035", code_academie="14", code_region="53", ouvert=True,
    )  # fmt: skip


async def test_an_event_sent_again_corrected_keeps_its_place_among_the_batch_events(monkeypatch):
    claimed: set[tuple[str, str]] = set()

    async def claim(conn, events, principal):
        fresh = [e for e in events if (e.source, e.id) not in claimed]
        claimed.update((e.source, e.id) for e in fresh)
        return fresh

    async def release(conn, events):
        claimed.difference_update((e.source, e.id) for e in events)

    monkeypatch.setattr(pipeline.inbox, "claim", claim)
    monkeypatch.setattr(pipeline.inbox, "release", release)
    refused = lot("a", ELSEWHERE, 1)  # not the commune's école: hors-competence
    corrected = lot("a", SCHOOL, 2)  # the same (source, id), sent again to the right école
    last = lot("b", SCHOOL, 3)  # the same lot, at the same time, arrived last: it wins
    items = [(e, SimpleNamespace(offset=i)) for i, e in enumerate([refused, corrected, last])]
    etabs = {SCHOOL: ecole(SCHOOL, "35238"), ELSEWHERE: ecole(ELSEWHERE, "35001")}
    rejected: list = []

    judge = pipeline.Pipeline.__new__(pipeline.Pipeline)  # its claim needs no broker nor settings
    accepted = await judge._claim_and_check(None, items, etabs, rejected, None)

    assert [r.code for r in rejected] == ["hors-competence"]
    assert [(e.id, e.data.quantity) for e in accepted] == [("a", 2), ("b", 3)]
    won = latest_wins({}, ((e.data.entity_key, e.time, e) for e in accepted)).winners[(SCHOOL, "L1")]
    assert won.data.quantity == 3
