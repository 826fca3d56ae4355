"""The three use cases (handlers) with in-memory stores: no broker, no database, milliseconds.
What each emits for what it receives; the SQL stores are tested in tests/integration/."""

import asyncio
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace

import pytest
from memory_stores import EquipementMemory, FormationMemory, RessourcesMemory

import contracts as c
from contracts import EventParser
from contracts.internal import (
    COUVERTURE_ENSEIGNANTS,
    COUVERTURE_OUTIL,
    INTERNAL_PAYLOADS,
    INTERNAL_TOPIC_TYPES,
    PROFIL_LOT,
    ProfilLot,
)
from services.common.messaging.outbox import Twin
from services.common.pipeline import TRACEPARENT_OF
from services.equipement.handlers import apply as equipement
from services.formation.handlers import apply as formation
from services.ressources.handlers import ALERTE_DEPLACEE, make_apply, reevaluate_chunk, resolve_unsubscribed
from services.ressources.rules import Seuils

UAI = "0350042F"
T0 = datetime(2026, 9, 1, 8, tzinfo=UTC)
DEPARTEMENT = "/collectivites/departements/035"
ressources = make_apply(Seuils())


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def lot(lot_id: str, quantity: int, ipados: str = "17.1", minute: int = 0) -> c.CloudEvent:
    data = c.Lot(
        uai=UAI,
        lot_id=lot_id,
        kind="tablette",
        quantity=quantity,
        os=c.Logiciel(name="iPadOS", version=ipados),
        browsers=[],
    )
    return c.make_event(c.LOT, data, source=DEPARTEMENT, time=at(minute))


def published(applied) -> list[tuple[str, str, int]]:
    return [(o.event.type, o.key, o.event.data["version"]) for o in applied.outgoing]


async def test_equipement_publishes_each_changed_lot_once_and_ignores_stale_ones():
    store = EquipementMemory()
    first = await equipement(store, [lot("L1", 30, minute=1), lot("L2", 3, minute=1)], set())
    assert published(first) == [(PROFIL_LOT, f"{UAI}/L1", 1), (PROFIL_LOT, f"{UAI}/L2", 1)]
    same = await equipement(store, [lot("L1", 30, minute=2)], set())
    assert same.outgoing == [] and same.stale == [], "a newer event with the same content publishes nothing"
    older = lot("L1", 5, minute=0)
    changed = await equipement(store, [older, lot("L1", 0, minute=3)], set())
    assert changed.stale == [older]
    assert published(changed) == [(PROFIL_LOT, f"{UAI}/L1", 2)]
    assert changed.outgoing[0].event.data["quantity"] == 0, "a retired lot is published, so ressources forgets it"


def affectation(teacher: str, minute: int, end: date | None = None) -> c.CloudEvent:
    data = c.Affectation(teacher_id=teacher, uai=UAI, start=date(2026, 9, 1), end=end)
    return c.make_event(c.AFFECTATION, data, source="/rectorats/14", time=at(minute))


def training(teacher: str, level: int, tools: list[str]) -> c.CloudEvent:
    data = c.FormationSuivie(
        teacher_id=teacher,
        module_id=f"m-{level}",
        title="t",
        dispositif="eafc",
        completed_on=date(2026, 10, 1),
        competences=[c.Competence(code="3.4", level=level)],
        tools=tools,
    )
    return c.make_event(c.FORMATION_SUIVIE, data, source="/rectorats/14", time=at(5))


async def test_formation_counts_teachers_levels_and_tools_and_publishes_a_tool_nobody_holds_any_more():
    store = FormationMemory()
    applied = await formation(
        store,
        [
            affectation("ens-00000001", 1),
            affectation("ens-00000002", 1),
            training("ens-00000001", 3, ["TNI"]),
            training("ens-00000002", 1, []),
        ],
        set(),
    )
    records = {o.key: o.event.data for o in applied.outgoing}
    assert records[UAI]["enseignants"] == 2 and records[UAI]["competences"]["3.4"][:4] == [2, 1, 1, 0]
    assert (records[f"{UAI}/tni"]["kind"], records[f"{UAI}/tni"]["enseignants"]) == ("tni", 1)

    left = await formation(store, [affectation("ens-00000001", 2, end=date(2026, 12, 31))], set())
    records = {o.key: (o.event.type, o.event.data) for o in left.outgoing}
    assert records[UAI][0] == COUVERTURE_ENSEIGNANTS and records[UAI][1]["enseignants"] == 1
    assert records[f"{UAI}/tni"][0] == COUVERTURE_OUTIL and records[f"{UAI}/tni"][1]["enseignants"] == 0


