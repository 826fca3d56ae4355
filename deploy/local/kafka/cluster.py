"""Several KRaft nodes on 127.0.0.1 as one cluster (`./dev up --brokers 3`, the three-broker
tests): each node a broker and a controller with its own data directory and ports, all voters of
the controller quorum, every topic replicated three times with two replicas in sync for a write
(`Quorum`). They share the cluster's id, the CA and the principals' passwords (in `data_dir`);
SCRAM users are added once, for all. Producers write with acks=all (the relay, FastStream), so
an acknowledged record is on two nodes at least: one node may crash and nothing is lost.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from deploy.local.kafka.broker import LocalKafka, Quorum, _kafka_uuid
from deploy.local.kafka.credentials import ADMIN, Credentials, principals
from deploy.local.kafka.tls import TlsFiles
from deploy.local.ports import free_ports
from services.common.messaging.connection import KafkaAccess


class LocalKafkaCluster:
    def __init__(self, data_dir: Path, size: int = 3, first_port: int | None = None):
        """`first_port`: the nodes' client ports from it on (else free ones, as the controllers')."""
        self.data_dir = Path(data_dir).resolve()
        ports = free_ports(2 * size)
        if first_port is not None:
            ports[0::2] = [first_port + n for n in range(size)]
        self.quorum = Quorum(tuple((n + 1, ports[2 * n], ports[2 * n + 1]) for n in range(size)), "")
        self.nodes = [
            LocalKafka(self.data_dir / f"node-{n}", node_id=n, quorum=self.quorum, credentials_dir=self.data_dir)
            for n, _, _ in self.quorum.nodes
        ]
        self.credentials: Credentials | None = None
        self.revoked: tuple[str, ...] = ()
        """The principals the last start revoked, and those it kept (LocalKafka.sync_scram_users)."""
        self.unlisted: tuple[str, ...] = ()

    @property
    def cluster_id(self) -> str | None:
        """The cluster's id once its nodes are formatted (None before: a new cluster)."""
        return self.nodes[0].cluster_id

    @property
    def tls(self) -> TlsFiles | None:
        return self.nodes[0].tls

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_servers for node in self.nodes)

    @property
    def access(self) -> KafkaAccess:
        return self.access_as(ADMIN)

    def access_as(self, principal: str) -> KafkaAccess:
        """How `principal` reaches the cluster, through any of its nodes (after start())."""
        assert self.credentials is not None, "known once started"
        tls = self.nodes[0].tls
        assert tls is not None, "set by start()"
        return self.credentials.access(principal, KafkaAccess(self.bootstrap_servers, "SASL_SSL", ca_file=str(tls.ca)))

    def start(self, timeout: float = 120, on_formatted: Callable[[str], None] | None = None) -> None:
        """Every node at once (a node is ready once the quorum has a leader: a majority is up);
        `on_formatted` as LocalKafka's, told by the first node."""
        # The id the nodes were formatted with, or a new one for a new cluster (--fresh wipes it).
        self.quorum = replace(self.quorum, cluster_id=self.nodes[0].cluster_id or _kafka_uuid())
        for node in self.nodes:
            node.quorum = self.quorum
        self.data_dir.mkdir(parents=True, exist_ok=True)
        kept = Credentials.load(self.data_dir)
        if kept is None:  # the nodes load them: the first's formatting adds admin's SCRAM user
            Credentials.create(self.data_dir, principals())
        # Started from this thread: a child started by another dies with it (PR_SET_PDEATHSIG).
        for node in self.nodes:
            node.start(timeout, wait=False, on_formatted=on_formatted if node is self.nodes[0] else None)
        for node in self.nodes:
            node.wait_ready()
        first = self.nodes[0]  # the users are the cluster's: added once, through one node
        first.sync_scram_users(everyone=kept is None)
        self.credentials, self.revoked, self.unlisted = first.credentials, first.revoked, first.unlisted

    def stop(self) -> None:
        with ThreadPoolExecutor(len(self.nodes)) as pool:  # each waits for its node's exit
            list(pool.map(lambda node: node.stop(), self.nodes))

    def __enter__(self) -> LocalKafkaCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
