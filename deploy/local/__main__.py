"""`./dev up` and `./dev demo`: the whole platform on this machine.

    python -m deploy.local up          Kafka, PostgreSQL and the three services; Ctrl-C stops all
    python -m deploy.local demo        the same, then plays a scenario and shows the alerts
    python -m deploy.local demo --once ... and stops once the scenario is over (CI, scripts)

Every run starts from empty storage in a temporary directory (removed at the end), so the
scenario's alerts appear each time; the Kafka jars stay cached between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer

import contracts as c
from deploy.local import scenario
from deploy.local.kafka import KAFKA_VERSION, LocalKafka, cache_root
from deploy.local.ports import port_free
from deploy.local.postgres import LocalPostgres
from deploy.local.processes import ServiceProcesses
from deploy.referentiel.publish import publish_etablissements
from deploy.topic_admin import create_topics
from deploy.topology import platform_topics
from services.common.runtime.secrets import redact

DATABASE = "former_equiper_outiller"


def say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


class Platform:
    def __init__(self, data_dir: Path, log_level: str = "INFO"):
        self.log_level = log_level
        self.kafka = LocalKafka(data_dir / "kafka", port=9092 if port_free(9092) else None)
        self.postgres = LocalPostgres(data_dir / "postgres")
        self.services: ServiceProcesses | None = None
        self.database_url = ""

    def start(self) -> None:
        t0 = time.monotonic()
        say(f"starting Apache Kafka {KAFKA_VERSION} (KRaft, single node; jars cached in {cache_root()})")
        self.kafka.start()
        say(f"Kafka ready on {self.kafka.bootstrap_servers} ({time.monotonic() - t0:.1f} s)")
        t1 = time.monotonic()
        self.postgres.start()
        self.database_url = asyncio.run(self.postgres.create_database(DATABASE))
        where = "DATABASE_URL" if self.postgres.external_url else "embedded PostgreSQL 18"
        say(f"PostgreSQL ready ({where}, {time.monotonic() - t1:.1f} s): {redact(self.database_url)}")
        asyncio.run(create_topics(self.kafka.bootstrap_servers, platform_topics()))
        say(f"topics: {', '.join(t.name for t in platform_topics())}")
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "DATABASE_URL": self.database_url,
            "LOG_FORMAT": os.environ.get("LOG_FORMAT", "console" if sys.stdout.isatty() else "json"),
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", self.log_level),
        }
        self.services = ServiceProcesses(env, supervise=True)  # a service that exits is restarted
        self.services.start()
        self.services.wait_healthy()
        ports = ", ".join(f"{n} http://127.0.0.1:{p}/health" for n, p in self.services.ports.items())
        say(f"services healthy: {ports}")
        say(f"platform up in {time.monotonic() - t0:.1f} s")

    def stop(self) -> None:
        say("stopping services, PostgreSQL and Kafka")
        if self.services:
            self.services.stop()
        self.postgres.stop()
        self.kafka.stop()


async def _wait(database_url: str, query: str, expected: int, what: str, timeout: float = 120) -> None:
    """Until `query` returns `expected` (a count): the services work in their own time."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout
        while (value := await conn.fetchval(query)) != expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: {value} after {timeout} s, expected {expected}")
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


class AlertTail:
    """The dashboard's view: every alert event on alertes.compatibilite.v1, in order."""

    def __init__(self, bootstrap: str):
        self.consumer = AIOKafkaConsumer(
            c.ALERTES, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
        )
        self.events: list[dict] = []

    async def drain(self) -> None:
        while batch := await self.consumer.getmany(timeout_ms=1000):
            self.events += [json.loads(r.value) for records in batch.values() for r in records]

    def summary(self, type_: str) -> str:
        counts = Counter(e["data"]["kind"] for e in self.events if e["type"] == type_)
        return "\n".join(f"      {kind:28s} {counts.get(kind, 0):4d}" for kind in c.ALERT_KINDS)

    def example(self, kind: str) -> str:
        d = next((e["data"] for e in self.events if e["type"] == c.ALERTE_LEVEE and e["data"]["kind"] == kind), None)
        if d is None:
            return f"      {kind}: none"
        reasons = "; ".join(f"{r['code']}: {r['detail']}" for r in d["reasons"])
        return f"      {kind} at {d['uai']} for {d['resource_id']}: {reasons}"


