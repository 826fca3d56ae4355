"""The alerts table against the real PostgreSQL: an open alert whose content changes is written
again in its page without touching an index (a HOT update), the alerts held before the migration
that made it so included, and the list's filters follow the content they are computed from."""

import json

from services.common.storage import db
from services.common.storage.db import create_pool, migrate
from services.ressources.app import SPEC
from services.ressources.queries import AlertFilter
from services.ressources.store import AlertRow, RessourcesStore

HOT = "ressources/0017_alertes_mises_a_jour_hot.sql"
ALERTS = 400


def _alert(i: int, detail: str, academie: str = "14") -> str:
    uai = f"{i:07d}A"
    return json.dumps(
        {
            "alert_id": f"alerte-{i}",
            "uai": uai,
            "resource_id": "ark:/1/r",
            "kind": "equipement-incompatible",
            "reasons": [{"code": "os-version", "detail": detail}],
            "code_academie": academie,
            "code_departement": "035",
            "responsable": {"type": "departement", "code": "035"},
            "compatible": 0,
            "devices": 12,
            "coverage": None,
            "raised_at": "2026-12-05T20:00:00.123456Z",
        }
    )


async def _listed(pool, f: AlertFilter) -> set[str]:
    where, args = f.where()
    return {r["alert_id"] for r in await pool.fetch(f"SELECT alert_id FROM alertes{where}", *args)}


async def test_held_alerts_whose_content_changes_are_rewritten_in_their_pages_and_stay_listed_where_they_are(
    database_url, monkeypatch
):
    every = db._migration_files
    monkeypatch.setattr(db, "_migration_files", lambda d: [m for m in every(d) if m[0] != HOT])
    pool = await create_pool(database_url, "ressources")
    try:
        await migrate(pool, "ressources", SPEC.package_dir)
        store = RessourcesStore(pool)
        await store.save_alertes([AlertRow(_alert(i, "iPadOS 12.5 < 15"), True, 1) for i in range(ALERTS)])
        monkeypatch.setattr(db, "_migration_files", every)
        await migrate(pool, "ressources", SPEC.package_dir)  # the alerts above held before it

        async with pool.acquire() as conn, conn.transaction():
            changed = [AlertRow(_alert(i, "iPadOS 12.5 < 16"), True, 1) for i in range(ALERTS)]
            await RessourcesStore(conn).save_alertes(changed)
            hot = await conn.fetchval("SELECT pg_stat_get_xact_tuples_hot_updated('alertes'::regclass)")
            updated = await conn.fetchval("SELECT pg_stat_get_xact_tuples_updated('alertes'::regclass)")
        assert updated == ALERTS
        # Before: none (three indexes read the content, every version wrote its eight entries again).
        assert hot >= 0.9 * ALERTS, f"{hot} of {ALERTS} updates were HOT"
        stored = await pool.fetchval("SELECT alerte->'reasons'->0->>'detail' FROM alertes WHERE alert_id = 'alerte-7'")
        assert stored == "iPadOS 12.5 < 16"

        everyone = {f"alerte-{i}" for i in range(ALERTS)}
        assert await _listed(pool, AlertFilter(code_academie="14", state="open")) == everyone
        assert await _listed(pool, AlertFilter(responsable_type="departement", responsable_code="035")) == everyone
        # An établissement moved to another académie: its alert is listed there, no longer here.
        await store.save_alertes([AlertRow(_alert(3, "iPadOS 12.5 < 16", academie="02"), True, 1)])
        assert await _listed(pool, AlertFilter(code_academie="02")) == {"alerte-3"}
        assert await _listed(pool, AlertFilter(code_academie="14")) == everyone - {"alerte-3"}
    finally:
        await pool.close()
