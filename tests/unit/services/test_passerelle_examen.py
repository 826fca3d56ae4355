"""Each event of a request judged as the services judge it (the contract's own parser, then the
token's declarants, then the rights), the answer's status, and Kafka's refusal as a 503."""

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka.errors import KafkaConnectionError
from fastapi import HTTPException

import contracts as c
from contracts import Etablissement, parse_event
from helpers import event, uai
from services.common.rules.rights import Refusal
from services.passerelle.api import Passerelle, answer
from services.passerelle.corps import BATCHED, split
from services.passerelle.examen import PARTNER_TOPICS, SLICE_BYTES, Accepte, judge
from services.passerelle.settings import PasserelleSettings

ECOLE, AILLEURS, INCONNUE = uai("0350101"), uai("0350102"), uai("0350199")
COMMUNE = "/collectivites/communes/35238"
AUTRE_COMMUNE = "/collectivites/communes/35001"
TEACHER = "ens-passerelle-01"
NOW = datetime(2026, 9, 1, 8, 0, tzinfo=UTC)


def ecole(code: str, commune: str) -> Etablissement:
    return Etablissement(
        uai=code,
        nom="École",
        type="ecole",
        statut="public",
        code_commune=commune,
        code_departement="035",
        code_academie="14",
        code_region="53",
        ouvert=True,
    )


REFERENTIEL = {ECOLE: ecole(ECOLE, "35238"), AILLEURS: ecole(AILLEURS, "35001")}


def lot(where: str, source: str = COMMUNE, **changes) -> dict:
    data = {"uai": where, "lot_id": "L1", "kind": "TNI", "quantity": 1, "os": None, "browsers": []}
    return event(c.LOT, source, data, time_=NOW) | changes


async def _judge(events: list, declarants=(COMMUNE,), raw: bytes | None = None) -> list:
    asked = []

    async def etablissements(uais):
        asked.append(uais)
        return {u: REFERENTIEL[u] for u in uais if u in REFERENTIEL}

    body = raw if raw is not None else json.dumps(events).encode()
    verdicts = await judge(split(body, BATCHED), declarants, NOW + timedelta(minutes=5), etablissements)
    assert len(asked) == 1, "the référentiel is read once per request"
    return verdicts


def _codes(verdicts) -> list[str]:
    return [v.code if isinstance(v, Refusal) else "accepted" for v in verdicts]


async def test_an_event_within_the_declarant_s_competence_is_accepted_with_its_key_and_bytes():
    good = json.dumps(lot(ECOLE)).encode()
    [verdict] = await _judge([], raw=b"[" + good + b"]")
    assert verdict == Accepte(c.EQUIPEMENT, ECOLE, good)


async def test_a_training_goes_to_formation_keyed_by_its_teacher():
    data = {
        "teacher_id": TEACHER,
        "module_id": "m",
        "title": "t",
        "dispositif": "eafc",
        "completed_on": "2026-06-01",
        "competences": [],
        "tools": [],
    }
    [verdict] = await _judge([event(c.FORMATION_SUIVIE, "/rectorats/14", data, time_=NOW)], ("/rectorats/14",))
    assert isinstance(verdict, Accepte) and (verdict.topic, verdict.key) == (c.FORMATION, TEACHER)


async def test_each_check_in_order_with_the_dlq_s_reason_codes():
    verdicts = await _judge(
        [
            lot(ECOLE),
            lot(AILLEURS),  # another commune's école
            lot(INCONNUE),
            lot(ECOLE, "/collectivites/communes/35001"),  # not the token's declarant
            lot(ECOLE, data={"uai": ECOLE}),  # the data breaks the schema
            lot(ECOLE, time=(NOW + timedelta(hours=1)).isoformat()),
            lot(ECOLE, type="fr.education.equipement.inconnu.v1"),
            lot(ECOLE, specversion="0.3"),
            lot(AILLEURS, "/collectivites/communes/35001", data={}),  # the contract before the declarant
        ]
    )
    assert _codes(verdicts) == [
        "accepted",
        "hors-competence",
        "uai-inconnu",
        "source-non-autorisee",
        "donnees-invalides",
        "time-futur",
        "type-inconnu",
        "cloudevent-invalide",
        "donnees-invalides",
    ]
    assert "35001" in verdicts[3].message and COMMUNE in verdicts[3].message


async def test_the_same_reason_and_message_as_the_services_parser():
    bad = json.dumps(lot(ECOLE, data={"uai": ECOLE, "lot_id": "L1", "kind": "TNI", "quantity": -1})).encode()
    [verdict] = await _judge([], raw=b"[" + bad + b"]")
    with pytest.raises(c.ContractError) as services:
        parse_event(bad, c.EQUIPEMENT)
    assert (verdict.code, verdict.message) == (services.value.code, services.value.message)


