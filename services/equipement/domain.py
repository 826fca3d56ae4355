"""What equipement publishes of a lot or a connectivity, from the declared state. Pure.

One record per lot: a UAI may hold 2,000 lots (CONTRACTS.md, Limits), far more than one Kafka
record can carry, while one lot is bounded by the contract's field bounds. Contents are plain
JSON values, in the field order of the payload models (`contracts.internal`): the JSON encoder
writes them without calling back into the models.
"""

from typing import Any

from contracts import Connectivite, Logiciel, Lot


def _logiciel(software: Logiciel) -> dict[str, str]:
    return {"name": software.name, "version": software.version}


def lot_content(lot: Lot) -> dict[str, Any]:
    """The lot's record without uai, lot_id and version; quantity 0 says it is retired."""
    return {
        "kind": lot.kind,
        "quantity": lot.quantity,
        "os": None if lot.os is None else _logiciel(lot.os),
        "browsers": [_logiciel(b) for b in lot.browsers],
    }


def connectivite_content(link: Connectivite) -> dict[str, Any]:
    return {"bandwidth_mbps": link.bandwidth_mbps, "ent": link.ent}
