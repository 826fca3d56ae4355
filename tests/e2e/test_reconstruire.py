"""`python -m deploy.reconstruire SERVICE` while the platform runs: each service's state rebuilt
from the log, row for row the original, nothing published again; then a rebuild whose rules
differ (a stricter threshold) publishes exactly the differences, with the next ids."""

import asyncio
import json
import os
import re
import subprocess
import sys
from datetime import datetime

import asyncpg
import pytest
from aiokafka import TopicPartition

import contracts as c
from contracts.internal import PROFILS
from deploy.local import scenario
from deploy.rattrapage import read_topic
from helpers import event
from partner import declare
from platform_state import OUTPUTS, SERVICES, end_offsets, play_morning, settled, snapshot
from services.ressources.lifecycle import event_id

pytestmark = pytest.mark.e2e


def reconstruire(service: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "deploy.reconstruire", service],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"rebuild of {service} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


async def test_each_service_is_rebuilt_from_the_log_while_it_runs(
    kafka, database_url, topic_prefix, platform, partners
):
    bootstrap = kafka.bootstrap_servers
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DATABASE_URL": database_url, "TOPIC_PREFIX": topic_prefix}
    await play_morning(kafka, partners, database_url, topic_prefix)
    conn = await asyncpg.connect(database_url)
    try:  # as `./dev dead-letters replay` marks what it replayed: replayed once, rebuilt or not
        await conn.execute("UPDATE equipement.dead_letters SET replayed_at = '2026-11-30T12:00:00Z'")
    finally:
        await conn.close()
    before = {s: await snapshot(database_url, s) for s in SERVICES}
    assert before["ressources"]["alertes"] and before["equipement"]["dead_letters"], "the scenario has alerts, refusals"
    published = await end_offsets(bootstrap, [topic_prefix + t for t in OUTPUTS])

    for service in SERVICES:
        out = reconstruire(service, env)
        assert "0 records differed from what was published" in out, out
        await settled(bootstrap, database_url, topic_prefix)
        assert await snapshot(database_url, service) == before[service], f"{service} rebuilt differs"
    assert await end_offsets(bootstrap, [topic_prefix + t for t in OUTPUTS]) == published, "nothing published again"
    conn = await asyncpg.connect(database_url)
    try:
        formers = await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE '%\\_avant\\_%' ORDER BY 1")
        assert [r["nspname"].split("_avant_")[0] for r in formers] == sorted(SERVICES)
        held = {r["alert_id"]: (r["ouverte"], r["cycle"]) for r in await conn.fetch("SELECT * FROM ressources.alertes")}
    finally:
        await conn.close()

    # Stricter rules (every device compatible, every teacher trained): only the alerts they
    # change go out, as raises of their next cycle; the others are not announced again.
    stream = topic_prefix + c.ALERTES
    offsets = await end_offsets(bootstrap, [stream])
    out = reconstruire("ressources", {**env, "MIN_COMPATIBLE_SHARE": "1", "MIN_TRAINING_COVERAGE": "1"})
    await settled(bootstrap, database_url, topic_prefix)
    new = [
        json.loads(r.value)
        for r in await read_topic(bootstrap, stream)
        if r.offset >= offsets[TopicPartition(r.topic, r.partition)]
    ]
    told = [(e["type"].rsplit(".", 2)[-2], e["data"]["uai"], e["data"]["resource_id"], e["id"]) for e in new]
    assert 0 < len(new) == int(re.search(r"\((\d+) records differed", out).group(1)), (out, told)
    for e in new:
        alert = e["data"]["alert_id"]
        opened, cycle = held.get(alert, (False, 0))
        assert (e["type"], opened) == (c.ALERTE_LEVEE, False)
        assert e["data"]["kind"] in ("equipement-partiel", "formation-insuffisante")
        assert e["id"] == event_id(alert, cycle + 1, "levee", datetime.fromisoformat(e["data"]["raised_at"]))
    conn = await asyncpg.connect(database_url)
    try:
        opened_now = {r["alert_id"] for r in await conn.fetch("SELECT alert_id FROM ressources.alertes WHERE ouverte")}
    finally:
        await conn.close()
    assert opened_now == {a for a, (o, _) in held.items() if o} | {e["data"]["alert_id"] for e in new}


async def test_nothing_is_lost_or_doubled_across_the_switch(kafka, database_url, topic_prefix, platform, partners):
    """Declarations keep coming while equipement is rebuilt: each is applied once, in the rebuilt
    schema when it came after the switch, and its record published once."""
    bootstrap = kafka.bootstrap_servers
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DATABASE_URL": database_url, "TOPIC_PREFIX": topic_prefix}
    etabs = await play_morning(kafka, partners, database_url, topic_prefix, count=30)
    ecoles = [e for e in etabs if e.type == "ecole" and e.ouvert]
    sent = 0

    async def arrive() -> None:
        nonlocal sent
        e = ecoles[sent % len(ecoles)]
        lot = {"uai": e.uai, "lot_id": f"arrivee-{sent}", "kind": "tablette", "quantity": 5, "os": None, "browsers": []}
        declared = json.dumps(event(c.LOT, scenario.equipeur(e), lot)).encode()
        await declare(partners, [(c.EQUIPEMENT, e.uai, declared)])
        sent += 1
        await asyncio.sleep(0.02)

    rebuild = asyncio.create_task(asyncio.to_thread(reconstruire, "equipement", env))
    while not rebuild.done():
        await arrive()
    for _ in range(10):  # and after the switch
        await arrive()
    await rebuild
    await settled(bootstrap, database_url, topic_prefix)

    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM equipement.lots WHERE lot_id LIKE 'arrivee-%'")
        former = await conn.fetchval("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'equipement\\_avant\\_%'")
        before_switch = await conn.fetchval(f"SELECT count(*) FROM {former}.lots WHERE lot_id LIKE 'arrivee-%'")
    finally:
        await conn.close()
    records = [r for r in await read_topic(bootstrap, topic_prefix + PROFILS) if b"/arrivee-" in r.key]
    assert stored == sent and len(records) == sent, f"{sent} sent, {stored} stored, {len(records)} published"
    assert 0 < before_switch < sent, "the switch happened while declarations were coming"