async def test_a_repeated_key_or_nan_refuses_that_element_alone_as_json_invalide():
    good = json.dumps(lot(ECOLE)).encode()
    repeated = good[:-1] + b', "source": "/collectivites/communes/35238"}'
    nan = good.replace(b'"quantity": 1', b'"quantity": NaN')
    verdicts = await _judge([], raw=b"[" + b",".join([good, repeated, nan, good]) + b"]")
    assert _codes(verdicts) == ["accepted", "json-invalide", "json-invalide", "accepted"]


def _etablissement(source: str = "/ministere", code: str = ECOLE, commune: str = "35238") -> dict:
    return event(c.ETABLISSEMENT, source, ecole(code, commune).model_dump(mode="json"), time_=NOW)


RESOURCE = "ark:/67375/passerelle-1"


def _ressource(source: str) -> dict:
    data = {"resource_id": RESOURCE, "title": "t", "editor": "e", "requirements": [], "tools": []}
    return event(c.RESSOURCE_PUBLIEE, source, data | {"min_bandwidth_mbps": None, "needs_ent": False}, time_=NOW)


def _abonnement(where: str, source: str = "/gar") -> dict:
    data = {"resource_id": RESOURCE, "uai": where, "start": "2026-09-01", "end": None}
    return event(c.ABONNEMENT, source, data, time_=NOW)


async def test_the_ministere_and_the_gar_declare_over_http_too_each_keyed_as_on_kafka():
    """CONTRACTS.md, Identity: HTTP ingestion is for any partner. Each accepted event goes to its
    type's topic, keyed as a partner's Kafka record is (the UAI, a resource's resource_id)."""
    verdicts = await _judge([_etablissement(), _ressource("/ministere")], ("/ministere",))
    assert verdicts[0] == Accepte(c.REFERENTIEL, ECOLE, verdicts[0].raw)
    assert verdicts[1] == Accepte(c.CATALOGUE, RESOURCE, verdicts[1].raw)
    verdicts = await _judge([_ressource("/gar"), _abonnement(ECOLE), _abonnement(INCONNUE)], ("/gar",))
    assert [(v.topic, v.key) for v in verdicts[:2]] == [(c.CATALOGUE, RESOURCE), (c.CATALOGUE, ECOLE)]
    assert _codes(verdicts)[2] == "uai-inconnu"


async def test_an_etablissement_accepted_in_a_request_is_known_to_the_events_after_it():
    """A ministère's batch of a new établissement and its subscription: the subscription was
    refused uai-inconnu (the référentiel read before the request), though over Kafka both take
    effect (audit helper-166 #5). Not to those before it, nor when the établissement is refused;
    one the référentiel holds stays as held (its responsable for the rights)."""
    both = ("/ministere", "/gar", AUTRE_COMMUNE)
    events = [
        _abonnement(INCONNUE),
        _etablissement(code=INCONNUE, commune="35001"),
        _abonnement(INCONNUE),
        lot(INCONNUE, AUTRE_COMMUNE),
    ]
    assert _codes(await _judge(events, both)) == ["uai-inconnu", "accepted", "accepted", "accepted"]
    refused = [_etablissement("/gar", code=INCONNUE), _abonnement(INCONNUE)]
    assert _codes(await _judge(refused, both)) == ["hors-competence", "uai-inconnu"]
    moved = [_etablissement(code=ECOLE, commune="35001"), lot(ECOLE, AUTRE_COMMUNE)]
    assert _codes(await _judge(moved, both)) == ["accepted", "hors-competence"]


async def test_who_may_declare_what_holds_over_http_as_on_kafka():
    declarants = ("/gar", COMMUNE, "/rectorats/14")
    events = [_etablissement("/gar"), _ressource(COMMUNE), _abonnement(ECOLE, "/rectorats/14")]
    assert _codes(await _judge(events, declarants)) == ["hors-competence"] * 3


async def test_the_platform_s_own_types_are_not_a_partner_s():
    data = {
        "alert_id": "a-1",
        "uai": ECOLE,
        "resource_id": RESOURCE,
        "kind": "equipement-incompatible",
        "reasons": [],
        "code_academie": "14",
        "code_departement": "035",
        "responsable": None,
        "compatible": 0,
        "devices": 0,
        "coverage": None,
        "raised_at": "2026-09-01T08:00:00Z",
        "resolved_at": None,
    }
    alert = event(c.ALERTE_LEVEE, "/ministere", data, time_=NOW)
    [verdict] = await _judge([alert], ("/ministere",))
    assert verdict.code == "type-hors-topic"
    assert c.ALERTES in verdict.message and "plateforme" in verdict.message


