"""One KRaft node (broker and controller) on 127.0.0.1, run from the cached jars, secured.

Clients connect with SASL/SCRAM-SHA-512 over TLS (listener CLIENT), the brokers among
themselves over it as `admin`; the controller listener takes TLS clients holding the broker
certificate only (mTLS, its CN mapped to the super user `BROKER_CN`); with `certificates`, a
listener more takes TLS clients named by their certificate's CN (`access_by_certificate`: the
tests of Kubernetes' way, where the platform's own principals connect so). KRaft's StandardAuthorizer
refuses whatever no ACL allows (`deploy.acl` writes them); `admin` and the brokers are super
users. The CA and certificate come from `tls.py`, the principals' passwords from
`credentials.py`: SCRAM users are created when the storage is formatted, and a principal added
since (a new service, a dashboard added to KAFKA_DASHBOARDS) when the broker next starts; one
gone since (a dashboard taken out of KAFKA_DASHBOARDS) is revoked then: its ACLs and its SCRAM
user deleted.

The data directory may be reused across starts: it is formatted only once (its cluster id and
credentials are then kept), while server.properties is rewritten each start since the ports may
change; it holds admin's password, so it is private (0600) like credentials.json.
Starting, waiting and stopping are those of every local server (`deploy.local.server_process`);
what is Kafka's own is its configuration and its readiness: a client can fetch metadata listing
the broker.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deploy.acl import DASHBOARDS, revoke
from deploy.local.kafka.credentials import ADMIN, Credentials, principals
from deploy.local.kafka.jars import KAFKA_VERSION, KafkaRuntimeError, ensure_kafka_jars
from deploy.local.kafka.readiness import add_scram_users, delete_scram_users, serves_metadata
from deploy.local.kafka.tls import BROKER_CN, SUPER_USERS, TlsFiles, client_certificate, ensure_tls
from deploy.local.ports import free_ports, port_open
from deploy.local.server_process import ServerProcess, require_tool, run_tool
from services.common.messaging.connection import KafkaAccess

# The broker's own logging is cut to warnings: its INFO output is megabytes of
# noise for a demo, while errors (bad config, port in use) still reach kafka.log.
_LOG4J2_PROPERTIES = """status = warn
shutdownHook = disable
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
"""
# Java stack frames would push the "Caused by:" lines that explain a failure out of the tail.
_STACK_FRAMES = ("at ", "... ")
BROKER_HEAP = ("-Xms1g", "-Xmx1g")
"""Kafka's own start script's heap. At 512 MiB, G1 ran a concurrent marking cycle in some runs
of the national bench's subscriptions step, 3 s of the broker's CPU (./dev bench national)."""
INDEX_BYTES = 1024 * 1024
"""log.index.size.max.bytes: the largest a segment's index file grows (Kafka's default: 10 MiB)."""


@dataclass(frozen=True)
class Quorum:
    """The nodes of a cluster, each a broker and a controller: (node id, client port,
    controller port), and the cluster's id (every node's storage is formatted with it)."""

    nodes: tuple[tuple[int, int, int], ...]
    cluster_id: str

    @property
    def voters(self) -> str:
        return ",".join(f"{node}@127.0.0.1:{controller}" for node, _, controller in self.nodes)

    @property
    def replicas(self) -> int:
        """Replicas of every topic, internal ones included; a write is acknowledged by all in sync."""
        return min(3, len(self.nodes))

    @property
    def min_insync(self) -> int:
        """In-sync replicas a write needs: one node may be down, never a write kept by one alone."""
        return max(1, self.replicas - 1)


class LocalKafka:
    """A Kafka node with its data, configuration and kafka.log in `data_dir`: alone (a single-node
    cluster), or one of a `Quorum`, sharing the cluster's credentials in `credentials_dir`."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        node_id: int = 1,
        quorum: Quorum | None = None,
        credentials_dir: Path | None = None,
        certificates: bool = False,
    ):
        """`certificates`: a listener more, of TLS clients named by their certificate (mTLS, as
        the platform's own principals on Kubernetes: deploy/k8s), at `certificate_port`."""
        self.data_dir = Path(data_dir).resolve()
        self.node_id = node_id
        self.certificate_port: int | None = None
        if quorum is not None:
            if certificates:
                raise ValueError("a node of a quorum has no certificate listener")
            [(_, self.port, self.controller_port)] = [n for n in quorum.nodes if n[0] == node_id]
        else:
            ports = [p for p in free_ports(4) if p != port]  # taken at once: they differ, and from `port`
            self.port = port or ports.pop()
            self.controller_port = ports.pop()
            self.certificate_port = ports.pop() if certificates else None
        self.quorum = quorum or Quorum(((node_id, self.port, self.controller_port),), "")
        self._credentials_dir = Path(credentials_dir).resolve() if credentials_dir else self.data_dir
        self.credentials: Credentials | None = None
        """The principals' passwords, once start() has read or made them."""
        self.tls: TlsFiles | None = None
        self.revoked: tuple[str, ...] = ()
        """The principals the last start revoked (no longer the platform's: `sync_scram_users`)."""
        self.unlisted: tuple[str, ...] = ()
        """Those it kept, no longer the platform's but KAFKA_DASHBOARDS not set."""
        self._server = ServerProcess("Kafka", self.log_file, KafkaRuntimeError, log_noise=_STACK_FRAMES)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def access_by_certificate(self, principal: str, directory: Path) -> KafkaAccess:
        """How `principal` reaches this broker by a client certificate of its own, made in
        `directory` (after start(), with `certificates`)."""
        assert self.tls is not None and self.certificate_port is not None, "started, with certificates"
        cert_file, key_file = client_certificate(self.tls, principal, directory)
        return KafkaAccess(
            f"127.0.0.1:{self.certificate_port}",
            "SSL",
            ca_file=str(self.tls.ca),
            cert_file=str(cert_file),
            key_file=str(key_file),
        )

    @property
    def access(self) -> KafkaAccess:
        """How `admin` reaches this broker (after start())."""
        return self.access_as(ADMIN)

    def access_as(self, principal: str) -> KafkaAccess:
        """How `principal` reaches this broker (after start())."""
        assert self.credentials is not None and self.tls is not None, "known once started"
        base = KafkaAccess(self.bootstrap_servers, "SASL_SSL", ca_file=str(self.tls.ca))
        return self.credentials.access(principal, base)

    @property
    def log_file(self) -> Path:
        return self.data_dir / "kafka.log"

    @property
    def pid(self) -> int | None:
        """The broker JVM's pid; None before start() and after stop()."""
        return self._server.pid

    @property
    def cluster_id(self) -> str | None:
        """The id of the cluster whose storage is in `data_dir`; None until it is formatted."""
        try:
            properties = self._meta_properties.read_text().splitlines()
        except FileNotFoundError:
            return None
        return next((line.partition("=")[2] for line in properties if line.startswith("cluster.id=")), None)

    @property
    def _meta_properties(self) -> Path:
        return self.data_dir / "kafka-logs" / "meta.properties"

    def start(self, timeout: float = 60, wait: bool = True, on_formatted: Callable[[str], None] | None = None) -> None:
        """Start the broker and return once a client can fetch its metadata (`wait=False`: at
        once; `wait_ready` waits, so that the nodes of a cluster start together). `on_formatted`
        is told the cluster id once a new storage is formatted, before the broker starts."""
        if self.pid is not None:
            raise KafkaRuntimeError("this LocalKafka is already started")
        java = require_java()
        classpath = str(ensure_kafka_jars() / "*")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.tls = ensure_tls()
        formatted = self._meta_properties.exists()
        shared = self._credentials_dir != self.data_dir  # the cluster made them
        if formatted or shared:
            self.credentials = Credentials.load(self._credentials_dir)
            if self.credentials is None:
                raise KafkaRuntimeError(
                    f"the Kafka storage in {self.data_dir} was made before Kafka was secured "
                    "(it has no credentials.json); start with --fresh"
                )
        else:
            self.credentials = Credentials.create(self.data_dir, principals())
        properties = self._write_config()
        log_config = self.data_dir / "log4j2.properties"
        log_config.write_text(_LOG4J2_PROPERTIES)
        options = [f"-Dlog4j2.configurationFile={log_config}", "-cp", classpath]
        if not formatted:
            run_tool(
                [
                    java,
                    *options,
                    *("kafka.tools.StorageTool", "format", "-t", self.quorum.cluster_id or _kafka_uuid()),
                    *("-c", str(properties)),
                    *self.credentials.scram_arguments(ADMIN),  # brokers need it to reach each other
                ],
                f"formatting the Kafka storage in {self.data_dir} failed",
                KafkaRuntimeError,
                cwd=self.data_dir,
            )
            if on_formatted is not None:
                assert self.cluster_id is not None, "just formatted"
                on_formatted(self.cluster_id)
        self._server.start(
            [java, *BROKER_HEAP, *options, "kafka.Kafka", str(properties)],
            cwd=self.data_dir,
            timeout=timeout,
            poll_seconds=0.2,
            # The plain TCP check comes first because aiokafka logs every refused
            # connection as an error, which would flood the terminal during start.
            ready=lambda: port_open(self.port) and serves_metadata(self.access),
            not_ready=f"did not serve metadata on {self.bootstrap_servers}",
            wait=wait,
        )
        if not shared:  # a cluster adds them once, for all its nodes
            self.sync_scram_users(everyone=not formatted)

    def wait_ready(self) -> None:
        self._server.wait_ready()

    def kill(self) -> None:
        """SIGKILL the node: what a crash looks like to its cluster."""
        self._server.kill()

    def sync_scram_users(self, everyone: bool) -> None:
        """The broker's SCRAM users made those of the platform's principals now, through the admin
        client (their salted passwords never on a command line): on a new storage every
        principal's, `admin`'s again with a new salt (its salted password was on the format tool's
        command line, and proves who holds it as well as the password); else those of the
        principals that appeared since the storage was formatted. Those gone since (a dashboard
        taken out of KAFKA_DASHBOARDS) are revoked when KAFKA_DASHBOARDS is set (a start without
        it, in a shell that lost the variable, would revoke every dashboard but the default one):
        their ACLs, then their SCRAM user, then their password here deleted (interrupted, the
        next start does what is left). `revoked` names them, `unlisted` those kept."""
        assert self.credentials is not None, "read by start()"
        now = principals()
        wanted = self.credentials.with_new(now)
        added = [name for name in wanted.passwords if everyone or name not in self.credentials.passwords]
        if added:
            add_scram_users(self.access, {name: wanted.password(name) for name in added}, altered=wanted.save)
            self.credentials = wanted
        gone = tuple(name for name in self.credentials.passwords if name not in now)
        declared = bool(os.environ.get(DASHBOARDS, "").strip())
        self.revoked, self.unlisted = (gone, ()) if declared else ((), gone)
        if self.revoked:
            revoke(self.access, self.revoked)
            delete_scram_users(self.access, self.revoked)
            self.credentials = self.credentials.without(self.revoked)
            self.credentials.save()

    def stop(self) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after a grace period."""
        self._server.stop()

    def wait(self) -> int:
        """Block until the broker exits on its own; return its exit code."""
        return self._server.wait()

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _write_config(self) -> Path:
        assert self.credentials is not None and self.tls is not None, "set by start()"
        path = self.data_dir / "server.properties"
        scram_login = "org.apache.kafka.common.security.scram.ScramLoginModule required"
        certificates = f",CERTIFICATE://127.0.0.1:{self.certificate_port}" if self.certificate_port else ""
        admin_password = self.credentials.password(ADMIN)
        _write_private(
            path,
            "\n".join(
                [
                    "process.roles=broker,controller",
                    f"node.id={self.node_id}",
                    f"controller.quorum.voters={self.quorum.voters}",
                    f"listeners=CLIENT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
                    + certificates,
                    f"advertised.listeners=CLIENT://127.0.0.1:{self.port}" + certificates,
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=CLIENT",
                    "listener.security.protocol.map=CLIENT:SASL_SSL,CONTROLLER:SSL,CERTIFICATE:SSL",
                    "listener.name.certificate.ssl.client.auth=required",
                    "sasl.enabled.mechanisms=SCRAM-SHA-512",
                    "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
                    f'listener.name.client.scram-sha-512.sasl.jaas.config={scram_login} username="{ADMIN}" '
                    f'password="{admin_password}";',
                    "ssl.keystore.type=PEM",
                    f"ssl.keystore.location={self.tls.broker}",
                    "ssl.truststore.type=PEM",
                    f"ssl.truststore.location={self.tls.ca}",
                    "listener.name.controller.ssl.client.auth=required",
                    f"ssl.principal.mapping.rules=RULE:^CN=({BROKER_CN})$/$1/",
                    # There, a certificate's CN is its principal (`client_certificate`).
                    r"listener.name.certificate.ssl.principal.mapping.rules=RULE:^CN=([a-z][a-z0-9-]*)$/$1/",
                    "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                    "allow.everyone.if.no.acl.found=false",
                    "super.users=" + ";".join(f"User:{name}" for name in SUPER_USERS),
                    f"log.dirs={self.data_dir / 'kafka-logs'}",
                    "num.partitions=3",
                    "auto.create.topics.enable=false",
                    "group.initial.rebalance.delay.ms=0",
                    # As many replicas as the cluster holds, up to three (one node alone holds one).
                    f"default.replication.factor={self.quorum.replicas}",
                    f"min.insync.replicas={self.quorum.min_insync}",
                    f"offsets.topic.replication.factor={self.quorum.replicas}",
                    f"transaction.state.log.replication.factor={self.quorum.replicas}",
                    f"transaction.state.log.min.isr={self.quorum.min_insync}",
                    f"share.coordinator.state.topic.replication.factor={self.quorum.replicas}",
                    f"share.coordinator.state.topic.min.isr={self.quorum.min_insync}",
                    # A node that stops heartbeating is fenced (its partitions led elsewhere) after
                    # 3 s, not Kafka's default 9 s: on one machine, a silent node is a dead one.
                    "broker.heartbeat.interval.ms=500",
                    "broker.session.timeout.ms=3000",
                    # A segment's offset and time indexes are files of this size, mmapped and
                    # sparse until written: at Kafka's default (10 MiB), the kernel here (Linux
                    # 6.18, ext4) zeroed large stretches of each for the first entries' page
                    # faults, a third of the broker's CPU while 60,000 records went to fresh
                    # partitions. At 1 MiB a segment rolls after ~350 MB instead of 1 GiB.
                    f"log.index.size.max.bytes={INDEX_BYTES}",
                    "",
                ]
            ),
        )
        return path


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)  # a file written before this change was world-readable


JAVA_NEEDED = 17
_JAVA_VERSION = re.compile(r'version "(?:1\.)?(\d+)')


def require_java() -> str:
    """The path of a Java runtime Kafka runs on (17 or later), or KafkaRuntimeError saying which
    it found: an older one failed the storage's formatting with a raw UnsupportedClassVersionError,
    which blamed the storage."""
    install = (
        f"Kafka {KAFKA_VERSION} needs a Java {JAVA_NEEDED}+ runtime (e.g. apt-get install openjdk-17-jre-headless)"
    )
    java = require_tool("java", install, KafkaRuntimeError)
    said = subprocess.run([java, "-version"], stdin=subprocess.DEVNULL, capture_output=True, text=True).stderr
    found = _JAVA_VERSION.search(said)
    if found is None or int(found.group(1)) < JAVA_NEEDED:
        first = said.strip().splitlines()[0] if said.strip() else "no version"
        raise KafkaRuntimeError(f"{java} is not Java {JAVA_NEEDED} or later ({first}); {install}")
    return java


def _kafka_uuid() -> str:
    """A cluster id in Kafka's format (URL-safe base64 of 16 random bytes).

    Made here rather than by `StorageTool random-uuid` to save one JVM start;
    like Kafka, ids starting with '-' are avoided because the CLI parses them
    as options.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text
