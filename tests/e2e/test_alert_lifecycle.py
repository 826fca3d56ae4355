"""The whole platform: the three services as real processes, a partner's plain Kafka client
(kafka-python, not the project's code) in front, and a dashboard's consumer behind."""

import json
import time
import uuid

import asyncpg
import pytest
from kafka import KafkaConsumer, KafkaProducer

from deploy.local.processes import ServiceProcesses

pytestmark = pytest.mark.e2e

UAI = "0350005" + "ABCDEFGHJKLMNPRSTUVWXYZ"[350005 % 23]
RESOURCE = "ark:/67375/e2e-manuel-numerique"


def ce(type_: str, source: str, data: dict, minute: int, subject: str) -> bytes:
    return json.dumps({
        "specversion": "1.0", "id": str(uuid.uuid4()), "source": source, "type": type_,
        "time": f"2026-09-01T08:{minute:02d}:00+02:00", "subject": subject,
        "datacontenttype": "application/json", "data": data,
    }).encode()


def lot(lot_id: str, kind: str, quantity: int, os: dict | None, minute: int) -> bytes:
    return ce("fr.education.equipement.lot.v1", "/collectivites/departements/035",
              {"uai": UAI, "lot_id": lot_id, "kind": kind, "quantity": quantity, "os": os, "browsers": []}, minute, UAI)


@pytest.fixture
def platform(kafka, database_url, topic_prefix, tmp_path):
    procs = ServiceProcesses(
        {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "DATABASE_URL": database_url,
         "TOPIC_PREFIX": topic_prefix, "OUTBOX_POLL_MS": "200", "LOG_FORMAT": "json"},
        log_dir=tmp_path,
    )
    procs.start()
    try:
        procs.wait_healthy()
        yield procs
    finally:
        procs.stop()


def poll_alerts(consumer: KafkaConsumer, want, timeout: float = 60) -> list[dict]:
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            seen += [json.loads(r.value) for r in records]
        if want(seen):
            return seen
    raise AssertionError(f"alerts never matched; seen: {json.dumps(seen, indent=1)[:3000]}")


async def wait_stored(database_url: str, tables: tuple[str, ...]) -> None:
    """Until each service's table (`schema.table`) holds a row for UAI: services consume
    different topics, so a test that wants a given order across them waits for it."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + 60
        for table in tables:
            while not await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table} WHERE uai = $1)", UAI):
                assert time.monotonic() < deadline, f"{table} never stored {UAI}"
                time.sleep(0.1)
    finally:
        await conn.close()


@pytest.fixture
def producer(kafka):
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    yield producer
    producer.close()


@pytest.fixture
def alerts(kafka, topic_prefix):
    consumer = KafkaConsumer(topic_prefix + "alertes.compatibilite.v1", bootstrap_servers=kafka.bootstrap_servers,
                             auto_offset_reset="earliest", enable_auto_commit=False, group_id=None)
    yield consumer
    consumer.close()


async def test_incompatible_equipment_raises_then_a_fixing_lot_resolves(topic_prefix, database_url, platform, producer, alerts):
    headers = [("content-type", b"application/cloudevents+json")]

    def publish(topic: str, key: str, value: bytes) -> None:
        producer.send(topic_prefix + topic, value, key=key.encode(), headers=headers).get(timeout=10)

    publish("referentiel.etablissements.v1", UAI, ce("fr.education.referentiel.etablissement.v1", "/ministere", {
        "uai": UAI, "nom": "Collège Anne de Bretagne", "type": "college", "statut": "public", "code_commune": "35238",
        "code_departement": "035", "code_academie": "14", "code_region": "53", "ouvert": True}, 0, UAI))
    await wait_stored(database_url, ("equipement.etablissements", "ressources.etablissements"))
    publish("equipement.declarations.v1", UAI, lot("tablettes-6e", "tablette", 30, {"name": "iPadOS", "version": "12.5"}, 3))
    await wait_stored(database_url, ("ressources.profils",))
    publish("ressources.catalogue.v1", RESOURCE, ce("fr.education.ressources.ressource-publiee.v1", "/ministere", {
        "resource_id": RESOURCE, "title": "Manuel numérique de SVT", "editor": "Éditions test",
        "requirements": [[{"type": "os", "name": "iPad OS", "min_version": "15"},
                          {"type": "os", "name": "Microsoft Windows", "min_version": "10"}]],
        "tools": [{"kind": "TNI", "min_quantity": 1}], "min_bandwidth_mbps": None, "needs_ent": False,
        "training": {"competences": [], "tools": []}}, 1, RESOURCE))
    publish("ressources.catalogue.v1", UAI, ce("fr.education.ressources.abonnement.v1", "/gar", {
        "resource_id": RESOURCE, "uai": UAI, "start": "2026-09-01", "end": None}, 2, UAI))

    raised = poll_alerts(alerts, lambda s: any(a["type"].endswith("alerte-levee.v1") for a in s))
    levee = next(a for a in raised if a["type"] == "fr.education.alertes.alerte-levee.v1")
    assert levee["data"]["kind"] == "equipement-incompatible"
    assert levee["subject"] == f"{UAI}/{RESOURCE}" and levee["source"] == "/plateforme/ressources"
    assert {(r["code"], r["detail"]) for r in levee["data"]["reasons"]} >= {("os-version", "iPadOS 12.5 < 15"),
                                                                              ("outil-manquant", "TNI: 0 < 1")}
    assert levee["data"]["responsable"] == {"type": "departement", "code": "035"}
    assert (levee["data"]["compatible"], levee["data"]["devices"]) == (0, 30)

    # The collectivité updates the tablets and installs a TNI: the alert resolves.
    publish("equipement.declarations.v1", UAI, lot("tablettes-6e", "tablette", 30, {"name": "iPadOS", "version": "17.1"}, 4))
    publish("equipement.declarations.v1", UAI, lot("tni-salle-12", "TNI", 1, None, 5))
    seen = poll_alerts(alerts, lambda s: any(a["type"].endswith("alerte-resolue.v1") for a in s))
    resolue = next(a for a in seen if a["type"] == "fr.education.alertes.alerte-resolue.v1")
    assert resolue["data"]["alert_id"] == levee["data"]["alert_id"]
    assert resolue["data"]["resolved_at"] is not None
    levees = [a for a in raised + seen if a["type"].endswith("alerte-levee.v1")]
    assert len(levees) == 1, "one raise for one cause"
    assert {a["data"]["kind"] for a in raised + seen} == {"equipement-incompatible"}
