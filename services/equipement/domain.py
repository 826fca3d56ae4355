"""What equipement publishes of a lot or a connectivity, from the declared state. Pure.

One record per lot: a UAI may hold 2,000 lots (CONTRACTS.md, Limits), far more than one Kafka
record can carry, while one lot is bounded by the contract's field bounds.
"""

from contracts import Connectivite, Lot


def lot_content(lot: Lot) -> dict:
    """The lot's record without uai, lot_id and version; quantity 0 says it is retired."""
    return lot.model_dump(mode="json", include={"kind", "quantity", "os", "browsers"})


def connectivite_content(link: Connectivite) -> dict:
    return link.model_dump(mode="json", include={"bandwidth_mbps", "ent"})
