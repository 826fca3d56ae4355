"""The pure parts of the simulations: reasons counted by motif across établissements, verdicts
tallied per académie and département, a profile with lots declared on top of it. The reasons
come from rules.evaluate itself, so a change of their wording in rules.py shows here."""

from contracts import Competence, Exigence, Formation, Logiciel, Lot, OutilRequis, Reason, RessourcePubliee
from contracts.internal import ConnectiviteProfil, CouvertureFormation, LotProfil, ProfilEquipement
from services.ressources.rules import MIN_TEACHERS_DETAILED, evaluate
from services.ressources.simulations import Bilan, motif, with_lots

UAI = "0350002M"

RESSOURCE = RessourcePubliee(
    resource_id="ark:/1/r",
    title="R",
    editor="E",
    requirements=[[Exigence(type="os", name="iPadOS", min_version="15")]],
    tools=[OutilRequis(kind="tni", min_quantity=2)],
    min_bandwidth_mbps=10,
    training=Formation(competences=[Competence(code="3.4", level=2)]),
)


def profil(lot_id: str, quantity: int, os: tuple[str, str], bandwidth: float = 4) -> ProfilEquipement:
    lot = LotProfil(lot_id=lot_id, kind="tablette", quantity=quantity, os=Logiciel(name=os[0], version=os[1]))
    return ProfilEquipement(uai=UAI, lots=[lot], connectivite=ConnectiviteProfil(bandwidth_mbps=bandwidth, ent=True))


def couverture(held: int, of: int) -> CouvertureFormation:
    return CouvertureFormation(uai=UAI, enseignants=of, competences={"3.4": [of, held, 0, 0, 0, 0, 0, 0]})


def motifs(p: ProfilEquipement, c: CouvertureFormation) -> set[tuple[str, str]]:
    return {motif(r) for reasons in evaluate(RESSOURCE, p, c).alerts.values() for r in reasons}


def test_the_same_cause_reads_the_same_whatever_the_lot_and_the_counts():
    first = motifs(profil("salle-12", 30, ("Windows", "10"), 4), couverture(1, 10))
    second = motifs(profil("cdi", 7, ("Windows", "10"), 2.5), couverture(3, 12))
    assert (
        first
        == second
        == {
            ("os-absent", "iPadOS requis, …: Windows 10"),
            ("outil-manquant", "tni: … < 2"),
            ("debit", "… Mbit/s < 10"),
            ("formation", "3.4 niveau 2: …/… enseignants"),
        }
    )
    # A version below the bound names no lot: it is its own motif, the version kept.
    assert ("os-version", "iPadOS 12.5 < 15") in motifs(profil("a", 3, ("iPadOS", "12.5")), couverture(1, 10))


def test_a_partial_share_is_one_motif_whatever_the_share():
    def mixed(n: int) -> ProfilEquipement:
        recent = LotProfil(lot_id="ok", kind="tablette", quantity=n, os=Logiciel(name="iPadOS", version="17"))
        old = LotProfil(lot_id="old", kind="tablette", quantity=10, os=Logiciel(name="iPadOS", version="12"))
        return ProfilEquipement(uai=UAI, lots=[recent, old])

    shares = {m for n in (2, 4) for m in motifs(mixed(n), couverture(10, 10)) if m[0] == "part-compatible"}
    assert shares == {("part-compatible", "…/… postes compatibles < 50%")}


def test_a_detail_shortened_at_its_bound_is_counted_as_it_is():
    cut = Reason(code="os-absent", detail="iPadOS requis, tablette " + "x" * 200 + "…")
    assert motif(cut) == ("os-absent", cut.detail)


def test_the_tally_counts_each_verdict_per_academie_departement_and_in_all_and_each_motif_once():
    bilan = Bilan()
    incompatible = evaluate(RESSOURCE, profil("a", 3, ("iPadOS", "12.5")), couverture(1, 10))
    bilan.add(incompatible, [("14", "035", 1)], 10)
    bilan.add(evaluate(RESSOURCE, profil("b", 3, ("iPadOS", "12.4")), couverture(9, 10)), [("14", "056", 1)], 10)
    bilan.add(evaluate(RESSOURCE, profil("c", 3, ("iPadOS", "12.5")), couverture(1, 10)), [("17", "044", 1)], 10)
    j = bilan.as_json()
    # The tools are missing everywhere: incompatible at all three; two under-trained.
    assert j["total"] == {
        "evalues": 3,
        "compatibles": 0,
        "partiels": 0,
        "incompatibles": 3,
        "sous_formes": 2,
        "formation_non_comptee": 0,
    }
    assert j["par_academie"]["14"] == {
        "evalues": 2,
        "compatibles": 0,
        "partiels": 0,
        "incompatibles": 2,
        "sous_formes": 1,
        "formation_non_comptee": 0,
    }
    assert list(j["par_departement"]) == ["035", "044", "056"]
    assert j["motifs"][:3] == [
        {"code": "debit", "detail": "… Mbit/s < 10", "etablissements": 3},
        {"code": "outil-manquant", "detail": "tni: … < 2", "etablissements": 3},
        {"code": "formation", "detail": "3.4 niveau 2: …/… enseignants", "etablissements": 2},
    ]
    assert {"code": "os-version", "detail": "iPadOS 12.5 < 15", "etablissements": 2} in j["motifs"]


