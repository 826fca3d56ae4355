"""The simulations, served for real by ressources (uvicorn, fed through Kafka, PostgreSQL): what
they predict is what the live evaluation then does once the resource is published or the lots
declared, and a simulation writes nothing (every table's row count, the outbox, the alert topic)."""

import asyncio
import copy
import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from types import SimpleNamespace

import pytest

import contracts as c
from contracts import RessourcePubliee
from contracts.internal import COUVERTURES, PROFILS
from helpers import Said, at, couverture, event, eventually, profil_lot, record_count, ressource, send, uai
from services.ressources import api_simulations, simulations
from services.ressources.rules import Seuils
from test_read_api import NANTES, RENNES, etab, formation, lot, profil, serve_api

RID = "ark:/67375/simulation-atlas"
AILLEURS = uai("0290001")  # académie 14, département 029, open, not subscribed
ATLAS = ressource(RID)
SUBSCRIBED = [*RENNES, NANTES]


@pytest.fixture
async def api(kafka, settings):
    async with serve_api(settings) as served:
        yield served


async def stored(kafka, settings, pool) -> None:
    """The référentiel, every UAI's equipment (RENNES[0..1], NANTES and AILLEURS on iPadOS 12.5,
    RENNES[2..3] on 17; 8 Mbit/s everywhere), RENNES' coverage (2/10 at level 2), and the GAR's
    subscriptions of SUBSCRIBED to RID: everything but the resource itself."""
    b = kafka.bootstrap_servers
    await send(
        b,
        settings.topic(c.REFERENTIEL),
        [(u, etab(u, "035", "14", "53")) for u in RENNES]
        + [(NANTES, etab(NANTES, "044", "17", "52")), (AILLEURS, etab(AILLEURS, "029", "14", "53"))],
    )
    old = {*RENNES[:2], NANTES, AILLEURS}
    await send(
        b,
        settings.topic(PROFILS),
        [r for u in [*SUBSCRIBED, AILLEURS] for r in profil(u, "12.5" if u in old else "17")],
    )
    await send(b, settings.topic(COUVERTURES), [r for u in RENNES for r in formation(u)])
    subscriptions = [
        (
            u,
            event(
                c.ABONNEMENT, "/gar", {"resource_id": RID, "uai": u, "start": "2026-09-01", "end": None}, time_=at(2)
            ),
        )
        for u in SUBSCRIBED
    ]
    await send(b, settings.topic(c.CATALOGUE), subscriptions)
    await eventually(lambda: pool.fetchval("SELECT count(*) = 5 FROM abonnements"), what="the subscriptions stored")
    await eventually(lambda: pool.fetchval("SELECT count(*) = 16 FROM recus"), what="6 lots, 6 links, 4 coverages")


async def publish(kafka, settings, payload: dict, minute: int) -> None:
    await send(
        kafka.bootstrap_servers,
        settings.topic(c.CATALOGUE),
        [(RID, event(c.RESSOURCE_PUBLIEE, "/ministere", payload, time_=at(minute)))],
    )


async def snapshot(kafka, settings, pool) -> dict[str, int]:
    """Every table's row count in ressources' schema (outbox included), and the alert topic's records."""
    tables = await pool.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
        "AND table_type = 'BASE TABLE' ORDER BY table_name"
    )
    counts = {t["table_name"]: await pool.fetchval(f'SELECT count(*) FROM "{t["table_name"]}"') for t in tables}
    counts["topic " + c.ALERTES] = await record_count(kafka.bootstrap_servers, settings.topic(c.ALERTES))
    assert "outbox" in counts and "alertes" in counts, counts
    return counts


async def open_alerts(pool) -> set[tuple[str, str, str]]:
    rows = await pool.fetch("SELECT uai, resource_id, kind FROM alertes WHERE ouverte")
    return {(r["uai"], r["resource_id"], r["kind"]) for r in rows}


