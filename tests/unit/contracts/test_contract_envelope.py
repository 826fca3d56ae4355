"""The CloudEvents envelope: declarants (`source`), events the platform makes, their bytes."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

import contracts as c

LOT = c.Lot(
    uai="0350122T", lot_id="glpi-42", kind="tablette", quantity=30, os=c.Logiciel(name="iPadOS", version="15.4")
)
COMMUNE = "/collectivites/communes/35016"


@pytest.mark.parametrize(
    ("source", "kind", "code"),
    [
        ("/rectorats/14", "rectorat", "14"),
        ("/collectivites/communes/35016", "commune", "35016"),
        ("/collectivites/communes/2A004", "commune", "2A004"),
        ("/collectivites/departements/035", "departement", "035"),
        ("/collectivites/departements/02B", "departement", "02B"),
        ("/collectivites/departements/974", "departement", "974"),
        ("/collectivites/regions/53", "region", "53"),
        ("/ministere", "ministere", None),
        ("/gar", "gar", None),
        ("/plateforme/ressources", "plateforme", "ressources"),
        ("/plateforme/" + "s" * 64, "plateforme", "s" * 64),
    ],
)
def test_each_source_form_names_its_declarant(source, kind, code):
    assert c.parse_source(source) == c.Declarant(kind, code)


@pytest.mark.parametrize(
    "source",
    [
        "/rectorats/1", "/rectorats/014", "/rectorats/", "/rectorats/14/", "rectorats/14",
        "/collectivites/communes/3501", "/collectivites/communes/2C004",
        "/collectivites/departements/35", "/collectivites/departements/2A",
        "/collectivites/regions/5", "/collectivites/regions/053",
        "/ministere/", "/Ministere", "/gar/x", "/plateforme/", "/plateforme/Ressources",
        "https://ac-rennes.fr", "", "/rectorats/14\n", "/plateforme/" + "s" * 65,
    ],
)  # fmt: skip
def test_anything_else_is_not_a_source(source):
    with pytest.raises(ValueError, match="source"):
        c.parse_source(source)


def test_refused_sources_leave_nothing_behind():
    """`parse_source` keeps the declarants it read (a few hundred send millions of events): a
    `/plateforme/…` source of any length was one of them, refused or not, and distinct ones of
    250,000 characters took the passerelle's memory past its limit. A service's name is a name:
    64 characters at most, the others refused and not kept."""
    c.parse_source.cache_clear()  # a full cache would keep its size whatever it takes in
    kept = c.parse_source.cache_info().currsize
    for n in range(20):
        with pytest.raises(ValueError, match="source"):
            c.parse_source("/plateforme/" + "s" * 250_000 + str(n))
    assert c.parse_source.cache_info().currsize == kept


def test_make_event_fills_id_time_and_subject_from_the_payload():
    event = c.make_event(c.LOT, LOT, source=COMMUNE)
    assert (event.specversion, event.type, event.subject, event.datacontenttype) == (
        "1.0", c.LOT, "0350122T", "application/json"
    )  # fmt: skip
    assert len(event.id) == 36 and event.time.tzinfo is not None
    assert c.parse_source(event.source) == c.Declarant("commune", "35016")
    assert event.data is LOT


def test_to_bytes_is_compact_json_that_parses_back_to_the_same_event():
    paris = timezone(timedelta(hours=1))
    event = c.make_event(c.LOT, LOT, source=COMMUNE, id="e-1", time=datetime(2024, 3, 1, 10, tzinfo=paris))
    raw = event.to_bytes()
    assert raw.startswith(b'{"specversion":"1.0","id":"e-1","source":"/collectivites/communes/35016"')
    assert b'"time":"2024-03-01T10:00:00+01:00"' in raw and b'"quantity":30' in raw and b", " not in raw
    assert c.parse_event(raw, c.EQUIPEMENT) == event


def test_dates_serialize_as_iso_8601():
    abonnement = c.Abonnement(resource_id="ark:/1", uai="0350122T", start=datetime(2023, 9, 1).date())
    event = c.make_event(c.ABONNEMENT, abonnement, source="/gar", time=datetime(2024, 1, 1, tzinfo=UTC))
    raw = event.to_bytes()
    assert b'"start":"2023-09-01","end":null' in raw and b'"time":"2024-01-01T00:00:00Z"' in raw


def test_make_event_refuses_a_naive_time():
    with pytest.raises(ValidationError, match="timezone"):
        c.make_event(c.LOT, LOT, source=COMMUNE, time=datetime(2024, 3, 1, 10))


def test_make_event_refuses_a_bad_source():
    with pytest.raises(ValidationError, match="source"):
        c.make_event(c.LOT, LOT, source="/collectivites/communes/35")


def test_make_event_refuses_a_payload_of_another_type():
    with pytest.raises(TypeError):
        c.make_event(c.CONNECTIVITE, LOT, source=COMMUNE)


def test_alert_subject_is_uai_slash_resource():
    alert = c.AlerteLevee(
        alert_id="a-1", uai="0350122T", resource_id="ark:/1", kind="ent-indisponible", code_academie="14",
        code_departement="035", compatible=0, devices=0, raised_at=datetime(2024, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    assert c.make_event(c.ALERTE_LEVEE, alert, source="/plateforme/ressources").subject == "0350122T/ark:/1"


def test_dlq_topic_and_public_topics():
    assert c.dlq(c.EQUIPEMENT) == "equipement.declarations.v1.dlq"
    assert c.PUBLIC_TOPICS == (c.REFERENTIEL, c.FORMATION, c.EQUIPEMENT, c.CATALOGUE, c.ALERTES, c.ALERTES_ETAT)
    assert c.CONTENT_TYPE == "application/cloudevents+json"


def test_every_type_is_on_exactly_one_topic_of_its_domain():
    placed = [t for types in c.TOPIC_TYPES.values() for t in types]
    assert sorted(placed) == sorted(c.PAYLOADS)
    for topic, types in c.TOPIC_TYPES.items():
        for type in types:
            assert type.startswith(f"fr.education.{topic.split('.')[0]}.") and type.endswith(".v1")