async def test_formation_counts_a_uai_again_only_when_a_teacher_comes_leaves_or_learns():
    store = FormationMemory()
    await formation(store, [affectation("ens-00000001", 1), training("ens-00000001", 3, ["TNI"])], set())
    store.recounted.clear()

    same = await formation(store, [affectation("ens-00000001", 2), training("ens-00000001", 2, ["TNI"])], set())
    assert (same.outgoing, store.recounted) == ([], []), "a repeated affectation, a training that adds nothing"

    learnt = await formation(store, [training("ens-00000001", 4, [])], set())
    assert store.recounted == [[UAI]] and published(learnt) == [(COUVERTURE_ENSEIGNANTS, UAI, 2)]
    came = await formation(store, [affectation("ens-00000002", 3)], set())
    assert store.recounted[-1] == [UAI] and came.outgoing[0].event.data["enseignants"] == 2
    left = await formation(store, [affectation("ens-00000002", 4, end=date(2026, 12, 31))], set())
    assert store.recounted[-1] == [UAI] and left.outgoing[0].event.data["enseignants"] == 1
    assert len(store.recounted) == 3


async def test_formation_locks_teachers_then_the_uais_it_counts_before_counting():
    """The teachers whose counting changes or who learnt, then the UAIs: none for a declaration
    repeated as it was."""
    store = FormationMemory()
    await formation(store, [affectation("ens-00000002", 1), training("ens-00000001", 3, ["TNI"])], set())
    await formation(store, [affectation("ens-00000001", 2)], set())
    await formation(store, [affectation("ens-00000001", 3)], set())  # as it was: no lock, no count
    assert store.steps == [
        ("lock:enseignant", ["ens-00000001", "ens-00000002"]),  # the declared and the one who learnt
        ("lock:uai", [UAI]),
        ("count", [UAI]),
        ("lock:enseignant", ["ens-00000001"]),
        ("lock:uai", [UAI]),
        ("count", [UAI]),
    ]


def college(uai: str = UAI) -> c.Etablissement:
    return c.Etablissement(
        uai=uai,
        nom="Collège",
        type="college",
        statut="public",
        code_commune="35238",
        code_departement="035",
        code_academie="14",
        code_region="53",
        ouvert=True,
    )


def profil(version: int, ipados: str, uai: str = UAI) -> c.CloudEvent:
    data = ProfilLot(
        uai=uai,
        lot_id="L1",
        version=version,
        kind="tablette",
        quantity=30,
        os=c.Logiciel(name="iPadOS", version=ipados),
    )
    return c.make_event(PROFIL_LOT, data, source="/plateforme/equipement", time=at(version))


RID = "ark:/67375/unit"


def publication(minute: int, min_ipados: str = "15") -> c.CloudEvent:
    ressource = c.RessourcePubliee(
        resource_id=RID,
        title="Atlas",
        editor="E",
        requirements=[[c.Exigence(type="os", name="iPadOS", min_version=min_ipados)]],
    )
    return c.make_event(c.RESSOURCE_PUBLIEE, ressource, source="/ministere", time=at(minute))


def subscription(uai: str = UAI, end: date | None = None, minute: int = 1) -> c.CloudEvent:
    abonnement = c.Abonnement(resource_id=RID, uai=uai, start=date(2026, 9, 1), end=end)
    return c.make_event(c.ABONNEMENT, abonnement, source="/gar", time=at(minute))


def catalogue(end: date | None = None, minute: int = 1) -> list[c.CloudEvent]:
    return [publication(minute), subscription(end=end, minute=minute)]


def announced(applied) -> list[tuple[str, str]]:
    """The alert events on the stream (each with its twin on its table, alertes.etat.v1)."""
    return [(o.event.type, o.event.data["kind"]) for o in applied.outgoing if o.topic == c.ALERTES]


async def test_ressources_raises_on_old_tablets_resolves_on_new_ones_and_journals_both():
    store = RessourcesMemory([college()])
    await ressources(store, [profil(1, "12.5")], set())
    raised = await ressources(store, catalogue(), set())
    assert announced(raised) == [(c.ALERTE_LEVEE, "equipement-incompatible")]
    assert raised.outgoing[0].event.data["reasons"] == [c.Reason(code="os-version", detail="iPadOS 12.5 < 15")]
    assert (await ressources(store, [profil(1, "12.5")], set())).outgoing == [], "a replayed version changes nothing"
    resolved = await ressources(store, [profil(2, "17")], set())
    assert announced(resolved) == [(c.ALERTE_RESOLUE, "equipement-incompatible")]
    assert [e["type"] for e, _ in store.journalled] == [c.ALERTE_LEVEE, c.ALERTE_RESOLUE]


