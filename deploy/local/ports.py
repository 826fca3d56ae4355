"""Free and open TCP ports on the loopback interface.

The tests take free ports, so that several suites, and a developer's own platform, run side
by side. `./dev up` and `./dev demo` use fixed ports instead (a client must know where to
connect) and check first that they are free (`port_free`).

Free ports are taken below the kernel's ephemeral range (ip_local_port_range), from which it
picks the local port of every outgoing connection: a port from that range, free when it was
picked, could be the local end of a platform's own connection (to Kafka, to PostgreSQL) by the
time a server binds it, and stay so as long as that connection lives.
"""

from __future__ import annotations

import random
import socket
from contextlib import ExitStack
from pathlib import Path

LOWEST = 10_000
"""Below it, the ports of well-known servers (PostgreSQL 5432, Kafka 9092, ./dev up's 8000…)."""


def ephemeral_range() -> range:
    """The ports the kernel hands to outgoing connections (Linux's default when unreadable)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_ports(count: int) -> list[int]:
    """Return `count` distinct ports that were free on 127.0.0.1 a moment ago, outside the
    ephemeral range when there is room below it (else any the kernel gives).

    All sockets stay bound until every port is picked, so no port is handed out twice within
    one call.
    """
    ephemeral = ephemeral_range()
    below = range(LOWEST, ephemeral.start)
    with ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < count:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind(("127.0.0.1", random.choice(below) if len(below) >= 1000 else 0))
            except OSError:
                continue  # taken: another one
            ports.append(sock.getsockname()[1])
        return ports


def free_port() -> int:
    """Return one port that was free on 127.0.0.1 a moment ago."""
    return free_ports(1)[0]


def port_free(port: int) -> bool:
    """True if a server could listen on 127.0.0.1:`port` a moment ago."""
    with socket.socket() as sock:
        # As servers do (Kafka, PostgreSQL, uvicorn): connections of a platform that just
        # stopped may linger in TIME_WAIT on the port, which only a listener refuses.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_open(port: int) -> bool:
    """True if something accepts connections on 127.0.0.1:`port`."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True
