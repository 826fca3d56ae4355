"""`./dev up` waits for each service's /health: whatever answers on the port, the wait goes on."""

import socket
import threading

from deploy.local.processes import ServiceProcesses


def test_a_port_answering_something_other_than_http_is_not_healthy_yet():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:  # what a CI run met: a status line of one byte
        for _ in range(2):
            conn, _ = server.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"P\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    try:
        procs = ServiceProcesses({}, names=("ressources",), ports={"ressources": port})
        assert procs.health("ressources") is False
        assert procs.health("ressources") is False
    finally:
        server.close()
