"""What equipement publishes of a lot or a connectivity, from the declared state. Pure.

One record per lot: a UAI may hold 2,000 lots (CONTRACTS.md, Limits), far more than one Kafka
record can carry, while one lot is bounded by the contract's field bounds. A content holds the
values as the validated event has them (the OS and browsers as `Logiciel` models): the JSON
encoder writes them as they are, nothing is copied into new models.
"""

from typing import Any

from contracts import Connectivite, Lot


def lot_content(lot: Lot) -> dict[str, Any]:
    """The lot's record without uai, lot_id and version, in `ProfilLot`'s field order; quantity 0
    says it is retired."""
    return {"kind": lot.kind, "quantity": lot.quantity, "os": lot.os, "browsers": lot.browsers}


def connectivite_content(link: Connectivite) -> dict[str, Any]:
    return {"bandwidth_mbps": link.bandwidth_mbps, "ent": link.ent}
