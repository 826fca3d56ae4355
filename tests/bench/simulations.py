"""The simulations at national scale (issue 11: within 2 s at 60,000 établissements).

Setup, timed for context: ressources as a real process on its own stage; its database filled
through its own store (the référentiel, and per établissement what equipement and formation
would have published: a lot of tablets on iPadOS 12.5 or 17.1 with Safari, a lot of PCs on
Windows 10 or 11 with Firefox and Chrome of several versions, a link from 2 to 100 Mbit/s, 20
teachers with a spread of CRCN 3.4 levels), every établissement subscribed to one resource, that
resource published as simulated (no alert held: a pair the lots leave failing raises). Not through Kafka: what
is measured reads the database, and the national figure (national.py) already times the path
there.

Measured over HTTP, as a dashboard asks, each REPEAT times (the first one cold):
- POST /simulations/ressource, a resource with two requirement groups, tools, bandwidth, ENT
  and training, over the subscribed établissements, then over every open one;
- POST /simulations/equipement, two lots for each lycée of one région (up to 2,000 lots).
"""

import statistics
import time

import httpx

import contracts as c
from contracts import Abonnement, Etablissement, Logiciel, RessourcePubliee, make_event
from contracts.internal import (
    COUVERTURE_ENSEIGNANTS,
    PROFIL_CONNECTIVITE,
    PROFIL_LOT,
    CouvertureEnseignants,
    ProfilConnectivite,
    ProfilLot,
)
from deploy.referentiel.generator import generate
from harness import Row, Runtime, children, peak_rss_mb, running
from records import START, T0
from services.common.storage import referentiel
from services.common.storage.db import create_pool
from services.ressources.store import RessourcesStore

RESOURCE = "ark:/67375/bench-simulation"
SEED = 11
REPEAT = 3
TARGET_SECONDS = 2.0
CHUNK = 5000
MAX_LOTS = 2000
SIMULATED = {
    "resource_id": RESOURCE,
    "title": "Bench",
    "editor": "Bench",
    "requirements": [
        [{"type": "os", "name": "iPadOS", "min_version": "15"}, {"type": "os", "name": "Windows", "min_version": "11"}],
        [
            {"type": "browser", "name": "Safari", "min_version": "16"},
            {"type": "browser", "name": "Firefox", "min_version": "120"},
            {"type": "browser", "name": "Chrome", "min_version": "125"},
        ],
    ],
    "tools": [{"kind": "tni", "min_quantity": 1}],
    "min_bandwidth_mbps": 10,
    "needs_ent": True,
    "training": {"competences": [{"code": "3.4", "level": 2}], "tools": []},
}


def derived(i: int, e: Etablissement, distinct: bool = False) -> list:
    """What equipement and formation would have published for the i-th établissement; `distinct`:
    its PCs counted 8 + i, so that no two établissements hold equal inputs (else 8 + i % 5: the
    60,000 hold 120 distinct sets of inputs)."""
    tablets = ProfilLot(
        uai=e.uai,
        version=1,
        lot_id="tablettes",
        kind="tablette",
        quantity=30,
        os=Logiciel(name="iPadOS", version="12.5" if i % 2 else "17.1"),
        browsers=[Logiciel(name="Safari", version="15.6" if i % 2 else "17.1")],
    )
    pcs = ProfilLot(
        uai=e.uai,
        version=1,
        lot_id="pc",
        kind="pc",
        quantity=8 + (i if distinct else i % 5),
        os=Logiciel(name="Windows", version="10" if i % 3 else "11"),
        browsers=[
            Logiciel(name="Firefox", version=f"{110 + i % 20}.0"),
            Logiciel(name="Chrome", version=f"{115 + i % 15}.0.1"),
        ],
    )
    link = ProfilConnectivite(uai=e.uai, version=1, bandwidth_mbps=(2, 8, 20, 100)[i % 4], ent=i % 7 != 0)
    levels = [20, 4 + i % 12, 2, 0, 0, 0, 0, 0]
    teachers = CouvertureEnseignants(uai=e.uai, version=1, enseignants=20, competences={"3.4": levels})
    source = "/plateforme/equipement"
    return [
        make_event(PROFIL_LOT, tablets, source=source, subject=f"{e.uai}/tablettes", time=T0),
        make_event(PROFIL_LOT, pcs, source=source, subject=f"{e.uai}/pc", time=T0),
        make_event(PROFIL_CONNECTIVITE, link, source=source, time=T0),
        make_event(COUVERTURE_ENSEIGNANTS, teachers, source="/plateforme/formation", time=T0),
    ]


