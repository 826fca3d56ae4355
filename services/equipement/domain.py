"""The equipment profile of one UAI, from the lots and connectivity held for it. Pure."""

from collections.abc import Iterable

from contracts.internal import ConnectiviteProfil, LotProfil
from contracts import Logiciel


def lot_profil(lot_id: str, kind: str, quantity: int, os: dict | None, browsers: list[dict]) -> LotProfil:
    return LotProfil(
        lot_id=lot_id,
        kind=kind,
        quantity=quantity,
        os=Logiciel(**os) if os else None,
        browsers=[Logiciel(**b) for b in browsers],
    )


def profil_content(lots: Iterable[LotProfil], connectivite: ConnectiviteProfil | None) -> dict:
    """The profile without its version: lots in service (quantity > 0), in a stable order,
    so that equal content means no change and no publication."""
    in_service = sorted((lot for lot in lots if lot.quantity > 0), key=lambda lot: lot.lot_id)
    return {
        "lots": [lot.model_dump(mode="json") for lot in in_service],
        "connectivite": connectivite.model_dump(mode="json") if connectivite else None,
    }
