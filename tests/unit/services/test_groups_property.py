"""Property: ressources never reads a UAI's coverage, or its profile, in a state its producer
never had, however the batches of ressources cut the producer's transactions.

formation publishes a UAI's teacher count and each tool's count as records of their own, and
equipement each lot and the link: one transaction may publish several records of a UAI, which
ressources may read in two batches. The records carry their transaction's `group` and the
UAI's `group_size`, and ressources assembles a UAI's coverage or profile only once the latest
group of its records is whole (services/ressources/views.py `whole`).

Random declarations for up to three UAIs go through the producer's use case with the in-memory
store, in random transactions; the state each transaction leaves per UAI is recorded (from the
producer's own state, not from its records). The records it publishes, parsed back from their
bytes as ressources parses them, go through ressources' use case in random batches that ignore
the transactions but keep each UAI's order (a UAI's records share a partition). After every
batch, what ressources reads of each UAI is a state the producer had (or nothing yet), no
earlier than what it read before and no later than the records it has read; when a batch ends
on a whole transaction of a UAI, it is that transaction's state; at the end, the last one.
"""

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memory_stores import EquipementMemory, FormationMemory, RessourcesMemory

import contracts as c
from contracts import CloudEvent, EventParser, uai_check_letter
from contracts.internal import (
    INTERNAL_PAYLOADS,
    INTERNAL_TOPIC_TYPES,
    ConnectiviteProfil,
    LotProfil,
    ProfilEquipement,
)
from services.equipement.handlers import apply as equipement
from services.formation import domain
from services.formation.handlers import apply as formation
from services.ressources import views
from services.ressources.handlers import make_apply
from services.ressources.rules import Coverage, Seuils

