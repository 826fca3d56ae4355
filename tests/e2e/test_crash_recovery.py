"""A service killed with SIGKILL in the middle of a stream loses nothing and applies nothing
twice: offsets are committed only after the database commit, the inbox absorbs the replay,
and the outbox republishes with the same CloudEvents ids."""

import asyncio
import json
from collections import defaultdict

import asyncpg
import pytest

import contracts as c
from contracts.internal import PROFILS
from deploy.local.processes import ServiceProcesses
from helpers import TopicReader, at, event, eventually, record_count
from partner import declare, partenaires

pytestmark = pytest.mark.e2e

UAIS = [f"0351{n:03d}" + c.uai_check_letter(f"0351{n:03d}") for n in range(50)]
LOTS_PER_UAI = 40


def college(uai: str) -> dict:
    return event(
        c.ETABLISSEMENT,
        "/ministere",
        {
            "uai": uai,
            "nom": f"Collège {uai}",
            "type": "college",
            "statut": "public",
            "code_commune": "35238",
            "code_departement": "035",
            "code_academie": "14",
            "code_region": "53",
            "ouvert": True,
        },
        time_=at(0),
    )


def lot(uai: str, n: int) -> dict:
    return event(
        c.LOT,
        "/collectivites/departements/035",
        {
            "uai": uai,
            "lot_id": f"lot-{n}",
            "kind": "ordinateur",
            "quantity": n + 1,
            "os": {"name": "Windows", "version": "11"},
            "browsers": [],
        },
        time_=at(n + 1),
    )


def record(topic: str, key: str, event: dict) -> tuple[str, str, bytes]:
    return topic, key, json.dumps(event).encode()


async def test_sigkill_mid_stream_loses_and_duplicates_nothing(kafka, database_url, topic_prefix, identite, tmp_path):
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "DATABASE_URL": database_url,
        "TOPIC_PREFIX": topic_prefix,
        "OUTBOX_POLL_MS": "100",
        "LOG_FORMAT": "json",
        "BATCH_MAX_RECORDS": "50",
        "JWKS_FILE": str(identite.jwks_path),
    }
    # equipement, and the passerelle its lots come through
    procs = ServiceProcesses(env, log_dir=tmp_path, names=("equipement", "passerelle"), credentials=kafka.credentials)
    procs.start()
    conn = await asyncpg.connect(database_url)
    try:
        procs.wait_healthy()
        partners = partenaires(procs, kafka, identite, topic_prefix)
        await declare(partners, [record(c.REFERENTIEL, u, college(u)) for u in UAIS])
        await eventually(
            lambda: conn.fetchval("SELECT count(*) = $1 FROM equipement.etablissements", len(UAIS)),
            what="the référentiel",
        )
        lots = [record(c.EQUIPEMENT, u, lot(u, n)) for n in range(LOTS_PER_UAI) for u in UAIS]
        total = len(lots)
        async with TopicReader(kafka.bootstrap_servers, topic_prefix + PROFILS) as profils:
            # Kill while the stream is being handled: some batches committed, others not yet. The
            # partners go on posting meanwhile (the passerelle lives): waiting for them first, a
            # fast hour let equipement handle the whole stream before the first look.
            declaring = asyncio.create_task(declare(partners, lots))
            applied = await eventually(
                lambda: conn.fetchval(
                    "SELECT count(*) FROM equipement.inbox WHERE type = $1 HAVING count(*) > 0", c.LOT
                ),
                timeout=60,
                what="the first batches",
            )
            procs.kill("equipement")
            await declaring
            assert applied < total, "the stream finished before the kill: make it longer"
            procs.restart("equipement")
            procs.wait_healthy()
            await eventually(
                lambda: conn.fetchval("SELECT count(*) = $1 FROM equipement.inbox WHERE type = $2", total, c.LOT),
                timeout=120,
                what="every lot applied after the restart",
            )
            await eventually(
                lambda: conn.fetchval("SELECT count(*) = 0 FROM equipement.outbox"), what="the outbox drained"
            )
            final = {
                f"{r['uai']}/{r['entity']}".encode(): r["version"]
                for r in await conn.fetch("SELECT uai, entity, version FROM equipement.publies")
            }

            def complete(records):
                last = {}
                for r in records:
                    last[r.key] = max(last.get(r.key, 0), json.loads(r.value)["data"]["version"])
                return last == final

            await profils.wait_for(complete, timeout=60, what="every lot's last version published")
            # And every record published read: a copy published twice may come after its key's last version.
            published = await record_count(kafka.bootstrap_servers, topic_prefix + PROFILS)
            await profils.wait_for(lambda rs: len(rs) >= published, timeout=60, what="every record published read")
        assert await conn.fetchval("SELECT count(*) FROM equipement.lots") == total
        assert await conn.fetchval("SELECT count(*) FROM equipement.inbox WHERE outcome = 'stale'") == 0
        ids_per_version: dict[tuple[bytes, int], set[str]] = defaultdict(set)
        for r in profils.records:
            e = json.loads(r.value)
            ids_per_version[(r.key, e["data"]["version"])].add(e["id"])
        # A record the relay published twice (killed between publish and delete) keeps its id,
        # so consumers' inboxes ignore the copy; and no version is skipped.
        assert all(len(ids) == 1 for ids in ids_per_version.values())
        for key, version in final.items():
            assert {v for (k, v) in ids_per_version if k == key} == set(range(1, version + 1))
        assert len(final) == total, "one record per lot, every lot published"
    finally:
        await conn.close()
        procs.stop()