async def test_an_open_alert_that_moves_is_journalled_for_the_live_stream_with_where_it_was_not_announced():
    """Its établissement moves to another département (and so another responsable): nothing on
    Kafka (the contract has no such event), but the live stream's alerte-deplacee, the alert as it
    is now, beside where it was (the streams filtering on either get it). A change that moves
    nothing (its reasons) journals nothing."""
    store = RessourcesMemory([college()])
    await ressources(store, [profil(1, "12.5")], set())
    await ressources(store, catalogue(), set())
    moved = college().model_copy(update={"code_departement": "022", "code_commune": "22278"})
    store.etabs[UAI] = moved
    applied = await ressources(store, [], {UAI: c.make_event(c.ETABLISSEMENT, moved, source="/ministere", time=at(9))})
    assert announced(applied) == []
    event, former = store.journalled[-1]
    assert event["type"] == ALERTE_DEPLACEE and event["data"]["code_departement"] == "022"
    assert event["data"]["responsable"] == {"type": "departement", "code": "022"}
    assert former == {
        "code_academie": "14",
        "code_departement": "035",
        "responsable": {"type": "departement", "code": "035"},
    }
    journalled = len(store.journalled)
    await ressources(store, [profil(2, "11.0")], set())  # another reason, the same place
    assert len(store.journalled) == journalled


async def test_ressources_writes_each_alert_event_to_the_table_then_a_tombstone_once_resolved():
    store = RessourcesMemory([college()])
    await ressources(store, [profil(1, "12.5")], set())
    raised = await ressources(store, catalogue(), set())
    resolved = await ressources(store, [profil(2, "17")], set())
    assert [o.topic for o in raised.outgoing + resolved.outgoing] == [c.ALERTES, c.ALERTES]
    [levee], [resolue] = raised.outgoing, resolved.outgoing
    key = levee.event.data["alert_id"].encode()
    assert levee.twin == Twin(c.ALERTES_ETAT, key, ends=False), "keyed by alert_id, the event as on the stream"
    assert resolue.twin == Twin(c.ALERTES_ETAT, key, ends=True), "its last event, then a tombstone"


async def test_an_alert_resolved_by_a_replica_whose_clock_is_behind_is_stored_as_announced(monkeypatch):
    """Raised by a replica an hour ahead, resolved by this one: the event says it resolved when
    it was raised (never before), and the table the read API lists said this replica's clock."""
    from services.ressources import handlers

    class Clock(datetime):
        shown = T0

        @classmethod
        def now(cls, tz=None):
            return cls.shown

    monkeypatch.setattr(handlers, "datetime", Clock)
    store = RessourcesMemory([college()])
    await ressources(store, [profil(1, "12.5")], set())
    Clock.shown = T0 + timedelta(hours=1)
    [levee] = (await ressources(store, catalogue(), set())).outgoing
    Clock.shown = T0
    [resolue] = (await ressources(store, [profil(2, "17")], set())).outgoing

    assert resolue.event.data["resolved_at"] == levee.event.data["raised_at"] == T0 + timedelta(hours=1)
    assert store.resolved_at == {levee.event.data["alert_id"]: resolue.event.data["resolved_at"]}


async def test_ressources_resolves_when_the_subscription_ends():
    store = RessourcesMemory([college()])
    await ressources(store, [profil(1, "12.5")], set())
    await ressources(store, catalogue(), set())
    ended = await ressources(store, catalogue(end=date(2026, 12, 31), minute=2)[1:], set())
    assert announced(ended) == [(c.ALERTE_RESOLUE, "equipement-incompatible")]