async def test_a_resource_simulated_then_published_gets_the_verdicts_predicted_and_nothing_is_written_before(
    kafka, settings, api
):
    client, app = api
    pool = app.state.pipeline.pool
    await stored(kafka, settings, pool)
    # The service's work at start over (its thresholds stored, every pair evaluated again with
    # them), which writes those tables between two snapshots otherwise (audit helper-189 #10).
    await eventually(lambda: pool.fetchval("SELECT count(*) = 1 FROM seuils"), what="the thresholds stored at start")
    await eventually(lambda: pool.fetchval("SELECT count(*) = 0 FROM reevaluations"), what="their re-evaluation")
    before = await snapshot(kafka, settings, pool)

    answer = await client.post("/simulations/ressource", json=ATLAS)
    assert answer.status_code == 200, answer.text
    simulated = answer.json()
    everywhere = (await client.post("/simulations/ressource", params={"population": "ouverts"}, json=ATLAS)).json()

    assert await snapshot(kafka, settings, pool) == before
    assert (await client.get(f"/ressources/{RID}")).status_code == 404  # still not in the catalogue
    # RENNES[0..1] and NANTES on 12.5: incompatible; RENNES under-trained; 8 < 10 Mbit/s everywhere.
    assert simulated["total"] == {
        "evalues": 5,
        "compatibles": 2,
        "partiels": 0,
        "incompatibles": 3,
        "sous_formes": 4,
        "formation_non_comptee": 0,
    }
    assert simulated["par_departement"]["044"]["incompatibles"] == 1
    assert simulated["motifs"] == [
        {"code": "debit", "detail": "… Mbit/s < 10", "etablissements": 5},
        {"code": "formation", "detail": "3.4 niveau 2: …/… enseignants", "etablissements": 4},
        {"code": "os-version", "detail": "iPadOS 12.5 < 15", "etablissements": 3},
    ]
    assert everywhere["total"]["evalues"] == 6 and everywhere["par_departement"]["029"]["incompatibles"] == 1

    await publish(kafka, settings, ATLAS, 3)
    await eventually(lambda: pool.fetchval("SELECT count(*) = 12 FROM alertes WHERE ouverte"), what="12 alerts")
    live = (await client.get(f"/ressources/{RID}")).json()
    assert live["total"] == _counted(simulated["total"])
    assert live["par_academie"] == {a: _counted(counts) for a, counts in simulated["par_academie"].items()}

    # A stricter revision, simulated against the resource as published: RENNES[2..3] (17) fall too.
    stricter = copy.deepcopy(ATLAS)
    stricter["requirements"][0][0]["min_version"] = "17.2"
    held = await open_alerts(pool)
    predicted = (await client.post("/simulations/ressource", json=stricter)).json()
    assert predicted["total"]["incompatibles"] == 5
    assert await open_alerts(pool) == held  # the published resource's alerts untouched by the simulation
    await publish(kafka, settings, stricter, 4)
    await eventually(
        lambda: _total(client, "incompatibles", 5), what="the stricter revision's incompatibles counted live"
    )
    assert (await client.get(f"/ressources/{RID}")).json()["total"] == _counted(predicted["total"])


def _counted(simulated: dict[str, int]) -> dict[str, int]:
    """A simulation's counts as the live ones are kept (every school's training counted there)."""
    assert simulated["formation_non_comptee"] == 0
    return {k: n for k, n in simulated.items() if k != "formation_non_comptee"}


async def test_the_training_of_a_school_of_fewer_than_5_teachers_is_not_counted(kafka, settings, api):
    """NANTES' coverage: one teacher, at no level of 3.4. Simulated with requirements the caller
    chooses, at level 1 then 2, …, its under-training would tell that teacher's level: not
    counted, nor its motif; its equipment is."""
    client, app = api
    pool = app.state.pipeline.pool
    await stored(kafka, settings, pool)
    await send(kafka.bootstrap_servers, settings.topic(COUVERTURES), couverture(NANTES, 1, 1, {"3.4": [1] + [0] * 7}))
    await eventually(lambda: pool.fetchval("SELECT count(*) = 17 FROM recus"), what="NANTES' coverage")
    probe = copy.deepcopy(ATLAS) | {"training": {"competences": [{"code": "3.4", "level": 3}], "tools": []}}
    answer = (await client.post("/simulations/ressource", json=probe)).json()
    assert answer["par_departement"]["044"] == {
        "evalues": 1,
        "compatibles": 0,
        "partiels": 0,
        "incompatibles": 1,
        "sous_formes": 0,
        "formation_non_comptee": 1,
    }
    assert (answer["total"]["sous_formes"], answer["total"]["formation_non_comptee"]) == (4, 1)
    assert {"code": "formation", "detail": "3.4 niveau 3: …/… enseignants", "etablissements": 4} in answer["motifs"]


