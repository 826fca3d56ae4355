"""The SQL store assembles a UAI's profile and coverage from groups as the in-memory store does
(tests/unit/services/memory_stores.py, which models ENTREES_SQL and its rule for records from
before groups), on the real database, whatever the batches.

Random transactions of formation and equipement for three UAIs publish records (built here with
`contracts.internal`'s models), each numbering its groups from its own sequence as each
producer's schema does (so a UAI's coverage and its profile may have groups of equal numbers).
The records go to ressources in random batches that keep each UAI's order (a UAI's records
share a partition), some delivered a second time (at least once). Both stores receive every
batch, the SQL one in a transaction of its own (`store_derived`, then `assemble`, as the use
case does); after each, the profiles and coverages the SQL store reads equal the memory store's.

Two runs: producers that all number their groups; then a rolling upgrade, where some
transactions come from a producer from before groups (records without `group`), whose records
make their family ungrouped (store.store_derived)."""

import importlib.util
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts import CloudEvent, make_event
from contracts.internal import (
    INTERNAL_PAYLOADS,
    CouvertureEnseignants,
    CouvertureOutil,
    ProfilConnectivite,
    ProfilLot,
)
from helpers import uai
from services.common.storage.db import create_pool, migrate
from services.ressources import views
from services.ressources.app import SPEC
from services.ressources.store import RessourcesStore


