"""The services' PostgreSQL connections give up a server gone without closing them: TCP
keep-alive and a user timeout on each socket of their pools, as the kernel sees them. (A server
that vanishes cannot be staged here without changing the machine's network: the options are
what the kernel acts on.)"""

import asyncio
import socket

import asyncpg
import pytest

from helpers import eventually
from services.common.storage.db import (
    DEAD_PEER_PROBES,
    DEAD_PEER_UNACKED_MS,
    SERVER_KEEPALIVES,
    connect_for_tool,
    create_pool,
)


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


async def unacked_ms(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """How long the server waits for what it sent to be acknowledged (`tcp_user_timeout`, PostgreSQL 12's)."""
    return await conn.fetchval("SELECT setting::int FROM pg_settings WHERE name = 'tcp_user_timeout'")


async def test_the_server_gives_up_a_services_or_a_tools_session_whose_host_is_gone_within_a_minute(database_url):
    """A rebuild's session holds the service's writers during its switch, a batch's its events'
    inbox rows and keys: its host lost without closing it (no FIN), the server kept the session
    and its locks until its own TCP keepalives gave up, two hours with the system's (Linux: 7200 s
    idle, then 9 probes 75 s apart), the replica taking the partitions over waiting behind them.
    The keepalives are the tool's and the service's pool's own; a plain session keeps the system's.
    A service's session is also given up once what the server sent stays unacknowledged a minute
    (a batch's answer on its way when the host was lost: the system's retransmissions, 15 minutes)."""
    tool, plain = await connect_for_tool(database_url), await asyncpg.connect(database_url)
    pool = await create_pool(database_url, "keepalives", min_size=1, max_size=1)
    try:
        for setting, seconds in SERVER_KEEPALIVES.items():
            assert await tool.fetchval(f"SHOW {setting}") == str(seconds), setting
            assert await pool.fetchval(f"SHOW {setting}") == str(seconds), setting
            assert await plain.fetchval(f"SHOW {setting}") != str(seconds), setting
        if plain.get_server_version().major >= 12:  # an older server has no such setting
            assert await unacked_ms(pool) == DEAD_PEER_UNACKED_MS
            assert await unacked_ms(plain) != DEAD_PEER_UNACKED_MS
        probed = SERVER_KEEPALIVES["tcp_keepalives_idle"]
        probed += SERVER_KEEPALIVES["tcp_keepalives_interval"] * SERVER_KEEPALIVES["tcp_keepalives_count"]
        assert probed <= 60
    finally:
        await asyncio.gather(tool.close(), plain.close(), pool.close())


async def test_an_operator_tools_session_outlives_the_deployments_idle_timeouts(database_url):
    """A deployment may end idle sessions (idle_session_timeout, idle_in_transaction_session_timeout):
    a tool's session holds its lock idle for minutes (a restore's, a replay's), and another run
    would take it once the session was ended. The tool's session is not ended; a session opened
    after it, idle as long, is."""
    admin = await asyncpg.connect(database_url)
    try:
        name = await admin.fetchval("SELECT current_database()")
        for setting in ("idle_session_timeout", "idle_in_transaction_session_timeout"):
            await admin.execute(f"ALTER DATABASE {name} SET {setting} = '300ms'")
        held = await connect_for_tool(database_url)
        transaction = held.transaction()
        await transaction.start()
        await held.execute("SELECT 1")  # idle in a transaction from now on
        tool = await connect_for_tool(database_url)
        other = await asyncpg.connect(database_url)  # idle from now on, the last of the three
        try:
            tool_pid, other_pid = tool.get_server_pid(), other.get_server_pid()

            async def other_ended() -> bool:
                return not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", other_pid)

            await eventually(other_ended, timeout=15, what="the session idle for 300 ms ended by the server")
            assert await tool.fetchval("SELECT pg_backend_pid()") == tool_pid
            assert await held.fetchval("SELECT 1") == 1
            await transaction.commit()
        finally:
            await asyncio.gather(tool.close(), other.close(), held.close())
    finally:
        await admin.close()


async def test_a_service_pool_runs_past_the_deployments_statement_lock_and_transaction_limits(database_url):
    """A role's or database's statement_timeout, lock_timeout or idle_in_transaction_session_timeout
    that a batch always outruns took it again for ever, its partition held; a pool's `settings`
    (the read API's statement timeout) still set one."""
    admin = await asyncpg.connect(database_url)
    name = await admin.fetchval("SELECT current_database()")
    limits = {"statement_timeout": 100, "lock_timeout": 100, "idle_in_transaction_session_timeout": 100}
    if admin.get_server_version().major >= 17:  # PostgreSQL 17's (the embedded server is 18): the session ended
        limits["transaction_timeout"] = 200  # past the others, which say what they cancel first
    for setting, ms in limits.items():
        await admin.execute(f"ALTER DATABASE {name} SET {setting} = '{ms}ms'")
    plain = await asyncpg.connect(database_url)
    pool = await create_pool(database_url, "limites", min_size=1, max_size=1)
    reads = await create_pool(database_url, "limites", max_size=1, settings={"statement_timeout": "100"})
    try:
        with pytest.raises(asyncpg.QueryCanceledError):
            await plain.execute("SELECT pg_sleep(0.3)")  # the database's limits hold elsewhere
        await admin.execute("CREATE TABLE limites.tenue (n int)")
        await admin.execute("BEGIN; LOCK TABLE limites.tenue IN ACCESS EXCLUSIVE MODE")
        async with pool.acquire() as conn:
            pid = conn.get_server_pid()
            waiting = asyncio.create_task(conn.fetchval("SELECT count(*) FROM limites.tenue"))
            await eventually(
                lambda: admin.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid),
                what="the pool's statement waiting for the lock",
            )
            await asyncio.sleep(0.3)  # past the database's lock_timeout while it waits
            await admin.execute("COMMIT")
            assert await waiting == 0
            async with conn.transaction():
                await conn.execute("SELECT pg_sleep(0.3)")
                await asyncio.sleep(0.3)  # idle in the transaction, as between a batch's statements
                assert await conn.fetchval("SELECT 1") == 1
        with pytest.raises(asyncpg.QueryCanceledError):
            await reads.execute("SELECT pg_sleep(0.3)")
    finally:
        await asyncio.gather(pool.close(), reads.close(), plain.close())
        await admin.close()


async def test_the_live_stream_s_listener_is_given_up_like_a_pool_s_session(database_url):
    """ressources' live stream listens on a connection of its own, outside the pools: a replica's
    host lost, its session stayed on the server two hours (its keepalives the system's), and a
    listener that reads nothing keeps the cluster's NOTIFY queue from being truncated past it
    (review s69 #11)."""
    from services.ressources.stream import AlertHub

    pool = await create_pool(database_url, "public", min_size=1, max_size=1)
    conn = await AlertHub(database_url, "public", pool)._connect()
    try:
        assert_gives_up_a_dead_peer(conn)
        for setting, seconds in SERVER_KEEPALIVES.items():
            assert await conn.fetchval(f"SHOW {setting}") == str(seconds), setting
        if conn.get_server_version().major >= 12:
            assert await unacked_ms(conn) == DEAD_PEER_UNACKED_MS
    finally:
        await asyncio.gather(conn.close(), pool.close())
