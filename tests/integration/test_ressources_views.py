"""The store's profiles and coverages, assembled by PostgreSQL (views.PROFIL_SQL, COUVERTURE_SQL)
and kept per UAI in `entrees` as batches arrive (as migration 0007 assembles them for a deployment
from before), equal those views.profils and views.couvertures assemble from the same records in Python, on
the real database: lots out of order, retired (quantity 0), without OS, a link or not, a UAI
with only retired lots or only a link, teachers or tools alone, a tool nobody holds."""

import asyncio
import random

from contracts import make_event
from contracts.internal import (
    COUVERTURE_ENSEIGNANTS,
    COUVERTURE_OUTIL,
    INTERNAL_PAYLOADS,
    PROFIL_CONNECTIVITE,
    PROFIL_LOT,
    ConnectiviteProfil,
    CouvertureEnseignants,
    CouvertureOutil,
    ProfilConnectivite,
    ProfilLot,
)
from helpers import eventually, lock_waiters, uai
from services.common.storage.db import create_pool, migrate
from services.ressources import views
from services.ressources.app import SPEC
from services.ressources.handlers import make_apply
from services.ressources.rules import Seuils
from services.ressources.store import RessourcesStore

SYSTEMS = [None, {"name": "iPadOS", "version": "12.5"}, {"name": "Windows", "version": "11.0.22631.1"}]
BROWSERS = [
    {"name": "Safari", "version": "17.1"},
    {"name": "Firefox", "version": "120"},
    {"name": "Chrome", "version": "1"},
]


def records(rng: random.Random, code: str) -> list:
    """A random mix of what equipement and formation publish about `code` (maybe nothing)."""
    out: list = []
    for n in rng.sample(range(12), rng.randrange(4)):  # lot ids out of order, some retired
        os = rng.choice(SYSTEMS)
        out.append(
            ProfilLot(
                uai=code,
                version=1 + n,
                lot_id=f"lot-{n}",
                kind=rng.choice(["tablette", "pc", "TNI"]),
                quantity=rng.choice([0, 1, 30]),
                os=os,
                browsers=rng.sample(BROWSERS, rng.randrange(3)) if os else [],
            )
        )
    if rng.random() < 0.5:
        out.append(
            ProfilConnectivite(uai=code, version=2, bandwidth_mbps=rng.choice([0, 2.5, 100]), ent=rng.random() < 0.5)
        )
    if rng.random() < 0.5:
        levels = sorted((rng.randrange(20) for _ in range(8)), reverse=True)
        competences = rng.choice([{}, {"3.4": levels}, {"3.4": levels, "1.1": [1, 0, 0, 0, 0, 0, 0, 0]}])
        out.append(CouvertureEnseignants(uai=code, version=3, enseignants=rng.randrange(30), competences=competences))
    for kind in rng.sample(["tni", "vpi", "casque"], rng.randrange(3)):
        out.append(CouvertureOutil(uai=code, version=4, kind=kind, enseignants=rng.choice([0, 3])))
    return out


TYPE = {model: type_ for type_, model in INTERNAL_PAYLOADS.items()}
"""Each internal record's event type, by its payload model."""