async def test_an_open_alert_whose_abonnement_a_replay_refused_is_resolved_by_the_catch_up():
    """A rebuild's replay refused the abonnements of two of three alerts the stream holds open
    (rattrapage._resolve_unsubscribed): no re-evaluation sees a pair without its abonnement, so
    the catch-up resolves theirs, chunk by chunk, and leaves the third open."""
    uais = [f"03500{n}{c.uai_check_letter(f'03500{n}')}" for n in range(10, 13)]
    store = RessourcesMemory([college(u) for u in uais])
    await ressources(store, [profil(1, "12.5", u) for u in uais] + [publication(1)], set())
    await ressources(store, [subscription(u) for u in uais], set())
    assert {uai for uai, _ in store.alerts} == set(uais)
    for key in [k for k, e in store.abonnements.rows.items() if e.data.uai != uais[1]]:
        del store.abonnements.rows[key]

    chunks = []
    while evaluated := await resolve_unsubscribed(store, Seuils(), 1):
        chunks.append([(o.event.type, o.event.data["uai"]) for o in evaluated.outgoing if o.topic == c.ALERTES])
    assert chunks == [[(c.ALERTE_RESOLUE, uais[0])], [(c.ALERTE_RESOLUE, uais[2])]]
    assert {uai: held["equipement-incompatible"].ouverte for (uai, _), held in store.alerts.items()} == {
        uais[0]: False,
        uais[1]: True,
        uais[2]: False,
    }


async def test_the_catch_up_leaves_an_alert_kind_it_does_not_know_and_stops_on_a_chunk_that_closes_nothing(
    monkeypatch,
):
    """An open alert of a kind a later version raised (this one rolled back since) is not taken:
    resolving its pair would not close it, and the catch-up would take it again for ever, its
    service's writes held (a rebuild's switch). A chunk that closes nothing stops it, named."""
    from deploy import rattrapage
    from services.ressources import handlers
    from services.ressources.lifecycle import Held

    store = RessourcesMemory([college()])
    store.alerts[(UAI, RID)] = {"kind-from-the-future": Held(True, 1, '{"kind": "kind-from-the-future"}')}

    async def run_exclusive(work):
        return await work(store)

    cible = SimpleNamespace(pipeline=SimpleNamespace(run_exclusive=run_exclusive))
    settings = SimpleNamespace(seuils=Seuils(), reevaluation_chunk=10)
    async with asyncio.timeout(5):
        assert await rattrapage._resolve_unsubscribed(cible, settings) == 0

    async def closes_nothing(store, seuils, size):
        return handlers.Evaluated([])

    monkeypatch.setattr(handlers, "resolve_unsubscribed", closes_nothing)
    with pytest.raises(RuntimeError, match="resolving their pairs left open"):
        async with asyncio.timeout(5):
            await rattrapage._resolve_unsubscribed(cible, settings)


def requested(store: RessourcesMemory) -> set[tuple[str, str]]:
    """Each pending part's resource and cursor."""
    return {(rid, part.after_uai) for (rid, _), part in store.reevaluations.items()}


async def subscribed_with_old_tablets(uais: list[str]) -> RessourcesMemory:
    """These établissements on iPadOS 12.5, subscribed to RID, which is not published yet."""
    store = RessourcesMemory([college(u) for u in uais])
    await ressources(store, [profil(1, "12.5", u) for u in uais] + [subscription(u) for u in uais], set())
    return store


async def test_ressources_defers_a_resource_fan_out_to_chunks_that_raise_each_alert_once():
    uais = [f"03500{n}{c.uai_check_letter(f'03500{n}')}" for n in range(10, 15)]
    store = await subscribed_with_old_tablets(uais)

    applied = await ressources(store, [publication(2)], set())
    assert applied.outgoing == [], "the batch only records the fan-out"
    assert requested(store) == {(RID, "")}

    chunks = []
    while chunk := await reevaluate_chunk(store, Seuils(), 2):
        chunks.append(chunk)
    assert [(ch.uais, ch.last) for ch in chunks] == [(2, False), (2, False), (1, True)]
    raised = [o.event.data["uai"] for ch in chunks for o in ch.outgoing if o.topic == c.ALERTES]
    assert raised == uais, "one raise per subscriber, in the order of the UAIs"
    assert requested(store) == set(), "the last chunk ends the re-evaluation"
    assert await reevaluate_chunk(store, Seuils(), 2) is None


