"""The GLPI adapter as a collectivité runs it (`python -m deploy.partenaires.glpi`, a process)
posting the agent samples to the real passerelle (served in this process) with a token of the
local identity provider: the lots it may declare reach equipement's topic with the token's
principal, the one it may not is refused by code, and the summary says so; with a state file,
a lot gone from the next inventory is retired."""

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

import contracts as c
from helpers import TopicReader, at, event, eventually, record_count, send, uai
from services.passerelle.settings import PasserelleSettings
from test_passerelle import serve

DEPARTEMENT = "/collectivites/departements/035"
COLLEGE, LYCEE = uai("0350001"), uai("0350002")
ROOT = Path(__file__).resolve().parents[2]


def etablissement(code: str, type_: str) -> dict:
    data = {
        "uai": code,
        "nom": f"{type_} {code}",
        "type": type_,
        "statut": "public",
        "code_commune": "35238",
        "code_departement": "035",
        "code_academie": "14",
        "code_region": "53",
        "ouvert": True,
    }
    return event(c.ETABLISSEMENT, "/ministere", data, subject=code, time_=at(0))


async def glpi(*argv: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "deploy.partenaires.glpi",
        *argv,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_adapter_posts_the_lots_through_the_passerelle_as_the_collectivite(
    kafka, settings, identite, shared_data, tmp_path
):
    referentiel = [(COLLEGE, etablissement(COLLEGE, "college")), (LYCEE, etablissement(LYCEE, "lycee"))]
    await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), referentiel)
    mapping = tmp_path / "correspondance.csv"
    # The phone's folder is mapped to a lycée: the région's to declare, not the département's.
    mapping.write_text(f"critere,valeur,uai\ntag,000005,{COLLEGE}\ndossier,glpi,{LYCEE}\n")
    argv = (str(shared_data / "glpi"), "--correspondance", str(mapping), "--declarant", DEPARTEMENT)
    env = {**os.environ, "PASSERELLE_JETON": identite.jeton(DEPARTEMENT, subject="glpi-ille-et-vilaine")}
    code, printed, _ = await glpi(*argv, "--dry-run", env=env)
    assert code == 0
    expected = {(e["data"]["uai"], e["data"]["lot_id"]): e for e in map(json.loads, printed.splitlines())}

    own = PasserelleSettings.of(settings).model_copy(update={"jwks_file": str(identite.jwks_path)})
    async with serve(own) as (client, api):
        pool = api.state.passerelle.pool
        await eventually(lambda: pool.fetchval("SELECT count(*) = 2 FROM etablissements"), what="the référentiel")
        async with TopicReader(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT)) as topic:
            state = tmp_path / "etat.json"
            sending = ("--passerelle", str(client.base_url), "--etat", str(state))
            code, _, summary = await glpi(*argv, *sending, env=env)
            assert code == 1, summary  # one lot refused
            assert "passerelle : 2 lots acceptés, 1 refusés" in summary
            assert "refusés, hors-competence : 1" in summary
            # written before the passerelle answered: exactly the accepted lots, nothing else
            assert await record_count(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT)) == 2
            await topic.wait_for(lambda records: len(records) >= 2, what="the collège's two lots")
            written = {}
            for record in topic.records:
                lot = json.loads(record.value)
                written[(lot["data"]["uai"], lot["data"]["lot_id"])] = lot
                assert record.key == COLLEGE.encode()
                assert dict(record.headers)[c.PRINCIPAL_HEADER] == b"glpi-ille-et-vilaine"
            assert len(written) == 2 and written == {key: e for key, e in expected.items() if key[0] == COLLEGE}
            first_time = next(e["time"] for (u, _), e in expected.items() if u == COLLEGE)  # its own date
            held = json.loads(state.read_text())
            assert held["dates"] == {COLLEGE: first_time} and len(held["inventaires"][COLLEGE]) == 2
            assert {k: v for k, v in held.items() if k not in ("envois", "dates", "inventaires")} == {
                "declarant": DEPARTEMENT,
                "date": first_time,
                "lots": {COLLEGE: {lot: e["data"]["kind"] for (u, lot), e in expected.items() if u == COLLEGE}},
            }, "the accepted lots, not the refused one"
            assert {u: {lot: sent[1] for lot, sent in lots.items()} for u, lots in held["envois"].items()} == {
                COLLEGE: {lot: e["id"] for (u, lot), e in expected.items() if u == COLLEGE}
            }, "each accepted lot's event"

            # The next export no longer has computer_1, the newest device: its lot is retired and
            # the others declared at the collège's date last sent (the export's own, computer_3's,
            # is older: stale, where the retirement was not).
            later = tmp_path / "glpi"
            shutil.copytree(shared_data / "glpi", later, ignore=shutil.ignore_patterns("computer_1.json"))
            code, printed, _ = await glpi(*argv[1:], str(later), "--dry-run", env=env)
            remaining = {(e["data"]["uai"], e["data"]["lot_id"]) for e in map(json.loads, printed.splitlines())}
            [(_, gone)] = [key for key in expected if key[0] == COLLEGE and key not in remaining]
            code, _, summary = await glpi(*argv[1:], str(later), *sending, env=env)
            assert code == 1 and "lots retirés (disparus de l'inventaire depuis l'état précédent) : 1" in summary
            records = await topic.wait_for(lambda records: len(records) >= 4, what="the second run's lots")
            retired = [json.loads(r.value)["data"] for r in records[2:] if json.loads(r.value)["data"]["quantity"] == 0]
            assert [(lot["uai"], lot["lot_id"]) for lot in retired] == [(COLLEGE, gone)]
            events = [json.loads(r.value) for r in records[2:]]
            assert [e["time"] for e in events if e["data"]["quantity"] == 0] == [first_time]
            assert {e["time"] for e in events if e["data"]["uai"] == COLLEGE} == {first_time}
            assert gone not in json.loads(state.read_text())["lots"][COLLEGE]
            assert len(json.loads(state.read_text())["lots"][COLLEGE]) == 1
            [retirement] = [e for e in events if e["data"]["quantity"] == 0]
            assert json.loads(state.read_text())["envois"][COLLEGE][gone][1] == retirement["id"]

            # computer_1 back, as it was: its lot is declared again, by an event equipement does
            # not take for the first run's (the same id was a repeat to its inbox: the lot stayed
            # retired, though the passerelle answered accepted).
            code, _, summary = await glpi(*argv, *sending, env=env)
            assert code == 1 and "lots retirés" not in summary, summary  # the lycée's lot refused, as before
            ofgone = lambda rs: [json.loads(r.value) for r in rs if json.loads(r.value)["data"]["lot_id"] == gone]  # noqa: E731
            now = await topic.wait_for(lambda rs: ofgone(rs[4:]), what="the lot declared again")
            [first], [again] = ofgone(records[:2]), ofgone(now[4:])
            assert again["data"] == first["data"] and again["time"] == first["time"] and again["id"] != first["id"]
            held = json.loads(state.read_text())
            assert held["envois"][COLLEGE][gone][1] == again["id"] and gone in held["lots"][COLLEGE]