async def fill(database_url: str, etabs: list[Etablissement], distinct: bool) -> None:
    """ressources' tables as its consumer would have written them, by chunks of établissements."""
    pool = await create_pool(database_url, "ressources")
    try:
        for start in range(0, len(etabs), CHUNK):
            chunk = list(enumerate(etabs))[start : start + CHUNK]
            async with pool.acquire() as conn, conn.transaction():
                store = RessourcesStore(conn)
                await referentiel.apply(
                    conn, [make_event(c.ETABLISSEMENT, e, source="/ministere", time=T0) for _, e in chunk]
                )
                await store.assemble(
                    sorted(await store.store_derived([record for i, e in chunk for record in derived(i, e, distinct)]))
                )
                subscriptions = [Abonnement(resource_id=RESOURCE, uai=e.uai, start=START) for _, e in chunk]
                await store.store_abonnements(
                    [make_event(c.ABONNEMENT, a, source="/gar", time=T0) for a in subscriptions]
                )
        published = RessourcePubliee.model_validate(SIMULATED)
        async with pool.acquire() as conn:
            await RessourcesStore(conn).store_catalogue(
                [make_event(c.RESSOURCE_PUBLIEE, published, source="/ministere", time=T0)]
            )
    finally:
        await pool.close()


def lots_of_one_region(etabs: list[Etablissement]) -> list[dict]:
    """Two lots per lycée of the first lycée's région: the tablets renewed, the PCs on Windows 11."""
    lycees = [e for e in etabs if e.type == "lycee"]
    region = lycees[0].code_region
    chosen = [e for e in lycees if e.code_region == region][: MAX_LOTS // 2]
    tablets = {"lot_id": "tablettes", "kind": "tablette", "quantity": 30, "os": {"name": "iPadOS", "version": "17.1"}}
    pcs = {"lot_id": "pc", "kind": "pc", "quantity": 10, "os": {"name": "Windows", "version": "11"}}
    return [{**lot, "uai": e.uai} for e in chosen for lot in (tablets, pcs)]


async def timed(client: httpx.AsyncClient, path: str, **kw) -> tuple[list[float], dict]:
    """REPEAT answers' seconds, and the last answer."""
    seconds, answer = [], {}
    for _ in range(REPEAT):
        started = time.monotonic()
        response = await client.post(path, **kw)
        seconds.append(time.monotonic() - started)
        if response.status_code != 200:
            raise RuntimeError(f"{path}: {response.status_code} {response.text[:200]}")
        answer = response.json()
    return seconds, answer


def row(figure: str, seconds: list[float], what: str) -> Row:
    worst = max(seconds)
    return Row(
        figure,
        f"{statistics.median(seconds):.2f} s median, {worst:.2f} s worst of {len(seconds)} ({what})",
        f"first (cold) {seconds[0]:.2f} s",
        f"<= {TARGET_SECONDS:g} s",
        worst <= TARGET_SECONDS,
    )


async def figure(runtime: Runtime, count: int, distinct: bool) -> list[Row]:
    inputs = "every one's inputs distinct" if distinct else "120 distinct sets of inputs"
    print(f"\n== simulations: {count:,} établissements ({inputs}), ressources' database filled through its store")
    etabs = list(generate(count, SEED))
    stage = await runtime.stage("simulations")
    async with running(stage, ("ressources",)) as procs:
        started = time.monotonic()
        await fill(stage.database_url, etabs, distinct)
        print(f"  setup: {count:,} établissements stored in {time.monotonic() - started:.1f} s")
        url = f"http://127.0.0.1:{procs.ports['ressources']}"
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            subscribed, answer = await timed(client, "/simulations/ressource", json=SIMULATED)
            total = answer["total"]
            print(f"  ressource, subscribed: {[f'{s:.2f}' for s in subscribed]} s; total {total}")
            print(
                "  top motifs: " + "; ".join(f"{m['detail']} ({m['etablissements']:,})" for m in answer["motifs"][:4])
            )
            everywhere, answer = await timed(
                client, "/simulations/ressource", params={"population": "ouverts"}, json=SIMULATED
            )
            print(f"  ressource, every open one: {[f'{s:.2f}' for s in everywhere]} s ({answer['total']['evalues']:,})")
            lots = lots_of_one_region(etabs)
            equipement, answer = await timed(client, "/simulations/equipement", json={"lots": lots})
            changes = f"{len(answer['levees']):,} raised, {len(answer['resolues']):,} resolved"
            print(f"  equipement, {len(lots):,} lots: {[f'{s:.2f}' for s in equipement]} s ({changes})")
        # What a container holding ressources counts: the service and its simulation workers.
        service = procs.process("ressources").pid
        workers = children(service)
        peaks = [peak_rss_mb(pid) for pid in [service, *workers]]
        print(
            f"  peak RSS: ressources {peaks[0]:.0f} MB, its {len(workers)} worker processes "
            f"{' + '.join(f'{mb:.0f}' for mb in peaks[1:]) or '0'} MB: {sum(peaks):.0f} MB in all"
        )
    each = ", each distinct" if distinct else ""
    return [
        row(f"simulation ressource, {total['evalues']:,} subscribed{each}", subscribed, "abonnes"),
        row(f"simulation ressource, every open établissement of {count:,}{each}", everywhere, "ouverts"),
        row(f"simulation equipement, {len(lots):,} lots of one région", equipement, changes),
    ]
