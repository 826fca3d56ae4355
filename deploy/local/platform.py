"""The whole platform on this machine: Kafka, PostgreSQL and the four services, on stable
ports, with Kafka's and PostgreSQL's data in one directory (`datadir.py`).

`start()` first takes the data directory (no second platform on it), checks that its ports are
free (never moving to others: clients are told where to connect), reaches the database
(DATABASE_URL's, else an embedded PostgreSQL in the data directory) and checks it goes with the
Kafka (`pairing.py`); anything in the way is `Refused`, in one line, before Kafka starts. Then
Kafka (secured: SASL/SCRAM over TLS), the topics, their ACLs (`deploy.acl`), and the services,
each as its own Kafka principal. The runtime's own clients (topics, the demo's partners) are
`admin`: its access is put in this process's environment (KAFKA_*), where they read it. The
local identity provider (`deploy.identite`, its keys in the data directory) signs the tokens of
partners posting to the passerelle, which checks them against its JWKS file.
`stop()` stops what was started, in reverse order, each step whatever became of the previous
ones, once.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import asyncpg

from deploy import acl
from deploy.identite import IdentiteLocale
from deploy.local import pairing
from deploy.local.console import say
from deploy.local.datadir import DataDir, Refused, data_root, running_platforms
from deploy.local.kafka import KAFKA_VERSION, LocalKafka, cache_root
from deploy.local.kafka.cluster import LocalKafkaCluster
from deploy.local.kafka.tls import tls_dir
from deploy.local.ports import port_free
from deploy.local.postgres import LocalPostgres, ensure_database
from deploy.local.processes import ServiceProcesses
from deploy.topic_admin import create_topics
from deploy.topology import platform_topics
from services.common.runtime.secrets import redact

DATABASE = "former_equiper_outiller"
"""The database of the embedded PostgreSQL (with DATABASE_URL, the one it names)."""


@dataclass(frozen=True)
class Ports:
    kafka: int = 9092
    postgres: int = 5432  # the embedded PostgreSQL's
    http: int = 8000  # ressources (its read API); formation, equipement and the passerelle on the next three

    def services(self) -> dict[str, int]:
        return {
            "ressources": self.http,
            "formation": self.http + 1,
            "equipement": self.http + 2,
            "passerelle": self.http + 3,
        }


class Platform:
    def __init__(
        self,
        data: DataDir,
        ports: Ports,
        *,
        fresh: bool = False,
        services: bool = True,
        log_level: str = "INFO",
        brokers: int = 1,
    ):
        self.data = data
        self.ports = ports
        self.fresh = fresh
        self.with_services = services
        self.log_level = log_level
        self.external_url = os.environ.get("DATABASE_URL") or None
        # One node, or a cluster: its client ports from KAFKA_PORT on, every topic on three nodes.
        self.kafka: LocalKafka | LocalKafkaCluster = (
            LocalKafka(data.kafka, port=ports.kafka)
            if brokers == 1
            else LocalKafkaCluster(data.kafka, brokers, first_port=ports.kafka)
        )
        self.brokers = brokers
        self.identite = IdentiteLocale(data.path / "identite")
        self.services: ServiceProcesses | None = None
        self.database_url = ""
        self._started = ExitStack()
        self._servers_started = False

    def start(self) -> None:
        t0 = time.monotonic()
        claimed = self._claimed_ports()
        self.data.lock(claimed)
        self._started.callback(self.data.unlock)
        _refuse_busy(claimed)
        cluster_id = None if self.fresh else self.kafka.cluster_id
        if self.external_url:
            self.database_url = self.external_url
            self._reach_external_database()
            self._check_pairing(cluster_id)
            say(f"PostgreSQL: DATABASE_URL {redact(self.database_url)}")
        if self.fresh:
            self.data.wipe()
            say(f"starting from empty storage in {self.data.path} (Kafka and PostgreSQL emptied)")
        self._servers_started = True
        self._started.callback(say, f"stopped; data kept in {self.data.path}")
        if not self.external_url:
            self._start_embedded_postgres(cluster_id)
        nodes = "single node" if self.brokers == 1 else f"{self.brokers} nodes, each topic on three"
        say(f"starting Apache Kafka {KAFKA_VERSION} (KRaft, {nodes}; jars cached in {cache_root()})")
        t1 = time.monotonic()
        self._started.callback(self.kafka.stop)
        # Paired as soon as Kafka's storage is formatted: a first start interrupted before the
        # broker was ready (Ctrl-C during the JVM's first start, a port taken) left a formatted
        # Kafka beside an unpaired database, which every later start refused as an earlier run's.
        # A storage formatted earlier was paired then: the check above refused it otherwise.
        self.kafka.start(on_formatted=lambda cluster_id: asyncio.run(pairing.record(self.database_url, cluster_id)))
        say(f"Kafka ready on {self.kafka.bootstrap_servers} ({time.monotonic() - t1:.1f} s)")
        for name in self.kafka.revoked:
            say(
                f"Kafka: {name!r} revoked (its ACLs and password deleted): "
                "no longer a service, a partner or in KAFKA_DASHBOARDS"
            )
        for name in self.kafka.unlisted:
            say(
                f"Kafka: {name!r} keeps its access: KAFKA_DASHBOARDS is not set "
                f"(set it, without {name!r}, to revoke it)"
            )
        os.environ.update(self.kafka.access.environ())
        asyncio.run(
            create_topics(self.kafka.bootstrap_servers, platform_topics(), replicas=min(3, self.brokers), say=say)
        )
        if removed := acl.apply(self.kafka.access, exact=True):
            say(f"Kafka: {removed} ACLs the platform no longer grants deleted")
        assert self.kafka.credentials is not None and self.kafka.tls is not None, "set by start()"
        say(
            f"Kafka: SASL_SSL, SCRAM-SHA-512; CA {self.kafka.tls.ca}; credentials of each principal in "
            f"{self.kafka.credentials.path} (./dev credentials NAME)"
        )
        if self.with_services:
            self._start_services()
        say(f"platform up in {time.monotonic() - t0:.1f} s; data kept in {self.data.path}")
        say(f"KAFKA_BOOTSTRAP_SERVERS={self.kafka.bootstrap_servers} DATABASE_URL={redact(self.database_url)}")

    def stop(self) -> None:
        """Stop what was started (the services, Kafka, PostgreSQL), each whatever the others did.
        Once: a second call does nothing."""
        if self._servers_started:
            say("stopping the platform")
            self._servers_started = False
        self._started.close()

    def _claimed_ports(self) -> dict[str, int]:
        ports = {"Kafka" if n == 0 else f"Kafka {n + 1}": self.ports.kafka + n for n in range(self.brokers)}
        if not self.external_url:
            ports["PostgreSQL"] = self.ports.postgres
        if self.with_services:
            ports |= self.ports.services()
        return ports

    def _reach_external_database(self) -> None:
        """DATABASE_URL's server answers, and its database exists (created if missing); else Refused."""
        where = _host_port(self.external_url or "")
        try:
            created = asyncio.run(ensure_database(self.database_url))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise Refused(f"DATABASE_URL ({where}) cannot be used: {type(error).__name__}") from None
        if created:
            say(f"created database {_database_name(self.database_url)} named in DATABASE_URL ({where})")

    def _start_embedded_postgres(self, cluster_id: str | None) -> None:
        t0 = time.monotonic()
        postgres = LocalPostgres(self.data.postgres, port=self.ports.postgres)
        self._started.callback(postgres.stop)
        postgres.start()
        self.database_url = postgres.url(DATABASE)
        if asyncio.run(ensure_database(self.database_url)):
            say(f"created database {DATABASE} in the embedded PostgreSQL")
        self._check_pairing(cluster_id)
        say(f"PostgreSQL 18 ready (embedded, {time.monotonic() - t0:.1f} s): {self.database_url}")

    def _check_pairing(self, cluster_id: str | None) -> None:
        if self.external_url:
            database = f"DATABASE_URL's database {_database_name(self.database_url)} ({_host_port(self.database_url)})"
            remedy = "name an empty database in DATABASE_URL"
            if not self.fresh:
                remedy = "name in DATABASE_URL this Kafka's database, or an empty one and start with --fresh"
        else:
            database = f"the PostgreSQL in {self.data.postgres}"
            remedy = "start both empty with --fresh"
        kafka = f"the Kafka in {self.data.kafka}"
        asyncio.run(pairing.check(self.database_url, database, cluster_id, kafka, remedy))

    def _start_services(self) -> None:
        self.identite.ensure()
        where = "" if self.data.path == data_root() / "platform" else f" --data-dir {self.data.path}"
        say(f"tokens for the passerelle: ./dev token{where} DECLARANT (keys in {self.identite.directory})")
        env = {
            **self.kafka.access.environ(),  # each service's own principal replaces admin's
            "DATABASE_URL": self.database_url,
            "JWKS_FILE": str(self.identite.jwks_path),
            "LOG_FORMAT": os.environ.get("LOG_FORMAT", "console" if sys.stdout.isatty() else "json"),
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", self.log_level),
        }
        # A service that exits is restarted (supervise), under the same consumer instance id
        # (static membership): it gets its partitions back at once, with no rebalance.
        self.services = ServiceProcesses(
            env, ports=self.ports.services(), supervise=True, credentials=self.kafka.credentials, instance="local"
        )
        self._started.callback(self.services.stop)
        self.services.start()
        self.services.wait_healthy()
        ports = ", ".join(f"{n} http://127.0.0.1:{p}/health" for n, p in self.services.ports.items())
        say(f"services healthy: {ports}")