def _memory_stores() -> Any:
    """tests/unit/services/memory_stores.py (on sys.path only for the unit tests)."""
    if "memory_stores" not in sys.modules:
        path = Path(__file__).parents[1] / "unit" / "services" / "memory_stores.py"
        spec = importlib.util.spec_from_file_location("memory_stores", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["memory_stores"] = module
        spec.loader.exec_module(module)
    return sys.modules["memory_stores"]


CODES = [uai(f"{4600000 + n:07d}") for n in range(3)]
KINDS = ["tni", "vpi", "casque"]
LOT_IDS = ["lot-a", "lot-b", "lot-c", "lot-d"]  # ascii lower case: the database's collation sorts them as Python


@dataclass
class Producer:
    """One producer's keys: their versions, and the number of its last group."""

    name: str
    versions: dict[tuple[str, str], int] = field(default_factory=dict)
    groups: int = 0


def changed_records(rng: random.Random, producer: Producer, code: str) -> list[Any]:
    """One to three records of `code` a transaction of the producer publishes (group fields unset)."""
    out: list[Any] = []
    if producer.name == "formation":
        entities = rng.sample(["", *KINDS], rng.randint(1, 3))
    else:
        entities = rng.sample(["", *LOT_IDS], rng.randint(1, 3))
    for entity in sorted(entities):
        version = producer.versions.get((code, entity), 0) + 1
        producer.versions[(code, entity)] = version
        if producer.name == "formation" and entity == "":
            levels = sorted((rng.randrange(6) for _ in range(8)), reverse=True)
            out.append(
                CouvertureEnseignants(
                    uai=code, version=version, enseignants=rng.randrange(6), competences={"3.4": levels}
                )
            )
        elif producer.name == "formation":
            out.append(CouvertureOutil(uai=code, version=version, kind=entity, enseignants=rng.choice([0, 1, 4])))
        elif entity == "":
            out.append(
                ProfilConnectivite(
                    uai=code, version=version, bandwidth_mbps=rng.choice([0.5, 8, 100]), ent=rng.random() < 0.5
                )
            )
        else:
            out.append(
                ProfilLot(
                    uai=code, version=version, lot_id=entity, kind="tablette", quantity=rng.choice([0, 1, 30]), os=None
                )
            )
    return out


TYPE = {model: type_ for type_, model in INTERNAL_PAYLOADS.items()}
"""Each internal record's event type, by its payload model."""


def partitions(rng: random.Random, transactions: int, ungrouped_share: float) -> dict[str, list[CloudEvent]]:
    """Per UAI, the records of `transactions` random transactions in the order they committed.
    A transaction is formation's or equipement's, about one or two UAIs; with the chance
    `ungrouped_share` it comes from a producer from before groups (no group fields)."""
    producers = [Producer("formation"), Producer("equipement")]
    out: dict[str, list[CloudEvent]] = {code: [] for code in CODES}
    for _ in range(transactions):
        producer = rng.choice(producers)
        grouped = rng.random() >= ungrouped_share
        if grouped:
            producer.groups += rng.randint(1, 2)  # another UAI's group may come between
        for code in rng.sample(CODES, rng.randint(1, 2)):
            records = changed_records(rng, producer, code)
            for record in records:
                if grouped:
                    record = record.model_copy(update={"group": producer.groups, "group_size": len(records)})
                out[code].append(make_event(TYPE[type(record)], record, source=f"/plateforme/{producer.name}"))
    return out


def batches(rng: random.Random, per_uai: dict[str, list[CloudEvent]]) -> list[list[CloudEvent]]:
    """The records in batches of one to five, each UAI's in its order, UAIs interleaved at
    random; now and then a record read again (a batch redelivered after a failure)."""
    queues = {code: list(records) for code, records in per_uai.items()}
    read: list[CloudEvent] = []
    out = []
    while any(queues.values()):
        batch = []
        for _ in range(rng.randint(1, 5)):
            waiting = [code for code in CODES if queues[code]]
            if not waiting:
                break
            batch.append(queues[rng.choice(waiting)].pop(0))
        if read and rng.random() < 0.1:
            batch.insert(0, rng.choice(read[-6:]))
        read += batch
        out.append(batch)
    return out


def memory_entrees(store: Any) -> tuple[dict, dict]:
    """What the memory store assembled, as RessourcesStore.load_entrees reads it."""
    held = lambda family: [r for code in CODES for r in store.assembled.get((code, family), [])]  # noqa: E731
    return views.profils(held(views.FAMILIES[0])), views.couvertures(held(views.FAMILIES[1]))


async def compare(database_url: str, schema: str, seed: int, ungrouped_share: float) -> dict[str, int]:
    rng = random.Random(seed)
    per_uai = partitions(rng, 60, ungrouped_share)
    memory = _memory_stores().RessourcesMemory()
    seen = {"batches": 0, "withheld": 0}  # batches, and UAIs whose profile or coverage a batch left as it was
    pool = await create_pool(database_url, schema)
    try:
        await migrate(pool, schema, SPEC.package_dir)
        async with pool.acquire() as conn:
            for n, batch in enumerate(batches(rng, per_uai)):
                async with conn.transaction():
                    store = RessourcesStore(conn)
                    await store.assemble(sorted(await store.store_derived(batch)))
                await memory.assemble(sorted(await memory.store_derived(batch)))
                sql = await RessourcesStore(conn).load_entrees(CODES)
                expected = memory_entrees(memory)
                where = (
                    f"batch {n} of seed {seed}: {[(e.type, e.subject, e.data.version, e.data.group) for e in batch]}"
                )
                assert sql[0] == expected[0], f"profiles differ after {where}"
                assert sql[1] == expected[1], f"coverages differ after {where}"
                every = memory_entrees(_whole_memory(memory))
                seen["withheld"] += sum(every[i] != expected[i] for i in (0, 1))
                seen["batches"] += 1
            final = await RessourcesStore(conn).load_entrees(CODES)
    finally:
        await pool.close()
    latest = _whole_memory(memory)
    assert final == memory_entrees(latest), "every record read: each UAI's latest records assembled"
    return seen


def _whole_memory(memory: Any) -> Any:
    """A memory store holding `memory`'s records, every family assembled from all of them (as if
    every group were whole): what the stores read once every record arrived."""
    every = _memory_stores().RessourcesMemory()
    every.derived = {
        k: e.model_copy(update={"data": e.data.model_copy(update={"group": None, "group_size": None})})
        for k, e in memory.derived.items()
    }
    for code in CODES:
        for family in views.FAMILIES:
            held = [e for (t, u, _), e in sorted(every.derived.items()) if t in family and u == code]
            every.assembled[(code, family)] = [(e.type, code, e.data.model_dump(mode="json")) for e in held]
    return every


async def compare_seeds(database_url: str, schema: str, ungrouped_share: float) -> None:
    """`compare` over four seeds, each in a schema of its own; some batch must have cut a group."""
    withheld = 0
    for seed in range(4):
        withheld += (await compare(database_url, f"{schema}_{seed}", seed, ungrouped_share))["withheld"]
    assert withheld > 0, "some batch cut a group (else nothing was checked)"


async def test_the_sql_store_assembles_grouped_records_as_the_memory_store(database_url, unique):
    """Every producer numbers its groups: after each batch, the SQL store's profiles and
    coverages are the memory store's, some left as they were while a group was cut."""
    await compare_seeds(database_url, f"ressources_groupes_{unique}", 0.0)


async def test_the_sql_store_reads_records_from_before_groups_as_the_memory_store(database_url, unique):
    """A rolling upgrade: some transactions come from a producer from before groups. After each
    batch, the SQL store's profiles and coverages are the memory store's."""
    await compare_seeds(database_url, f"ressources_avant_{unique}", 0.25)


async def test_a_record_from_before_groups_ungroups_only_the_records_read_before_it(database_url, unique):
    """A rolling upgrade: a formation replica from before groups publishes the teacher count (2);
    then one that numbers groups publishes the count (5) and the TNI's (4) as group 2. ressources
    reads the old count and the TNI's in one batch, the new count in the next. The record from
    before groups makes the records read before it ungrouped, not the TNI's read after it: the
    coverage after the first batch is one formation had (1 or 2 teachers, TNI 1), never 2 teachers
    with the TNI's 4, and after the second it is the new one (5, TNI 4)."""
    code = CODES[0]

    def record(model: Any, version: int, group: int | None, **fields: Any) -> CloudEvent:
        sized = {"group": group, "group_size": 2} if group else {}
        return make_event(TYPE[model], model(uai=code, version=version, **sized, **fields), source="/plateforme/t")

    batches = [
        [record(CouvertureEnseignants, 1, 1, enseignants=1), record(CouvertureOutil, 1, 1, kind="tni", enseignants=1)],
        [
            record(CouvertureEnseignants, 2, None, enseignants=2),
            record(CouvertureOutil, 2, 2, kind="tni", enseignants=4),
        ],
        [record(CouvertureEnseignants, 3, 2, enseignants=5)],
    ]
    schema = f"ressources_montee_{unique}"
    read = []
    pool = await create_pool(database_url, schema)
    try:
        await migrate(pool, schema, SPEC.package_dir)
        async with pool.acquire() as conn:
            for batch in batches:
                async with conn.transaction():
                    store = RessourcesStore(conn)
                    await store.assemble(await store.store_derived(batch))
                _, couvertures = await RessourcesStore(conn).load_entrees([code])
                read.append((couvertures[code].enseignants, couvertures[code].outils))
    finally:
        await pool.close()
    assert read[0] == (1, {"tni": 1})
    assert read[1] in [(1, {"tni": 1}), (2, {"tni": 1})], "a coverage formation had"
    assert read[2] == (5, {"tni": 4}), "the group whole: formation's last coverage"