async def test_worker_processes_count_what_the_event_loop_counts(kafka, settings, api, monkeypatch):
    """Batches of 2 UAIs, at most 2 waiting: several batches judged in spawned processes while the
    next are read, merged into the counts of one pass in this process."""
    _, app = api
    pool = app.state.pipeline.pool
    await stored(kafka, settings, pool)
    monkeypatch.setattr(simulations, "CHUNK", 2)
    monkeypatch.setattr(simulations, "IN_FLIGHT", 2)
    ressource = RessourcePubliee.model_validate(ATLAS)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as workers:
        for abonnes, departements, incompatibles in ((True, 2, 3), (False, 3, 4)):  # AILLEURS (029) on 12.5
            async with pool.acquire() as conn:
                here = await simulations.simulate_ressource(conn, ressource, abonnes, Seuils())
                there = await simulations.simulate_ressource(conn, ressource, abonnes, Seuils(), workers)
            assert there.as_json() == here.as_json()
            assert len(here.par_departement) == departements
            assert here.total == {
                "evalues": 2 + incompatibles,
                "compatibles": 2,
                "partiels": 0,
                "incompatibles": incompatibles,
                "sous_formes": 4,
                "formation_non_comptee": 0,
            }


async def test_a_worker_process_that_died_is_replaced_and_the_simulation_answered(kafka, settings, monkeypatch):
    """A worker process that died (the OOM killer, a signal) breaks its pool for good: the next
    simulation is judged by new processes, its client never told (not a 500 for a valid body)."""
    said = Said()
    monkeypatch.setattr(api_simulations, "log", said)
    async with serve_api(settings.model_copy(update={"simulation_workers": 1})) as (client, app):
        await stored(kafka, settings, app.state.pipeline.pool)
        first = await client.post("/simulations/ressource", json=ATLAS)
        assert first.status_code == 200, first.text
        [broken] = api_simulations._pools.values()
        for process in list(broken._processes.values()):
            process.kill()
            process.join()

        again = await client.post("/simulations/ressource", json=ATLAS)
        assert again.status_code == 200, again.text
        assert again.json() == first.json()
        [renewed] = api_simulations._pools.values()
        assert renewed is not broken
        assert [(w["event"], w["level"]) for w in said.lines] == [("simulation.processus_remplaces", "warning")]


async def _total(client, key: str, expected: int) -> bool:
    return (await client.get(f"/ressources/{RID}")).json()["total"][key] == expected


