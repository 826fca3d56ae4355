"""What a partner writes by hand: a CloudEvent in structured JSON mode."""

import json
import uuid

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
