"""What a partner writes by hand: a CloudEvent in structured JSON mode; and the partners of a
test's platform as they really connect (`deploy.local.partenaires`)."""

import json
import uuid
from collections.abc import Iterable

from deploy.identite import IdentiteLocale
from deploy.local.kafka import LocalKafka
from deploy.local.partenaires import Partenaires, Record
from deploy.local.processes import ServiceProcesses

HEADERS = [("content-type", b"application/cloudevents+json")]


def ce(type_: str, source: str, data: dict, minute: int, subject: str) -> bytes:
    """`type_` is `<domain>.<name>`, e.g. `equipement.lot`; minutes order events in time."""
    return json.dumps(
        {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": source,
            "type": f"fr.education.{type_}.v1",
            "time": f"2026-09-01T{8 + minute // 60:02d}:{minute % 60:02d}:00+02:00",
            "subject": subject,
            "datacontenttype": "application/json",
            "data": data,
        }
    ).encode()


def scratch_suivi(teacher: str, rectorat: str, minute: int) -> bytes:
    """`teacher` completed the Scratch module (competence 3.4 at level 3), as `rectorat` declares it."""
    data = {
        "teacher_id": teacher,
        "module_id": "scratch-3",
        "title": "Programmer avec Scratch",
        "dispositif": "magistere",
        "completed_on": "2026-10-01",
        "competences": [{"code": "3.4", "level": 3}],
        "tools": [],
    }
    return ce("formation.formation-suivie", rectorat, data, minute, teacher)


def partenaires(services: ServiceProcesses, kafka: LocalKafka, identite: IdentiteLocale, prefix: str) -> Partenaires:
    """Declarations posted to `services`' passerelle with `identite`'s tokens, the référentiel and
    the catalogue produced as ministere or gar."""
    return Partenaires(f"http://127.0.0.1:{services.ports['passerelle']}", identite.jeton, kafka.access_as, prefix)


async def declare(partners: Partenaires, records: Iterable[Record]) -> int:
    """`records` (topic, key, value) sent by their partners, every one accepted; how many."""
    sent = await partners.send(records)
    assert not sent.refused, f"{len(sent.refused)} refused by the passerelle, e.g. {sent.refused[:3]}"
    return sent.accepted