def _refuse_busy(ports: dict[str, int]) -> None:
    """Refused, naming who holds them, if any of `ports` (what -> port) is taken."""
    busy = {what: port for what, port in ports.items() if not port_free(port)}
    if not busy:
        return
    listed = ", ".join(f"{port} ({what})" for what, port in busy.items())
    holder = next((h for h in running_platforms(data_root()) if set(busy.values()) & set(h.ports.values())), None)
    if holder is not None:
        who = f"taken by {holder}"
    elif "Kafka" in busy and _local_kafka_answers(busy["Kafka"]):
        who = f"in use: a Kafka broker answers on 127.0.0.1:{busy['Kafka']}"
    else:
        who = "in use by another program"
    verb = "are" if len(busy) > 1 else "is"
    raise Refused(
        f"port{'s' if len(busy) > 1 else ''} {listed} {verb} {who}; stop it, or choose other ports "
        "(--kafka-port, --postgres-port, --http-port)"
    )


def _local_kafka_answers(port: int) -> bool:
    """A local broker (a TLS server whose certificate the local CA signed) listens on `port`."""
    ca = tls_dir() / "ca.pem"
    if not ca.exists():
        return False
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
            ssl.create_default_context(cafile=ca).wrap_socket(raw, server_hostname="127.0.0.1"),
        ):
            return True
    except (OSError, ssl.SSLError):
        return False


def _host_port(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"


def _database_name(url: str) -> str:
    return unquote(urlsplit(url).path.lstrip("/"))
