"""The services' PostgreSQL connections give up a server gone without closing them: TCP
keep-alive and a user timeout on each socket of their pools, as the kernel sees them. (A server
that vanishes cannot be staged here without changing the machine's network: the options are
what the kernel acts on.)"""

import socket

import asyncpg

from services.common.storage.db import DEAD_PEER_PROBES, DEAD_PEER_UNACKED_MS, connect_for_tool, create_pool


def assert_gives_up_a_dead_peer(conn: asyncpg.Connection) -> None:
    idle, interval, count = DEAD_PEER_PROBES
    sock = conn._transport.get_extra_info("socket")  # type: ignore[attr-defined]
    assert sock.family in (socket.AF_INET, socket.AF_INET6), "a TCP connection, as in a deployment"
    options = {
        "SO_KEEPALIVE": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        "TCP_KEEPIDLE": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        "TCP_KEEPINTVL": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        "TCP_KEEPCNT": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        "TCP_USER_TIMEOUT": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
    }
    assert options == {
        "SO_KEEPALIVE": 1,
        "TCP_KEEPIDLE": idle,
        "TCP_KEEPINTVL": interval,
        "TCP_KEEPCNT": count,
        "TCP_USER_TIMEOUT": DEAD_PEER_UNACKED_MS,
    }


async def test_each_pool_connection_probes_its_server_and_bounds_unacknowledged_data(database_url):
    pool = await create_pool(database_url, "sondes", min_size=2, max_size=2)
    try:
        async with pool.acquire() as first, pool.acquire() as second:
            for conn in (first, second):
                assert_gives_up_a_dead_peer(conn._con)
                assert await conn.fetchval("SELECT 1") == 1
    finally:
        await pool.close()


async def test_an_operator_tools_session_gives_up_a_dead_peer_too(database_url):
    """The rebuild's session holds the service's writers during its switch, the dead-letters
    replay's its lock: a server gone without closing them held them until TCP gave up."""
    conn = await connect_for_tool(database_url)
    try:
        assert_gives_up_a_dead_peer(conn)
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