@pytest.mark.parametrize(
    "changes",
    [{"data": {}}, {"data": {"uai": "x"}}, {"id": None}, {"specversion": "0.3", "data": {}}],
    ids=["empty-data", "bad-data", "no-id", "bad-envelope"],
)
async def test_a_platform_type_gets_the_reason_code_the_dlq_gives_it_on_any_partner_topic(changes):
    """The same bytes over HTTP as on Kafka (CONTRACTS.md, Identity): the envelope judged first,
    then the type (off the partner's topics), then the data."""
    alert = {k: v for k, v in (event(c.ALERTE_LEVEE, "/ministere", {}, time_=NOW) | changes).items() if v is not None}
    raw = json.dumps(alert).encode()
    on_kafka = set()
    for topic in PARTNER_TOPICS:
        with pytest.raises(c.ContractError) as refused:
            parse_event(raw, topic, not_after=NOW)
        on_kafka.add(refused.value.code)
    [verdict] = await _judge([alert], ("/ministere",))
    assert on_kafka == {verdict.code}


async def test_a_personal_value_is_never_in_a_refusal():
    data = {"teacher_id": "x", "uai": ECOLE, "start": "2026-09-01", "end": None}  # too short a pseudonym
    secret = {"teacher_id": "Jean.Dupont@ac-rennes.fr", "uai": ECOLE, "start": "2026-09-01", "end": None}
    verdicts = await _judge(
        [event(c.AFFECTATION, "/rectorats/14", d, time_=NOW) for d in (data, secret)], ("/rectorats/14",)
    )
    assert all(isinstance(v, Refusal) for v in verdicts)
    assert "Jean.Dupont" not in verdicts[1].message


def test_202_when_all_are_accepted_207_when_any_is_refused():
    ok = Accepte(c.EQUIPEMENT, ECOLE, b"{}")
    no = Refusal("hors-competence", "pas là")
    assert answer(["a"], [ok]) == (202, {"resultats": [{"index": 0, "id": "a", "statut": "accepted"}]})
    status, body = answer(["a", None], [ok, no])
    assert status == 207
    assert body["resultats"][1] == {
        "index": 1,
        "id": None,
        "statut": "refused",
        "code": "hors-competence",
        "message": "pas là",
    }
    assert answer(["b"], [no])[0] == 207  # all refused is still 207


class DownProducer:
    async def send(self, *args, **kwargs):
        raise KafkaConnectionError("no broker")


async def test_kafka_refusing_the_writes_is_503_with_retry_after():
    passerelle = Passerelle(PasserelleSettings(), None, None, DownProducer(), None)
    with pytest.raises(HTTPException) as refused:
        await passerelle.write([Accepte(c.EQUIPEMENT, ECOLE, b"{}")], [])
    assert refused.value.status_code == 503
    assert refused.value.headers == {"Retry-After": "5"}
    assert "renvoyer" in refused.value.detail


async def test_a_large_request_is_judged_in_slices_letting_other_requests_in():
    """The event loop turns between slices of SLICE_BYTES judged (a request of 1,000 events of
    15 MiB held the passerelle for 0.6–0.8 s before); here 3.4 MB, one event in a hundred from a
    source the token does not hold. Another task counts its turns; the verdicts keep their order."""
    browsers = [{"name": f"navigateur-{i:02d}".ljust(64, "x"), "version": "120.0.1"} for i in range(32)]
    data = lot(ECOLE)["data"] | {"browsers": browsers}
    sources = [AUTRE_COMMUNE if n % 100 == 7 else COMMUNE for n in range(1000)]
    big = [lot(ECOLE, source, data=data | {"lot_id": f"L{n}"}) for n, source in enumerate(sources)]
    body = json.dumps(big).encode()
    turns = 0

    async def other_request():
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    other = asyncio.create_task(other_request())
    await asyncio.sleep(0)
    try:
        verdicts = await _judge(big, raw=body)
    finally:
        other.cancel()
    assert [type(v) for v in verdicts] == [Refusal if s == AUTRE_COMMUNE else Accepte for s in sources]
    assert turns >= len(body) // SLICE_BYTES - 1, (turns, len(body))


async def test_an_accepted_event_is_written_without_what_the_contract_does_not_know_and_its_result_names_it():
    """inconnus.py: the event written less its unknown members, the result naming them; a refused
    event's result names none."""
    with_email, refused = lot(ECOLE), lot(AILLEURS)
    with_email["data"]["email"] = "prenom.nom@ac-rennes.fr"
    refused["data"]["email"] = "x@y.fr"  # another commune's école
    sent = [with_email, lot(ECOLE), refused]
    verdicts = await _judge(sent)
    status, answered = answer([e["id"] for e in sent], verdicts)
    assert status == 207
    assert [(r["statut"], r.get("champs_ignores")) for r in answered["resultats"]] == [
        ("accepted", ["data.email"]),
        ("accepted", None),
        ("refused", None),
    ]
    assert "champs_ignores" not in answered["resultats"][1]
    first, second = verdicts[0], verdicts[1]
    assert isinstance(first, Accepte) and isinstance(second, Accepte)
    assert json.loads(first.raw) == lot(ECOLE) | {"id": with_email["id"]}
    assert second.raw == json.dumps(sent[1]).encode(), "as sent"