async def play(platform: Platform) -> AlertTail:
    """The scenario; returns the dashboard's view of the alerts."""
    bootstrap, db = platform.kafka.bootstrap_servers, platform.database_url
    etabs = scenario.referentiel()
    equipped = [e for e in etabs if e.ouvert and scenario.equipeur(e)]
    types = Counter(e.type for e in etabs)
    say(
        f"ministère: référentiel of {len(etabs)} synthetic établissements of département {scenario.DEPARTEMENT} "
        f"({', '.join(f'{n} {t}' for t, n in sorted(types.items()))})"
    )
    await publish_etablissements(bootstrap, etabs)
    for schema in ("formation", "equipement", "ressources"):
        await _wait(db, f"SELECT count(*) FROM {schema}.etablissements", len(etabs), f"{schema}'s référentiel")
    sent = await scenario.send(bootstrap, scenario.declarations(etabs))
    say(
        f"communes, département 035, région 53 and rectorat 14: {sent} declarations (lots, connectivity, "
        "affectations, trainings)"
    )
    # Every declaration applied, then ressources holds the latest version of every profile and
    # coverage the other two published.
    await _wait(
        db,
        f"SELECT (SELECT count(*) FROM equipement.inbox WHERE type <> '{c.ETABLISSEMENT}') "
        f"+ (SELECT count(*) FROM formation.inbox WHERE type <> '{c.ETABLISSEMENT}')",
        sent,
        "declarations",
    )
    for producer, what in (("equipement", "equipment records"), ("formation", "training coverage records")):
        await _wait(
            db,
            f"SELECT count(*) FROM {producer}.publies p LEFT JOIN ressources.recus r "
            "USING (type, uai, entity, version) WHERE r.uai IS NULL",
            0,
            what,
        )
    subs = list(scenario.catalogue(etabs))
    say(f"ministère: 3 resources; GAR: {len(subs) - 3} subscriptions")
    await scenario.send(bootstrap, subs)
    await _wait(db, "SELECT count(*) FROM ressources.abonnements", len(subs) - 3, "subscriptions")
    await _wait(db, "SELECT count(*) FROM ressources.outbox", 0, "alerts published")
    tail = AlertTail(bootstrap)
    await tail.consumer.start()
    try:
        await tail.drain()
        say(f"alerts raised on {c.ALERTES}, by kind:\n{tail.summary(c.ALERTE_LEVEE)}")
        say("one of each:\n" + "\n".join(tail.example(k) for k in c.ALERT_KINDS))
        sent = await scenario.send(bootstrap, scenario.renovation(etabs))
        say(f"département 035 replaces the old computers of its collèges ({sent} lots)")
        await _wait(db, "SELECT count(*) FROM equipement.outbox", 0, "new profiles published")
        await _wait(db, "SELECT count(*) FROM ressources.outbox", 0, "alerts published")
        await tail.drain()
        say(f"alerts resolved, by kind:\n{tail.summary(c.ALERTE_RESOLUE)}")
    finally:
        await tail.consumer.stop()
    assert platform.services is not None, "started by Platform.start"
    _show_api(platform.services.ports["ressources"], next(e.uai for e in equipped if e.type == "college"))
    return tail


def _show_api(port: int, uai: str) -> None:
    base = f"http://127.0.0.1:{port}"
    say(f"the read API for dashboards (OpenAPI: {base}/docs):")
    for path in (
        "/alertes?code_departement=035&state=open&limit=2",
        f"/etablissements/{uai}",
        f"/ressources/{scenario.MANUEL}",
    ):
        with urllib.request.urlopen(base + path, timeout=10) as response:
            body = json.dumps(json.loads(response.read()), ensure_ascii=False, indent=1)
        lines = body.splitlines()
        print(
            f"\n  $ curl '{base}{path}'\n"
            + "\n".join("    " + line for line in lines[:25])
            + ("\n    …" if len(lines) > 25 else ""),
            flush=True,
        )
    print(f"\n  live stream of alert changes (Server-Sent Events): curl -N '{base}/alertes/flux'\n", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=("up", "demo"))
    parser.add_argument("--once", action="store_true", help="demo: stop when the scenario is over")
    args = parser.parse_args(argv)

    data_dir = Path(tempfile.mkdtemp(prefix="feo-run-"))
    # The demo's story is in its own lines; the services' per-event logs would bury it
    # (LOG_LEVEL=INFO ./dev demo shows them).
    platform = Platform(data_dir, log_level="WARNING" if args.command == "demo" else "INFO")
    # SIGTERM (a stop command, CI) stops as cleanly as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        platform.start()
        if args.command == "demo":
            asyncio.run(play(platform))
        if not (args.command == "demo" and args.once):
            say("running; Ctrl-C stops everything")
            while True:
                time.sleep(3600)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        platform.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