async def test_lots_simulated_then_declared_raise_and_resolve_what_was_predicted(kafka, settings, api):
    client, app = api
    pool = app.state.pipeline.pool
    await stored(kafka, settings, pool)
    await publish(kafka, settings, ATLAS, 3)
    await eventually(lambda: pool.fetchval("SELECT count(*) = 12 FROM alertes WHERE ouverte"), what="12 alerts")
    await eventually(lambda: pool.fetchval("SELECT count(*) = 0 FROM outbox"), what="the alerts relayed to Kafka")
    before = await snapshot(kafka, settings, pool)
    held = await open_alerts(pool)

    # RENNES[0]'s tablets replaced by recent ones; RENNES[2]'s by old ones; AILLEURS (not subscribed) too.
    lots = [lot(RENNES[0], "17"), lot(RENNES[2], "12.5"), lot(AILLEURS, "17")]
    answer = await client.post("/simulations/equipement", json={"lots": lots})
    assert answer.status_code == 200, answer.text
    predicted = answer.json()

    assert await snapshot(kafka, settings, pool) == before
    assert (predicted["etablissements"], predicted["paires"]) == (3, 2)
    assert [(a["uai"], a["kind"]) for a in predicted["resolues"]] == [(RENNES[0], "equipement-incompatible")]
    assert predicted["resolues"][0]["reasons"] == [{"code": "os-version", "detail": "iPadOS 12.5 < 15"}]
    assert [(a["uai"], a["kind"], a["reasons"]) for a in predicted["levees"]] == [
        (RENNES[2], "equipement-incompatible", [{"code": "os-version", "detail": "iPadOS 12.5 < 15"}])
    ]

    # Declared for real (as equipement publishes them): the live evaluation does just that.
    declared = [profil_lot(x["uai"], 2, quantity=10, os=x["os"]) for x in lots]
    await send(kafka.bootstrap_servers, settings.topic(PROFILS), declared)
    expected = held - {(a["uai"], RID, a["kind"]) for a in predicted["resolues"]} | {
        (a["uai"], RID, a["kind"]) for a in predicted["levees"]
    }
    await eventually(lambda: _equal(open_alerts(pool), expected), what="the predicted alerts raised and resolved")


async def test_lots_simulated_give_the_event_loop_turns_and_too_many_pairs_are_refused(
    kafka, settings, api, monkeypatch
):
    """An equipment simulation runs on the service's event loop: between two pairs evaluated the
    rest of the service (here a ticking task) is served; beyond MAX_PAIRS it is refused, naming
    the rule."""
    client, app = api
    pool = app.state.pipeline.pool
    await stored(kafka, settings, pool)
    await publish(kafka, settings, ATLAS, 3)
    await eventually(lambda: pool.fetchval("SELECT count(*) = 12 FROM alertes WHERE ouverte"), what="12 alerts")
    ticks, seen = 0, []

    async def ticking() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    def evaluate(*args):
        seen.append(ticks)
        return simulations_evaluate(*args)

    simulations_evaluate = simulations.evaluate
    monkeypatch.setattr(simulations, "evaluate", evaluate)
    monkeypatch.setattr(simulations, "YIELD_SECONDS", 0)
    lots = [lot(RENNES[0], "17"), lot(RENNES[2], "12.5"), lot(AILLEURS, "17")]
    ticker = asyncio.create_task(ticking())
    try:
        answer = await client.post("/simulations/equipement", json={"lots": lots})
    finally:
        ticker.cancel()
    assert answer.status_code == 200 and answer.json()["paires"] == 2, answer.text
    assert len(seen) == 2 and seen[0] < seen[1], "the ticking task ran between the two pairs"

    monkeypatch.setattr(simulations, "MAX_PAIRS", 1)
    refused = await client.post("/simulations/equipement", json={"lots": lots})
    assert refused.status_code == 422
    assert refused.json()["detail"] == [
        {
            "loc": ["body", "lots"],
            "msg": "lots : leurs établissements ont 2 abonnements, au plus 1 par simulation : "
            "simuler moins d'établissements à la fois",
            "type": "trop-de-paires",
        }
    ]


async def _equal(awaitable, expected) -> bool:
    return await awaitable == expected