async def test_a_fan_out_comes_in_parts_each_evaluated_on_its_own_range():
    uais = [f"03500{n}{c.uai_check_letter(f'03500{n}')}" for n in range(10, 15)]
    store = await subscribed_with_old_tablets(uais)
    store.part_size = 2
    await ressources(store, [publication(2)], set())
    assert [(p.after_uai, p.up_to) for p in store.reevaluations.values()] == [
        ("", uais[1]),
        (uais[1], uais[3]),
        (uais[3], None),
    ], "parts of two UAIs, the last one without an upper bound"

    chunks = []
    while chunk := await reevaluate_chunk(store, Seuils(), 10):
        chunks.append(chunk)
    assert [(ch.part, ch.uais, ch.last, ch.parts_left) for ch in chunks] == [
        (0, 2, True, 2),
        (1, 2, True, 1),
        (2, 1, True, 0),
    ]
    raised = [o.event.data["uai"] for ch in chunks for o in ch.outgoing if o.topic == c.ALERTES]
    assert raised == uais, "each subscriber raised once, by the part that holds its UAI"


async def test_a_new_version_during_a_fan_out_goes_on_with_it_then_evaluates_again_what_was_passed():
    uais = [f"03500{n}{c.uai_check_letter(f'03500{n}')}" for n in range(10, 15)]
    store = await subscribed_with_old_tablets(uais)
    await ressources(store, [publication(2)], set())
    first = await reevaluate_chunk(store, Seuils(), 2)
    assert first is not None and [o.event.data["uai"] for o in first.outgoing if o.topic == c.ALERTES] == uais[:2]

    await ressources(store, [publication(3, min_ipados="12")], set())  # 12.5 meets it
    assert requested(store) == {(RID, uais[1]), (RID, "")}, "the part goes on; what it passed, a part again"
    outgoing = []
    while chunk := await reevaluate_chunk(store, Seuils(), 2):
        outgoing += [o for o in chunk.outgoing if o.topic == c.ALERTES]
    assert [(o.event.type, o.event.data["uai"]) for o in outgoing] == [(c.ALERTE_RESOLUE, u) for u in uais[:2]]
    assert not any(held.ouverte for kinds in store.alerts.values() for held in kinds.values())


async def test_a_new_version_after_some_parts_are_done_evaluates_their_ranges_again():
    uais = [f"03500{n}{c.uai_check_letter(f'03500{n}')}" for n in range(10, 15)]
    store = await subscribed_with_old_tablets(uais)
    store.part_size = 2
    await ressources(store, [publication(2)], set())
    for _ in range(2):  # parts 0 and 1 done, part 2 not started
        await reevaluate_chunk(store, Seuils(), 10)
    assert requested(store) == {(RID, uais[3])}

    await ressources(store, [publication(3, min_ipados="12")], set())  # 12.5 meets it
    assert requested(store) == {(RID, uais[3]), (RID, ""), (RID, uais[1])}, "parts 0 and 1's range cut again"
    resolved = []
    while chunk := await reevaluate_chunk(store, Seuils(), 10):
        resolved += [o.event.data["uai"] for o in chunk.outgoing if o.event.type == c.ALERTE_RESOLUE]
    assert sorted(resolved) == uais[:4], "the alerts parts 0 and 1 raised, resolved"
    assert not any(held.ouverte for kinds in store.alerts.values() for held in kinds.values())


async def test_versions_coming_faster_than_a_pass_still_reach_every_subscriber():
    """Each new version started the pass over from the first UAI: the last ones were never
    evaluated while versions came faster than a pass (here one chunk of two between two)."""
    uais = [f"03500{n}{c.uai_check_letter(f'03500{n}')}" for n in range(10, 15)]
    store = await subscribed_with_old_tablets(uais)
    for minute in range(2, 8):  # 15 then 16 and so on: 12.5 meets neither
        await ressources(store, [publication(minute, min_ipados=str(15 + minute % 2))], set())
        await reevaluate_chunk(store, Seuils(), 2)
    assert sorted(u for u, _ in store.alerts) == uais, "every subscriber reached"
    while await reevaluate_chunk(store, Seuils(), 2):
        pass
    details = {held.values["reasons"][0]["detail"] for kinds in store.alerts.values() for held in kinds.values()}
    assert details == {"iPadOS 12.5 < 16"}, "every alert as the last version says"