def test_the_training_of_a_school_of_fewer_than_5_teachers_is_not_counted_nor_its_motifs():
    """The requirements are the caller's: at a school of one teacher, a level after the other
    would read that teacher's. Its equipment is counted as any other's."""
    few, many = Bilan(), Bilan()
    for bilan, teachers in ((few, MIN_TEACHERS_DETAILED - 1), (many, MIN_TEACHERS_DETAILED)):
        held = evaluate(RESSOURCE, profil("a", 3, ("iPadOS", "12.5")), couverture(0, teachers))
        assert "formation-insuffisante" in held.alerts
        bilan.add(held, [("14", "035", 2)], teachers)
    assert (few.total["sous_formes"], few.total["formation_non_comptee"]) == (0, 2)
    assert (many.total["sous_formes"], many.total["formation_non_comptee"]) == (2, 0)
    assert few.par_departement["035"]["incompatibles"] == many.par_departement["035"]["incompatibles"] == 2
    codes = lambda bilan: {m["code"] for m in bilan.as_json()["motifs"]}  # noqa: E731
    assert codes(many) - codes(few) == {"formation"}
    # No training required, or no teacher counted: nothing judged, nothing withheld.
    untrained = evaluate(RESSOURCE.model_copy(update={"training": Formation()}), profil("a", 3, ("iPadOS", "17")))
    few.add(untrained, [("14", "035", 1)], 0)
    assert few.total["formation_non_comptee"] == 2


def test_declared_lots_replace_add_and_retire_on_top_of_the_profile():
    held = profil("salle-1", 30, ("iPadOS", "12.5"), 8)
    lots = [
        Lot(uai=UAI, lot_id="salle-1", kind="tablette", quantity=30, os=Logiciel(name="iPadOS", version="17")),
        Lot(uai=UAI, lot_id="cdi", kind="pc", quantity=4, os=Logiciel(name="Windows", version="11")),
        Lot(uai=UAI, lot_id="vieux", kind="pc", quantity=2),
        Lot(uai=UAI, lot_id="vieux", kind="pc", quantity=0),  # the last one wins: retired
    ]
    after = with_lots(UAI, held, lots)
    assert [(lot.lot_id, lot.os.version if lot.os else None) for lot in after.lots] == [
        ("cdi", "11"),
        ("salle-1", "17"),
    ]
    assert after.connectivite == held.connectivite
    assert with_lots(UAI, None, lots[1:2]).lots[0].kind == "pc"
    assert "equipement-incompatible" in evaluate(RESSOURCE.model_copy(update={"tools": []}), held).alerts
    assert "equipement-incompatible" not in evaluate(RESSOURCE.model_copy(update={"tools": []}), after).alerts


def test_an_evaluation_held_by_several_etablissements_counts_for_each_where_they_are():
    one_by_one, grouped = Bilan(), Bilan()
    held = evaluate(RESSOURCE, profil("a", 3, ("iPadOS", "12.5")), couverture(1, 10))
    where = [("14", "035", 2), ("14", "056", 1), ("17", "044", 3)]
    for academie, departement, n in where:
        for _ in range(n):
            one_by_one.add(held, [(academie, departement, 1)], 10)
    grouped.add(held, where, 10)
    assert grouped.as_json() == one_by_one.as_json()
    assert grouped.total["evalues"] == grouped.total["sous_formes"] == 6
    assert grouped.par_academie["14"]["incompatibles"] == 3
    assert {"code": "os-version", "detail": "iPadOS 12.5 < 15", "etablissements": 6} in grouped.as_json()["motifs"]


def test_the_worker_processes_are_stopped_with_the_service():
    """The resource simulation's worker processes start at the first simulation; the service's
    stop (api.py's lifespan) ends them: none is left behind."""
    from services.ressources import api_simulations

    pool = api_simulations._processes(1)
    assert pool.submit(abs, -1).result(timeout=60) == 1
    workers = list(pool._processes.values())  # the pool's own record of its processes
    assert workers and all(w.is_alive() for w in workers)
    api_simulations.stop_workers()
    assert not [w for w in workers if w.is_alive()]
    assert api_simulations._processes(1) is not pool, "a later simulation starts new ones"
    api_simulations.stop_workers()


def test_an_alert_raised_before_the_detail_s_bound_is_listed_resolved_its_detail_shortened():
    """A resolution repeats the stored alert (unvalidated): one raised before 30 November may
    hold a reason's detail over MAX_DETAIL, which the answer's model refuses (audit helper-193 #3:
    the simulation answered 500). Shortened as the rules shorten theirs."""
    from pydantic_core import to_json
    from test_lifecycle import ETAB, NOW

    from services.ressources.lifecycle import Held, transitions
    from services.ressources.rules import MAX_DETAIL
    from services.ressources.simulations import changement

    assert ETAB.uai == UAI
    evaluation = evaluate(RESSOURCE, profil("L1", 30, ("iPadOS", "12.5")), None)
    raised = transitions(UAI, "ark:/1/r", ETAB, evaluation, {}, NOW)[0]
    long_ago = {**raised.raised, "reasons": [{"code": "os-absent", "detail": "x" * (MAX_DETAIL + 100)}]}
    [resolved] = transitions(UAI, "ark:/1/r", ETAB, None, {raised.kind: Held(True, 1, to_json(long_ago).decode())}, NOW)
    [shown] = changement(resolved).reasons
    assert (shown.code, len(shown.detail), shown.detail[-1]) == ("os-absent", MAX_DETAIL, "…")