async def test_lots_for_unknown_or_malformed_uais_are_refused_naming_them(kafka, settings, api):
    client, app = api
    await stored(kafka, settings, app.state.pipeline.pool)
    unknown = uai("0350999")
    answer = await client.post("/simulations/equipement", json={"lots": [lot(RENNES[0], "17"), lot(unknown, "17")]})
    assert answer.status_code == 422
    assert answer.json()["detail"] == [
        {
            "loc": ["body", "lots", 1, "uai"],
            "msg": f"lots[1].uai : {unknown} n'est pas dans le référentiel",
            "type": "uai-inconnu",
        }
    ]
    bad = [lot("0350042A", "17"), {**lot(RENNES[0], "17"), "quantity": -1}, {**lot(RENNES[0], "x.y")}]
    refused = (await client.post("/simulations/equipement", json={"lots": bad})).json()["detail"]
    assert [r["msg"] for r in refused] == [
        "lots[0].uai : UAI 0350042A: la lettre de contrôle devrait être F",
        "lots[1].quantity : attendu au moins 0",
        "lots[2].os.version : " + refused[2]["msg"].split(" : ", 1)[1],
    ]
    assert "x.y" in refused[2]["msg"] and "pydantic" not in refused[2]["msg"]
    async with api_simulations._running:  # another simulation under way: told when to come back
        busy = await client.post("/simulations/ressource", json=ATLAS)
    assert (busy.status_code, busy.headers["retry-after"]) == (503, "2")
    assert busy.json() == {"detail": "une simulation est déjà en cours : réessayer dans 2 s"}
    nothing = (await client.post("/simulations/equipement", json={"lots": []})).json()
    assert nothing == {"etablissements": 0, "paires": 0, "levees": [], "resolues": []}
    resource = (await client.post("/simulations/ressource", json={**ATLAS, "min_bandwidth_mbps": "dix"})).json()
    assert [r["msg"] for r in resource["detail"]] == ["min_bandwidth_mbps : attendu un nombre"]
    population = (await client.post("/simulations/ressource", params={"population": "tous"}, json=ATLAS)).json()
    assert population["detail"][0]["msg"].startswith("population : doit être abonnes ou ouverts")
    misspelt = (await client.post("/simulations/ressource", params={"populaton": "ouverts"}, json=ATLAS)).json()
    assert misspelt["detail"][0]["msg"] == "populaton : paramètre inconnu (attendus : population)"
    broken = await client.post("/simulations/ressource", content=b"{", headers={"content-type": "application/json"})
    assert broken.status_code == 422 and broken.json()["detail"][0]["msg"].startswith("corps : pas du JSON")
    # Not a JSON object (an array), JSON sent as a form (`curl -d @lots.json`), an object as a text: in French.
    form = {"content-type": "application/x-www-form-urlencoded"}
    for body, headers in ((b"[]", {"content-type": "application/json"}), (b'{"lots": []}', form)):
        told = (await client.post("/simulations/equipement", content=body, headers=headers)).json()["detail"]
        assert [r["msg"] for r in told] == ["corps : attendu un objet JSON (Content-Type: application/json)"], told
    as_text = {"lots": [lot(RENNES[0], "17") | {"os": "iPadOS"}]}
    told = (await client.post("/simulations/equipement", json=as_text)).json()["detail"]
    assert [r["msg"] for r in told] == ["lots[0].os : attendu un objet"], told
    get = await client.get("/simulations/ressource")
    assert (get.status_code, get.json()) == (405, {"detail": "méthode non permise : POST seulement à cette adresse"})