async def test_a_republication_changing_only_what_the_rules_do_not_read_evaluates_nothing_again():
    uais = [f"03500{n}{c.uai_check_letter(f'03500{n}')}" for n in range(10, 13)]
    store = await subscribed_with_old_tablets(uais)
    await ressources(store, [publication(2)], set())
    while await reevaluate_chunk(store, Seuils(), 2):
        pass

    renamed = publication(3)
    renamed = renamed.model_copy(update={"data": renamed.data.model_copy(update={"title": "Atlas 2", "editor": "F"})})
    assert (await ressources(store, [renamed], set())).outgoing == []
    assert requested(store) == set(), "no fan-out: every verdict stays as it is"
    assert store.catalogue.rows[(RID,)].data.title == "Atlas 2", "the new version is kept all the same"

    await ressources(store, [publication(4, min_ipados="12")], set())  # a requirement changed
    assert requested(store) == {(RID, "")}
    while await reevaluate_chunk(store, Seuils(), 2):
        pass
    withdrawn = c.make_event(c.RESSOURCE_RETIREE, c.RessourceRetiree(resource_id=RID), source="/ministere", time=at(5))
    await ressources(store, [withdrawn], set())
    assert requested(store) == {(RID, "")}, "a withdrawal resolves what was open"
    while await reevaluate_chunk(store, Seuils(), 2):
        pass
    await ressources(store, [publication(6, min_ipados="12")], set())
    assert requested(store) == {(RID, "")}, "published again after it: evaluated again"


async def test_formation_s_records_read_one_per_batch_give_no_alert_for_a_state_that_never_was():
    """Three teachers trained on the TNI join one who was: formation publishes the teacher count
    and the TNI's count, records of their own that ressources may read in two batches. Read one
    per batch, the count (4) without the TNI's (still 1) would be a share of 0.25: the coverage
    is read once its group is whole, and no alert is raised."""
    parse = EventParser(c.PAYLOADS | INTERNAL_PAYLOADS, c.TOPIC_TYPES | INTERNAL_TOPIC_TYPES)
    teachers, store = FormationMemory(), RessourcesMemory([college()])
    robots = c.RessourcePubliee(resource_id=RID, title="Robots", editor="E", training=c.Formation(tools=["TNI"]))
    await ressources(store, [profil(1, "17.1"), c.make_event(c.RESSOURCE_PUBLIEE, robots, source="/ministere")], set())
    await ressources(store, [subscription()], set())

    async def join(*names: str) -> list:
        events = [e for name in names for e in (affectation(name, 1), training(name, 3, ["TNI"]))]
        applied = await formation(teachers, events, set())
        return [await ressources(store, [parse(o.event.to_bytes(), o.topic)], set()) for o in applied.outgoing]

    first = await join("ens-00000001")
    joined = await join("ens-00000002", "ens-00000003", "ens-00000004")
    assert len(first) == len(joined) == 2, "the teacher count and the TNI's, in one batch each"
    assert [announced(applied) for applied in first + joined] == [[], [], [], []]
    assert store.alerts == {}


async def test_a_fan_out_carries_the_trace_of_the_catalogue_event_that_changed_its_resource():
    """The trace was that of the batch's last event about the resource: a subscription to it
    after its publication in one batch gave the fan-out the subscriber's trace."""
    uais = [f"03500{n}{c.uai_check_letter(f'03500{n}')}" for n in range(10, 15)]
    store = await subscribed_with_old_tablets(uais)
    published, subscribed = publication(2), subscription(uais[0], minute=2)
    parents = {published.id: "00-publication", subscribed.id: "00-subscription"}
    traced = TRACEPARENT_OF.set(lambda e: parents[e.id])
    try:
        await ressources(store, [published, subscribed], set())
    finally:
        TRACEPARENT_OF.reset(traced)
    assert {p.traceparent for p in store.reevaluations.values()} == {"00-publication"}


async def test_an_alert_continues_the_trace_of_what_changed_it_not_of_a_stale_event_or_none():
    """The batch's last event about a UAI was its alerts' cause, a stale one too (a subscription
    older than the one held changes nothing); and an établissement the référentiel changed gave
    none: its alerts left the partner's trace behind."""
    store = RessourcesMemory([college()])
    await ressources(store, [profil(1, "17")], set())
    await ressources(store, catalogue(minute=5), set())
    newer, stale = profil(2, "12.5"), subscription(minute=2)
    raised = await ressources(store, [newer, stale], set())
    assert announced(raised) == [(c.ALERTE_LEVEE, "equipement-incompatible")]
    assert {o.cause.id for o in raised.outgoing} == {newer.id}
    closed = college().model_copy(update={"ouvert": False})
    store.etabs[UAI] = closed
    closure = c.make_event(c.ETABLISSEMENT, closed, source="/ministere", time=at(9))
    resolved = await ressources(store, [], {UAI: closure})
    assert announced(resolved) == [(c.ALERTE_RESOLUE, "equipement-incompatible")]
    assert {o.cause.id for o in resolved.outgoing} == {closure.id}
