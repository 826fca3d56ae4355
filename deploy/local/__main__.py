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
import socket
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer

import contracts as c
from deploy.local import scenario
from deploy.local.kafka import KAFKA_VERSION, LocalKafka, cache_root, create_topics
from deploy.local.postgres import LocalPostgres
from deploy.local.processes import ServiceProcesses
from deploy.topology import platform_topics

DATABASE = "former_equiper_outiller"


def say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class Platform:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.kafka = LocalKafka(data_dir / "kafka", port=9092 if _port_free(9092) else None)
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
        say(f"PostgreSQL ready ({where}, {time.monotonic() - t1:.1f} s): {self.database_url}")
        asyncio.run(create_topics(self.kafka.bootstrap_servers, platform_topics()))
        say(f"topics: {', '.join(t.name for t in platform_topics())}")
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "DATABASE_URL": self.database_url,
            "LOG_FORMAT": os.environ.get("LOG_FORMAT", "console" if sys.stdout.isatty() else "json"),
        }
        self.services = ServiceProcesses(env)
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


def _show_alert(value: bytes) -> dict:
    event = json.loads(value)
    d = event["data"]
    verb = "RAISED  " if event["type"] == c.ALERTE_LEVEE else "RESOLVED"
    reasons = "; ".join(f"{r['code']}: {r['detail']}" for r in d["reasons"])
    print(f"\n  ALERT {verb} {d['kind']} at {d['uai']} for {d['resource_id']}\n"
          f"        {reasons}  (compatible {d['compatible']}/{d['devices']})\n", flush=True)
    return event


async def _wait_row(database_url: str, table: str, uai: str, timeout: float = 60) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout
        while not await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table} WHERE uai = $1)", uai):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{table} never received {uai}")
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def play(platform: Platform) -> list[dict]:
    """The scenario; returns the alerts seen, in order."""
    bootstrap = platform.kafka.bootstrap_servers
    alerts = AIOKafkaConsumer(c.ALERTES, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await alerts.start()
    seen: list[dict] = []

    async def until(type_: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e["type"] == type_ for e in seen):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {type_} within {timeout} s")
            for records in (await alerts.getmany(timeout_ms=500)).values():
                seen.extend(_show_alert(r.value) for r in records)

    try:
        say(f"ministère: référentiel entry of collège {scenario.UAI}")
        await scenario.send(bootstrap, scenario.referentiel())
        for schema in ("equipement", "ressources"):
            await _wait_row(platform.database_url, f"{schema}.etablissements", scenario.UAI)
        say("département 035: 30 tablets on iPadOS 12.5")
        await scenario.send(bootstrap, scenario.old_tablets())
        await _wait_row(platform.database_url, "ressources.profils", scenario.UAI)
        say(f"ministère publishes {scenario.RESOURCE} (iPadOS ≥ 15 or Windows ≥ 10, one TNI); the GAR subscribes the collège")
        await scenario.send(bootstrap, scenario.catalogue())
        await until(c.ALERTE_LEVEE)
        say("département 035: tablets updated to iPadOS 17.1, a TNI installed in room 12")
        await scenario.send(bootstrap, scenario.fix())
        await until(c.ALERTE_RESOLUE)
    finally:
        await alerts.stop()
    say(f"scenario done: {sum(e['type'] == c.ALERTE_LEVEE for e in seen)} alert(s) raised, "
        f"{sum(e['type'] == c.ALERTE_RESOLUE for e in seen)} resolved")
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.local", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("up", "demo"))
    parser.add_argument("--once", action="store_true", help="demo: stop when the scenario is over")
    args = parser.parse_args(argv)

    data_dir = Path(tempfile.mkdtemp(prefix="feo-run-"))
    platform = Platform(data_dir)
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
