"""How long ressources takes to re-evaluate every pair of one resource subscribed by N
établissements (default 5,000), on a real PostgreSQL.

    ./dev shell tests/bench/bench_reevaluation.py [--etablissements 5000] [--repeat 3] [--chunk 500]

Runs the service's own `apply` on a `ressource-publiee` event inside a transaction, as the
consumer does for a batch (it records the fan-out), then the fan-out chunk after chunk, each
chunk one transaction, as the service's background re-evaluation does; prints three figures
measured in the same run, and the peak RSS of the bench process (PostgreSQL apart):
- first publication: every pair evaluated, alerts raised for half of them;
- republication with stricter requirements: every pair re-evaluated, alerts raised/resolved;
- baseline, republication with the same requirements: every pair re-evaluated, nothing changes.
"""

import argparse
import asyncio
import gc
import json
import resource
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import contracts as c
import contracts.internal as internal
from contracts import RessourcePubliee, make_event
from deploy.local.postgres import LocalPostgres
from services.common.runtime.lifecycle import GC_THRESHOLDS
from services.common.runtime.logs import configure_logging
from services.common.storage.db import create_pool, migrate
from services.ressources import views
from services.ressources.handlers import make_apply, reevaluate_chunk
from services.ressources.rules import Seuils
from services.ressources.store import RessourcesStore

RID = "ark:/67375/bench"
T0 = datetime(2026, 9, 1, tzinfo=UTC)


def uai(n: int) -> str:
    digits = f"{35 * 100000 + n:07d}"
    return digits + c.uai_check_letter(digits)


async def seed(conn, n: int) -> None:
    uais = [uai(i) for i in range(n)]
    await conn.copy_records_to_table(
        "etablissements",
        records=[(u, f"Collège {u}", "college", "public", "35238", "035", "14", "53", True, T0) for u in uais],
        columns=[*c.Etablissement.model_fields, "event_time"],
    )
    # Half the établissements run iPadOS 12.5 (incompatible with >= 15), half iPadOS 17.
    recus: list[tuple[str, str, str, dict]] = []
    for i, u in enumerate(uais):
        lot = {
            "lot_id": "L1",
            "kind": "tablette",
            "quantity": 30,
            "browsers": [],
            "os": {"name": "iPadOS", "version": "12.5" if i % 2 else "17.1"},
        }
        recus += [
            (internal.PROFIL_LOT, u, "L1", lot),
            (internal.PROFIL_CONNECTIVITE, u, "", {"bandwidth_mbps": 50.0, "ent": True}),
            (
                internal.COUVERTURE_ENSEIGNANTS,
                u,
                "",
                {"enseignants": 40, "competences": {"3.4": [30, 25, 20, 10, 5, 0, 0, 0]}},
            ),
            (internal.COUVERTURE_OUTIL, u, "tni", {"kind": "tni", "enseignants": 30}),
        ]
    await conn.executemany(
        "INSERT INTO recus (type, uai, entity, version, content) VALUES ($1, $2, $3, 1, $4::jsonb)",
        [(t, u, e, json.dumps({"uai": u, "version": 1, **content})) for t, u, e, content in recus],
    )
    await conn.execute(views.ENTREES_SQL, uais)  # as store_derived keeps them
    await conn.copy_records_to_table(
        "abonnements",
        records=[(RID, u, T0.date(), None, T0) for u in uais],
        columns=["resource_id", "uai", "start", "end", "event_time"],
    )


def publication(minute: int, min_version: str) -> c.CloudEvent:
    data = RessourcePubliee(
        resource_id=RID,
        title="Bench",
        editor="E",
        requirements=[[c.Exigence(type="os", name="iPadOS", min_version=min_version)]],
        training=c.Formation(competences=[c.Competence(code="3.4", level=3)]),
    )
    return make_event(c.RESSOURCE_PUBLIEE, data, source="/ministere", time=T0 + timedelta(minutes=minute))


def _alerts(outgoing: list) -> int:
    """Alert events on the stream (each with its twin on its table, alertes.etat.v1)."""
    return sum(1 for o in outgoing if o.topic == c.ALERTES)


async def timed(pool, apply, event, chunk: int) -> tuple[float, int]:
    start = time.perf_counter()
    async with pool.acquire() as conn, conn.transaction():
        emitted = _alerts((await apply(RessourcesStore(conn), [event], set())).outgoing)
    while True:
        async with pool.acquire() as conn, conn.transaction():
            done = await reevaluate_chunk(RessourcesStore(conn), Seuils(), chunk)
        if done is None:
            return time.perf_counter() - start, emitted
        emitted += _alerts(done.outgoing)


async def main(n: int, repeat: int, chunk: int) -> None:
    with tempfile.TemporaryDirectory(prefix="feo-bench-") as tmp, LocalPostgres(Path(tmp)) as pg:
        url = await pg.create_database("bench")
        pool = await create_pool(url, "ressources")
        await migrate(pool, "ressources", Path(__file__).resolve().parents[2] / "services" / "ressources")
        async with pool.acquire() as conn:
            await seed(conn, n)
        gc.collect()  # the collector set as the service sets it once started (lifecycle.Service.run)
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        apply = make_apply(Seuils())
        minute = 0
        rows: dict[str, list[tuple[float, int]]] = {
            "first publication (raise)": [],
            "stricter requirements (raise/resolve)": [],
            "same requirements (baseline, no change)": [],
        }
        for _ in range(repeat):
            async with pool.acquire() as conn:
                await conn.execute("TRUNCATE alertes, ressources, outbox, inbox")
            for label, version in zip(rows, ("15", "17.2", "17.2"), strict=True):
                minute += 1
                seconds, emitted = await timed(pool, apply, publication(minute, version), chunk)
                rows[label].append((seconds, emitted))
        await pool.close()
    print(
        f"ressources re-evaluation of one resource subscribed by {n:,} établissements "
        f"(chunks of {chunk} UAIs, {repeat} runs, median)"
    )
    for label, runs in rows.items():
        seconds = statistics.median(s for s, _ in runs)
        print(f"  {label:42s} {seconds * 1000:8.0f} ms  {n / seconds:8.0f} pairs/s  events emitted: {runs[-1][1]}")
    print(f"  peak RSS of the bench process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--etablissements", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=500, help="UAIs per re-evaluation transaction")
    args = parser.parse_args()
    configure_logging("ressources")  # INFO, as the service runs
    asyncio.run(main(args.etablissements, args.repeat, args.chunk))