async def test_a_body_the_contract_refuses_is_not_simulated_and_a_huge_one_is_not_read(
    kafka, settings, api, monkeypatch
):
    """Judged as the contract judges a record before any model: a NUL in a text (PostgreSQL
    refuses it: this was a 500), a repeated key, NaN, bytes that are not UTF-8, nesting beyond
    what is read; and no body beyond MAX_BODY_BYTES is held."""
    client, app = api
    await stored(kafka, settings, app.state.pipeline.pool)
    json_body = {"content-type": "application/json"}
    cases = [
        (json.dumps({**ATLAS, "resource_id": "ark:/67375/a\u0000b"}).encode(), "donnees-invalides", "resource_id"),
        (json.dumps({"lots": [lot(RENNES[0], "17") | {"lot_id": "L\u0000"}]}).encode(), "donnees-invalides", "lots"),
        (b'{"resource_id": "a", "resource_id": "b"}', "json-invalide", "resource_id"),
        (b'{"lots": [], "x": NaN}', "json-invalide", "NaN"),
        (b'{"lots": [], "x": "\xff"}', "json-invalide", ""),
        (b'{"lots": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "json-invalide", ""),
    ]
    for body, code, named in cases:
        where = "/simulations/equipement" if b'"lots"' in body else "/simulations/ressource"
        answer = await client.post(where, content=body, headers=json_body)
        assert answer.status_code == 422, (body[:60], answer.status_code, answer.text[:200])
        [refused] = answer.json()["detail"]
        assert (refused["loc"], refused["type"]) == (["body"], code), refused
        assert refused["msg"].startswith("corps : ") and named in refused["msg"], refused
        assert "\x00" not in refused["msg"] and "error parsing" not in refused["msg"]
    # JSON, but more digits than int() reads: refused by the field's bound, which is named.
    for sign in ("", "-"):
        body = json.dumps({"lots": [lot(RENNES[0], "17") | {"quantity": 7}]})
        digits = body.replace('"quantity": 7', f'"quantity": {sign}{"9" * 5000}')
        assert digits != body
        answer = await client.post("/simulations/equipement", content=digits.encode(), headers=json_body)
        assert answer.status_code == 422, answer.text[:200]
        [refused] = answer.json()["detail"]
        assert refused["loc"] == ["body", "lots", 0, "quantity"] and refused["msg"].startswith("lots[0].quantity : "), (
            refused
        )
        assert "9999" not in answer.text
    monkeypatch.setattr(api_simulations, "MAX_BODY_BYTES", 1000)
    huge = json.dumps({"lots": [], "x": "x" * 2000}).encode()
    told = await client.post("/simulations/equipement", content=huge, headers=json_body)
    assert (told.status_code, told.json()) == (413, {"detail": f"corps de {len(huge)} octets : au plus 1000 octets"})

    async def chunks():  # no Content-Length: refused while read
        for _ in range(5):
            yield b" " * 400

    streamed = await client.post("/simulations/equipement", content=chunks(), headers=json_body)
    assert streamed.status_code == 413
    assert streamed.json() == {"detail": "corps de plus de 1000 octets : au plus 1000 octets"}
    # A resource's body is a record's: at most 256 KiB, whatever MAX_BODY_BYTES is.
    monkeypatch.setattr(api_simulations, "MAX_BODY_BYTES", 16 * 1024 * 1024)
    big = json.dumps({**ATLAS, "title": "x" * 300_000}).encode()
    told = await client.post("/simulations/ressource", content=big, headers=json_body)
    assert told.status_code == 413 and told.json()["detail"].endswith(f"au plus {256 * 1024} octets")


async def test_while_a_simulation_runs_another_is_refused_before_its_body_is_read(api, monkeypatch):
    """Bodies read at once would each hold their memory: the turn is taken first."""
    client, _ = api
    read: list[str] = []
    real = api_simulations.read_capped

    async def reading(chunks, length, cap):
        read.append(length)
        return await real(chunks, length, cap)

    monkeypatch.setattr(api_simulations, "read_capped", reading)
    async with api_simulations._running:
        busy = await client.post("/simulations/equipement", json={"lots": []})
    assert (busy.status_code, busy.headers["retry-after"], read) == (503, "2", [])
    assert (await client.post("/simulations/equipement", json={"lots": []})).status_code == 200 and len(read) == 1


async def test_a_client_gone_before_its_whole_body_is_a_line_not_an_error(api, monkeypatch, caplog):
    """Starlette's ClientDisconnect, raised while the body is read, went to the catch-all: a 500
    nobody read and an ERROR line with its traceback for each interrupted upload, which anyone
    can send. The next simulation is served."""
    client, _ = api
    said: list[str] = []
    monkeypatch.setattr(api_simulations, "log", SimpleNamespace(info=lambda e, **_: said.append(e)))
    _, writer = await asyncio.open_connection("127.0.0.1", client.base_url.port)
    writer.write(
        b"POST /simulations/equipement HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100000\r\n\r\n{"lots": ['
    )
    await writer.drain()
    writer.close()
    await eventually(lambda: asyncio.sleep(0, "simulation.abandonnee" in said), what="the simulation said abandoned")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert (await client.post("/simulations/equipement", json={"lots": []})).status_code == 200
