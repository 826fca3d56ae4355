"""A short, realistic scenario for the demo: what partners would send on a school morning.

The ministère publishes the référentiel entry of a collège and a resource, the GAR subscribes
the collège, the département declares old tablets: the platform raises
`equipement-incompatible`. The département then updates the tablets and installs a TNI: the
alert resolves. Events are plain CloudEvents JSON, as any partner's Kafka client would send.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer

import contracts as c

UAI = "0350042" + c.uai_check_letter("0350042")  # a collège of Ille-et-Vilaine (synthetic)
RESOURCE = "ark:/67375/demo-manuel-svt-cycle4"


def _event(type_: str, source: str, data: dict, subject: str) -> bytes:
    return json.dumps({
        "specversion": "1.0", "id": str(uuid.uuid4()), "source": source, "type": type_,
        "time": datetime.now(UTC).isoformat(), "subject": subject, "datacontenttype": "application/json",
        "data": data,
    }).encode()


def referentiel() -> list[tuple[str, str, bytes]]:
    return [(c.REFERENTIEL, UAI, _event(c.ETABLISSEMENT, "/ministere", {
        "uai": UAI, "nom": "Collège des Gayeulles", "type": "college", "statut": "public",
        "code_commune": "35238", "code_departement": "035", "code_academie": "14", "code_region": "53",
        "ouvert": True}, UAI))]


def old_tablets() -> list[tuple[str, str, bytes]]:
    return [(c.EQUIPEMENT, UAI, _lot("tablettes-6e", "tablette", 30, "12.5"))]


def catalogue() -> list[tuple[str, str, bytes]]:
    return [
        (c.CATALOGUE, RESOURCE, _event(c.RESSOURCE_PUBLIEE, "/ministere", {
            "resource_id": RESOURCE, "title": "Manuel numérique SVT cycle 4", "editor": "Éditions Exemple",
            "requirements": [[{"type": "os", "name": "iPadOS", "min_version": "15"},
                              {"type": "os", "name": "Windows", "min_version": "10"}]],
            "tools": [{"kind": "TNI", "min_quantity": 1}], "min_bandwidth_mbps": None, "needs_ent": False,
            "training": {"competences": [], "tools": []}}, RESOURCE)),
        (c.CATALOGUE, UAI, _event(c.ABONNEMENT, "/gar", {
            "resource_id": RESOURCE, "uai": UAI, "start": "2026-09-01", "end": None}, UAI)),
    ]


def fix() -> list[tuple[str, str, bytes]]:
    return [
        (c.EQUIPEMENT, UAI, _lot("tablettes-6e", "tablette", 30, "17.1")),
        (c.EQUIPEMENT, UAI, _event(c.LOT, "/collectivites/departements/035", {
            "uai": UAI, "lot_id": "tni-salle-12", "kind": "TNI", "quantity": 1, "os": None, "browsers": []}, UAI)),
    ]


def _lot(lot_id: str, kind: str, quantity: int, ipados: str) -> bytes:
    return _event(c.LOT, "/collectivites/departements/035", {
        "uai": UAI, "lot_id": lot_id, "kind": kind, "quantity": quantity,
        "os": {"name": "iPadOS", "version": ipados}, "browsers": [{"name": "Safari", "version": ipados}]}, UAI)


async def send(bootstrap: str, records: list[tuple[str, str, bytes]], prefix: str = "") -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for topic, key, value in records:
            await producer.send_and_wait(prefix + topic, value, key=key.encode(),
                                         headers=[("content-type", c.CONTENT_TYPE.encode())])
    finally:
        await producer.stop()
