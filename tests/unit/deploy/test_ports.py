"""Free ports for the tests' servers are taken outside the range the kernel picks the local port
of outgoing connections from, so none can be taken by the platform's own clients in between."""

import socket

from deploy.local.ports import LOWEST, ephemeral_range, free_ports, port_free


def test_free_ports_are_distinct_free_and_below_the_ephemeral_range():
    ephemeral = ephemeral_range()
    ports = free_ports(200)
    assert len(set(ports)) == 200
    assert all(LOWEST <= p < ephemeral.start for p in ports), [p for p in ports if p in ephemeral]
    assert all(port_free(p) for p in ports)


def test_a_port_in_use_is_not_handed_out():
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_ports(1)[0]))
        taken = held.getsockname()[1]
        assert taken not in free_ports(2000)