UAIS = [d + uai_check_letter(d) for d in ("0350042", "0350043", "0350044")]
TEACHERS = [f"ens-{n:08d}" for n in range(1, 5)]
TOOLS = ["TNI", "Robot", "casque"]
CODES = ["3.4", "1.1"]
LOT_IDS = ["tablettes", "pc", "tni"]
T0 = datetime(2026, 9, 1, 8, tzinfo=UTC)
PARSE = EventParser(c.PAYLOADS | INTERNAL_PAYLOADS, c.TOPIC_TYPES | INTERNAL_TOPIC_TYPES)
RESSOURCES = make_apply(Seuils())
PROPERTY = settings(
    max_examples=150,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------------------------------------
# Declarations, drawn as short tuples (a counterexample reads as them), made events here.
# ---------------------------------------------------------------------------------------------

AFFECTATIONS = st.tuples(
    st.just("affectation"),
    st.integers(0, len(TEACHERS) - 1),
    st.integers(0, len(UAIS) - 1),
    st.integers(0, 30),  # minute: latest wins, an older one is stale
    st.booleans(),  # ended
)
TRAININGS = st.tuples(
    st.just("training"),
    st.integers(0, len(TEACHERS) - 1),
    st.sampled_from(CODES),
    st.integers(1, 8),
    st.lists(st.sampled_from(TOOLS), unique=True, max_size=2).map(tuple),
)
LOTS = st.tuples(
    st.just("lot"),
    st.integers(0, len(UAIS) - 1),
    st.sampled_from(LOT_IDS),
    st.integers(0, 3),  # quantity, 0 retires the lot
    st.sampled_from([None, "12.5", "17.1"]),  # iPadOS version, None: no OS
    st.integers(0, 30),
)
LINKS = st.tuples(
    st.just("link"),
    st.integers(0, len(UAIS) - 1),
    st.sampled_from([0.5, 2.0, 100.0]),
    st.booleans(),
    st.integers(0, 30),
)


def at(minute: int) -> datetime:
    return T0 + timedelta(minutes=minute)


def event(op: tuple) -> CloudEvent:
    match op:
        case ("affectation", teacher, u, minute, ended):
            data: Any = c.Affectation(
                teacher_id=TEACHERS[teacher],
                uai=UAIS[u],
                start=date(2026, 9, 1),
                end=date(2026, 12, 31) if ended else None,
            )
            return c.make_event(c.AFFECTATION, data, source="/rectorats/14", time=at(minute))
        case ("training", teacher, code, level, tools):
            data = c.FormationSuivie(
                teacher_id=TEACHERS[teacher],
                module_id=f"m-{code}-{level}-{'-'.join(tools)}",
                title="t",
                dispositif="eafc",
                completed_on=date(2026, 10, 1),
                competences=[c.Competence(code=code, level=level)],
                tools=list(tools),
            )
            return c.make_event(c.FORMATION_SUIVIE, data, source="/rectorats/14", time=at(5))
        case ("lot", u, lot_id, quantity, ipados, minute):
            os = None if ipados is None else c.Logiciel(name="iPadOS", version=ipados)
            data = c.Lot(uai=UAIS[u], lot_id=lot_id, kind="tablette", quantity=quantity, os=os, browsers=[])
            return c.make_event(c.LOT, data, source="/collectivites/departements/035", time=at(minute))
        case ("link", u, bandwidth, ent, minute):
            data = c.Connectivite(uai=UAIS[u], bandwidth_mbps=bandwidth, ent=ent)
            return c.make_event(c.CONNECTIVITE, data, source="/collectivites/departements/035", time=at(minute))
    raise AssertionError(op)


def transactions(ops: Sequence[tuple], sizes: Sequence[int]) -> list[list[CloudEvent]]:
    """The declarations cut into transactions of these sizes (the last one takes the rest)."""
    out, start = [], 0
    for size in [*sizes, len(ops)]:
        if start < len(ops):
            out.append([event(op) for op in ops[start : start + size]])
            start += size
    return out


# ---------------------------------------------------------------------------------------------
# What each producer's state is for a UAI, from its store (not from the records it published).
# ---------------------------------------------------------------------------------------------


async def coverage_of(store: FormationMemory, uai: str) -> Coverage:
    counts = await store.coverage_counts([uai])
    content = domain.competences_content(counts.enseignants[uai], counts.levels[uai])
    held = {kind: n for kind, n in counts.tools[uai].items() if n > 0}
    return Coverage(content["enseignants"], content["competences"], held)


async def profile_of(store: EquipementMemory, uai: str) -> ProfilEquipement:
    lots = sorted((e.data for e in store.lots.rows.values() if e.data.uai == uai), key=lambda lot: lot.lot_id)
    links = [e.data for e in store.links.rows.values() if e.data.uai == uai]
    return ProfilEquipement(
        uai=uai,
        lots=[LotProfil.model_validate(lot.model_dump(exclude={"uai"})) for lot in lots if lot.quantity > 0],
        connectivite=ConnectiviteProfil(bandwidth_mbps=links[0].bandwidth_mbps, ent=links[0].ent) if links else None,
    )


async def read_coverages(store: RessourcesMemory) -> dict[str, Any]:
    """What ressources' rules read of each UAI's coverage."""
    return (await store.load_inputs(UAIS))[1]


async def read_profiles(store: RessourcesMemory) -> dict[str, Any]:
    """The profile ressources assembled (load_inputs gives it as a Fleet, which does not compare)."""
    return views.profils(r for u in UAIS for r in store.assembled.get((u, views.FAMILIES[0]), []))


@dataclass
class Producer:
    memory: Callable[[], Any]
    apply: Callable
    state_of: Callable  # (store, uai) -> the UAI's state as ressources should read it
    read: Callable  # ressources' store -> {uai: state read}


FORMATION = Producer(FormationMemory, formation, coverage_of, read_coverages)
EQUIPEMENT = Producer(EquipementMemory, equipement, profile_of, read_profiles)


@dataclass
class Published:
    uai: str
    tx: int
    event: CloudEvent  # parsed back from its bytes, as ressources' consumer does


async def run_producer(producer: Producer, txs: list[list[CloudEvent]]):
    """Each transaction applied; its records, and per UAI the states it left, in order:
    `history[uai]` lists (transaction, state) for each transaction publishing about the UAI."""
    store = producer.memory()
    records: list[Published] = []
    history: dict[str, list[tuple[int, Any]]] = {}
    sizes: dict[tuple[str, int], int] = {}
    for tx, events in enumerate(txs):
        applied = await producer.apply(store, events, set())
        touched = []
        for o in applied.outgoing:
            parsed = PARSE(o.event.to_bytes(), o.topic)
            records.append(Published(parsed.data.uai, tx, parsed))
            sizes[(parsed.data.uai, tx)] = sizes.get((parsed.data.uai, tx), 0) + 1
            touched.append(parsed.data.uai)
        for uai in dict.fromkeys(touched):
            history.setdefault(uai, []).append((tx, await producer.state_of(store, uai)))
    return records, history, sizes


async def check(producer: Producer, ops: list[tuple], tx_sizes: list[int], data: st.DataObject) -> None:
    records, history, sizes = await run_producer(producer, transactions(ops, tx_sizes))
    queues = {u: [r for r in records if r.uai == u] for u in UAIS}
    store = RessourcesMemory()
    position = dict.fromkeys(UAIS, -1)  # index in history[uai] of the state read last; -1: none yet
    consumed: dict[str, list[Published]] = {u: [] for u in UAIS}
    batch_no = 0
    while any(queues.values()):
        batch = []
        for _ in range(data.draw(st.integers(1, 4), label=f"batch {batch_no} size")):
            waiting = [u for u in UAIS if queues[u]]
            if not waiting:
                break
            u = data.draw(st.sampled_from(waiting), label="from the partition of")
            batch.append(queues[u].pop(0))
        batch_no += 1
        await RESSOURCES(store, [r.event for r in batch], set())
        for r in batch:
            consumed[r.uai].append(r)
        read = await producer.read(store)
        for u in UAIS:
            states = history.get(u, [])
            got = read.get(u)
            done = consumed[u]
            where = f"batch {batch_no}, {u}: read {got!r}, states {states!r}, records read {len(done)}"
            if got is None:
                assert position[u] == -1, f"nothing read after a state: {where}"
            else:
                last_tx = done[-1].tx if done else -1
                fits = [i for i, (tx, s) in enumerate(states) if i >= position[u] and tx <= last_tx and s == got]
                assert fits, f"a state the producer never had, or not yet, or gone back: {where}"
                position[u] = fits[0]
            if done and sum(r.tx == done[-1].tx for r in done) == sizes[(u, done[-1].tx)]:
                expected = next(s for tx, s in states if tx == done[-1].tx)
                assert got == expected, f"a whole transaction read, its state expected: {where}"
    final = await producer.read(store)
    assert {u: final.get(u) for u in history} == {u: states[-1][1] for u, states in history.items()}
    assert set(final) == set(history), "a UAI read without any record of it"


def run(coroutine) -> None:
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(coroutine)
    finally:
        loop.close()


@PROPERTY
@given(
    ops=st.lists(st.one_of(AFFECTATIONS, TRAININGS), min_size=1, max_size=20),
    tx_sizes=st.lists(st.integers(1, 6), max_size=8),
    data=st.data(),
)
def test_ressources_reads_only_coverages_formation_had(ops, tx_sizes, data):
    """Teachers come, leave and learn competences and tools in random transactions; ressources
    reads formation's records in batches cut anywhere: it reads only coverages formation had."""
    run(check(FORMATION, ops, tx_sizes, data))


@PROPERTY
@given(
    ops=st.lists(st.one_of(LOTS, LINKS), min_size=1, max_size=20),
    tx_sizes=st.lists(st.integers(1, 6), max_size=8),
    data=st.data(),
)
def test_ressources_reads_only_profiles_equipement_had(ops, tx_sizes, data):
    """Lots are declared, changed and retired, links declared, in random transactions; ressources
    reads equipement's records in batches cut anywhere: it reads only profiles equipement had."""
    run(check(EQUIPEMENT, ops, tx_sizes, data))
