"""Derived records are built from plain contents, without payload models: the bytes must be
those the models give (`make_event`), and what ressources parses back must be the content."""

import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from memory_stores import MemoryPublished

import contracts as c
from contracts import EventParser
from contracts.internal import INTERNAL_PAYLOADS, INTERNAL_TOPIC_TYPES
from services.common.storage.derived import Derived, publish_changes, stable_id
from services.equipement import domain as equipement
from services.equipement.handlers import LINKS, LOTS
from services.formation import domain as formation
from services.formation.handlers import ENSEIGNANTS, OUTILS
from services.ressources.app import SPEC as ressources_spec

UAI = "0350042F"
TIME = datetime(2026, 9, 1, 8, 0, 0, 123456, tzinfo=UTC)
PARSE = EventParser(c.PAYLOADS | INTERNAL_PAYLOADS, c.TOPIC_TYPES | INTERNAL_TOPIC_TYPES)
TABLETTES = c.Lot(
    uai=UAI,
    lot_id="salle-é/1",
    kind="tablette",
    quantity=30,
    os=c.Logiciel(name="iPadOS", version="12.5"),
    browsers=[c.Logiciel(name="Safari", version="12.5"), c.Logiciel(name="Firefox", version="115.0.1")],
)
CASES = [
    (LOTS, TABLETTES.lot_id, equipement.lot_content(TABLETTES)),
    (LOTS, "retiré", equipement.lot_content(c.Lot(uai=UAI, lot_id="retiré", kind="tni", quantity=0))),
    (LINKS, "", equipement.connectivite_content(c.Connectivite(uai=UAI, bandwidth_mbps=0.1, ent=True))),
    (ENSEIGNANTS, "", formation.competences_content(12, {"3.4": {3: 2, 1: 1}, "1.1": {8: 12}})),
    (OUTILS, "tni", formation.outils_contents({"tni": 4}, set())["tni"]),
]


@pytest.mark.parametrize(("derived", "entity", "content"), CASES, ids=lambda v: getattr(v, "event_type", None))
def test_a_derived_record_has_the_bytes_of_its_payload_model_and_parses_back(derived: Derived, entity, content):
    built = derived.event(UAI, entity, 7, content, source="/plateforme/test", time=TIME, group=(11, 3))
    model = INTERNAL_PAYLOADS[derived.event_type]
    named = {derived.entity_field: entity} if derived.entity_field else {}
    expected = c.make_event(
        derived.event_type,
        model(uai=UAI, version=7, group=11, group_size=3, **named, **content),
        source="/plateforme/test",
        id=built.id,
        time=TIME,
    )
    assert built.to_bytes() == expected.to_bytes()
    parsed = PARSE(built.to_bytes(), derived.topic)
    assert parsed.data == expected.data and parsed.subject == derived.record_key(UAI, entity)


async def test_only_a_changed_content_is_published_with_the_next_version_and_a_stable_id():
    published = MemoryPublished()
    contents = {(UAI, "a"): {"enseignants": 1}, (UAI, "b"): {"enseignants": 2}}

    async def publish(contents):
        return await publish_changes(published, [(OUTILS, contents)], source="/plateforme/test", causes={})

    first = await publish(contents)
    assert [(o.key, o.event.data["version"]) for o in first] == [(f"{UAI}/a", 1), (f"{UAI}/b", 1)]
    again = await publish({(UAI, "a"): {"enseignants": 1}, (UAI, "b"): {"enseignants": 3}})
    assert [(o.key, o.event.data["version"]) for o in again] == [(f"{UAI}/b", 2)]
    replayed = OUTILS.event(UAI, "b", 2, {"enseignants": 3}, source="/plateforme/test", time=TIME, group=(9, 1))
    assert replayed.id == again[0].event.id, "the id is the key's and the version's: a replay has the same"


async def test_the_records_one_transaction_publishes_about_a_uai_are_one_group_of_known_size():
    """Two kinds, two UAIs: each UAI's records carry the transaction's group and their count,
    and the next transaction's group is larger (contracts/internal.py)."""
    published, other = MemoryPublished(), "0350043G"
    first = await publish_changes(
        published,
        [
            (ENSEIGNANTS, {(UAI, ""): {"enseignants": 3}, (other, ""): {"enseignants": 1}}),
            (OUTILS, {(UAI, "tni"): {"enseignants": 3}}),
        ],
        source="/plateforme/test",
        causes={},
    )
    groups = {(o.key, o.event.data["group"], o.event.data["group_size"]) for o in first}
    g = first[0].event.data["group"]
    assert groups == {(UAI, g, 2), (f"{UAI}/tni", g, 2), (other, g, 1)}
    second = await publish_changes(
        published, [(OUTILS, {(UAI, "tni"): {"enseignants": 4}})], source="/plateforme/test", causes={}
    )
    assert [(o.event.data["group"] > g, o.event.data["group_size"]) for o in second] == [(True, 1)]
    nothing = await publish_changes(
        published, [(OUTILS, {(UAI, "tni"): {"enseignants": 4}})], source="/plateforme/test", causes={}
    )
    assert nothing == []


@pytest.mark.parametrize("name", ["", "equipement.profils.v2/0350042F/lot-12/3", "x/0350042F/é/9"])
def test_the_stable_id_is_uuid5_of_the_url_namespace(name):
    assert stable_id(name) == str(uuid.uuid5(uuid.NAMESPACE_URL, name))


@given(st.text())
def test_the_stable_id_is_uuid5_of_any_text(name):
    """Alert ids and their events' ids are stable_id's too (ressources/lifecycle.py): any text a
    resource id may hold, 4-byte characters included, gives uuid5's id."""
    assert stable_id(name) == str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def test_a_negative_count_in_a_coverage_record_is_refused():
    """A share is counted / teachers: a negative count (a bug, or a forged record) would make an
    alert's coverage below 0, which the contract's alert does not allow. The record is refused."""
    built = ENSEIGNANTS.event(
        UAI, "", 1, {"enseignants": 3, "competences": {"3.4": [2, -1]}}, source="/plateforme/t", time=TIME
    )
    with pytest.raises(c.ContractError) as refused:
        PARSE(built.to_bytes(), ENSEIGNANTS.topic)
    assert refused.value.code == "donnees-invalides"


@pytest.mark.parametrize("topic", [c.CATALOGUE, c.REFERENTIEL])
@pytest.mark.parametrize(("derived", "entity", "content"), CASES[:1] + CASES[3:4], ids=["lot", "enseignants"])
def test_an_internal_type_on_a_partner_topic_is_unknown_to_ressources_as_to_every_service(
    topic, derived: Derived, entity, content
):
    """The contract knows no internal type: ressources, which reads some, calls one on a
    partner's topic `type-inconnu` as formation, equipement and the passerelle do (the same
    reason codes on every path), not `type-hors-topic`, which named them."""
    raw = derived.event(UAI, entity, 1, content, source="/ministere", time=TIME).to_bytes()
    for parse in (ressources_spec.parse, c.parse_event):
        with pytest.raises(c.ContractError) as refused:
            parse(raw, topic)
        assert refused.value.code == "type-inconnu", refused.value


def test_an_internal_type_on_another_internal_topic_stays_type_hors_topic():
    """On the platform's own topics the type is known: off its topic, the reason says which it takes."""
    raw = LOTS.event(UAI, TABLETTES.lot_id, 1, CASES[0][2], source="/plateforme/equipement", time=TIME).to_bytes()
    with pytest.raises(c.ContractError) as refused:
        ressources_spec.parse(raw, ENSEIGNANTS.topic)
    assert refused.value.code == "type-hors-topic", refused.value