async def test_profiles_and_coverages_assembled_in_sql_equal_those_assembled_in_python(database_url):
    rng = random.Random(8)
    codes = [uai(f"{4400000 + n:07d}") for n in range(300)]
    data = [d for code in codes for d in records(rng, code)]
    # as the store read them before: by uai, type, entity (its collation: the database's)
    data.sort(key=lambda d: (d.uai, TYPE[type(d)], d.entity))
    as_records = [(TYPE[type(d)], d.uai, d.model_dump(mode="json")) for d in data]
    pool = await create_pool(database_url, "ressources")
    try:
        await migrate(pool, "ressources", SPEC.package_dir)
        async with pool.acquire() as conn:
            store = RessourcesStore(conn)
            events = [make_event(TYPE[type(d)], d, source="/plateforme/test") for d in data]
            rng.shuffle(events)  # in two batches: a UAI's `entrees` row made by one, completed by the other
            for half in (events[: len(events) // 2], events[len(events) // 2 :]):
                await store.assemble(await store.store_derived(half))
            profils, couvertures = await store.load_entrees(codes)

            # What migration 0007 assembles for a deployment from before equals what the store keeps.
            kept = await conn.fetch("SELECT * FROM entrees ORDER BY uai")
            migration = (SPEC.package_dir / "migrations" / "0007_entrees.sql").read_text()
            await conn.execute("DELETE FROM entrees")
            await conn.execute(migration[migration.index("INSERT INTO entrees") :])
            assert await conn.fetch("SELECT * FROM entrees ORDER BY uai") == kept
    finally:
        await pool.close()
    expected_profils = views.profils(r for r in as_records if r[0] in (PROFIL_LOT, PROFIL_CONNECTIVITE))
    expected_couvertures = views.couvertures(
        r for r in as_records if r[0] in (COUVERTURE_ENSEIGNANTS, COUVERTURE_OUTIL)
    )
    assert profils == expected_profils
    assert couvertures == expected_couvertures
    # every case drawn: some UAI without a record, with only retired lots, a link alone, a tool alone
    assert 0 < len(profils) < len(codes) and 0 < len(couvertures) < len(codes)
    assert any(not p.lots and p.connectivite for p in profils.values())
    assert any(not p.lots and not p.connectivite for p in profils.values())
    assert any(len(p.lots) > 1 for p in profils.values())
    assert any(c.outils and not c.competences for c in couvertures.values())


async def test_two_transactions_writing_records_of_one_uai_leave_its_row_with_both(database_url):
    """A lot and a link of one UAI, handled by two transactions at once (replicas on two
    partitions): the second assembles the UAI's row once it holds the UAI's lock, so after the
    first committed, and the row holds both records."""
    code = uai("4500001")
    lot = ProfilLot(uai=code, version=1, lot_id="tablettes", kind="tablette", quantity=30, os=None, browsers=[])
    link = ProfilConnectivite(uai=code, version=1, bandwidth_mbps=100, ent=True)
    pool = await create_pool(database_url, "ressources_concurrents")
    try:
        await migrate(pool, "ressources_concurrents", SPEC.package_dir)
        async with pool.acquire() as first, pool.acquire() as second:
            async with first.transaction():
                await APPLY(RessourcesStore(first), [make_event(PROFIL_LOT, lot, source="/plateforme/test")], set())
                later = asyncio.create_task(
                    _apply(second, make_event(PROFIL_CONNECTIVITE, link, source="/plateforme/test"))
                )
                await eventually(lambda: lock_waiters(pool), what="the second transaction waiting for the UAI")
            await later
        async with pool.acquire() as conn:
            profils, _ = await RessourcesStore(conn).load_entrees([code])
    finally:
        await pool.close()
    assert [lot.lot_id for lot in profils[code].lots] == ["tablettes"]
    assert profils[code].connectivite is not None and profils[code].connectivite.bandwidth_mbps == 100


async def test_a_profile_is_assembled_again_only_from_whole_groups(database_url):
    """A collectivité replaces a UAI's tablets by PCs and its link in one declaration batch:
    equipement publishes the three records as one group. While part of it is missing, the
    profile stays the former one; once the group is whole, it is the new one."""
    code = uai("4500002")

    def grouped(model, group: int, size: int, **fields):
        return make_event(
            TYPE[model], model(uai=code, group=group, group_size=size, **fields), source="/plateforme/test"
        )

    tablets = {"lot_id": "tablettes", "kind": "tablette", "os": None, "browsers": []}
    before = [
        grouped(ProfilLot, 7, 2, version=1, quantity=30, **tablets),
        grouped(ProfilConnectivite, 7, 2, version=1, bandwidth_mbps=2, ent=False),
    ]
    after = [
        grouped(ProfilLot, 9, 3, version=2, quantity=0, **tablets),
        grouped(ProfilLot, 9, 3, version=1, lot_id="pc", kind="pc", quantity=20, os=None, browsers=[]),
        grouped(ProfilConnectivite, 9, 3, version=2, bandwidth_mbps=100, ent=True),
    ]
    pool = await create_pool(database_url, "ressources_groupes")
    try:
        await migrate(pool, "ressources_groupes", SPEC.package_dir)
        seen = []
        for batch in ([before[0]], [before[1]], after[:1], after[1:2], after[2:]):
            async with pool.acquire() as conn, conn.transaction():
                store = RessourcesStore(conn)
                await store.assemble(await store.store_derived(batch))
                profils, _ = await store.load_entrees([code])
            p = profils.get(code)
            seen.append(p and ([lot.lot_id for lot in p.lots], p.connectivite and p.connectivite.bandwidth_mbps))
    finally:
        await pool.close()
    assert seen == [None, (["tablettes"], 2), (["tablettes"], 2), (["tablettes"], 2), (["pc"], 100)]


async def test_a_record_without_a_group_after_a_group_is_read_at_once(database_url):
    """During a rolling upgrade a producer from before groups may write after one that numbers
    them: its record cuts into a group that then would never be whole. The UAI's records of
    that family count as from before groups: the profile is assembled at once."""
    code = uai("4500003")
    lot = {"lot_id": "tablettes", "kind": "tablette", "quantity": 30, "os": None, "browsers": []}
    half = make_event(PROFIL_LOT, ProfilLot(uai=code, version=1, group=4, group_size=2, **lot), source="/plateforme/t")
    ungrouped = make_event(
        PROFIL_CONNECTIVITE, ProfilConnectivite(uai=code, version=1, bandwidth_mbps=8, ent=True), source="/plateforme/t"
    )
    pool = await create_pool(database_url, "ressources_sans_groupe")
    try:
        await migrate(pool, "ressources_sans_groupe", SPEC.package_dir)
        seen = []
        for batch in ([half], [ungrouped]):
            async with pool.acquire() as conn, conn.transaction():
                store = RessourcesStore(conn)
                await store.assemble(await store.store_derived(batch))
                profils, _ = await store.load_entrees([code])
            seen.append(code in profils and ([lot.lot_id for lot in profils[code].lots], profils[code].connectivite))
    finally:
        await pool.close()
    assert seen[0] is False, "half a group"
    assert seen[1] == (["tablettes"], ConnectiviteProfil(bandwidth_mbps=8, ent=True))


APPLY = make_apply(Seuils())
"""ressources' use case, as its consumer runs it on a batch."""


async def _apply(conn, event) -> None:
    async with conn.transaction():
        await APPLY(RessourcesStore(conn), [event], set())
