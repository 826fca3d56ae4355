"""Free and open TCP ports on the loopback interface.

The tests take free ports, so that several suites, and a developer's own platform, run side
by side. `./dev up` and `./dev demo` use fixed ports instead (a client must know where to
connect) and check first that they are free (`port_free`).
"""

from __future__ import annotations

import socket
from contextlib import ExitStack


def free_ports(count: int) -> list[int]:
    """Return `count` distinct ports that were free on 127.0.0.1 a moment ago.

    All sockets stay bound until every port is picked, so the kernel cannot
    hand out the same port twice within one call.
    """
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
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
