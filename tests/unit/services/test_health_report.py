"""`/health`'s body when the database fails: the error named, no password in it."""

import asyncio
from types import SimpleNamespace

from services.common.runtime.health import READ_SECONDS, health_report
from services.common.runtime.metrics import Metrics


class _Refusing:
    async def fetchval(self, *args):
        raise OSError("could not reach postgresql://feo:s3cr3t@db.example:5432/feo (timeout)")


async def _reachable(timeout: float) -> bool:
    return True


async def test_a_database_error_is_reported_without_its_password():
    pipeline = SimpleNamespace(service="equipement", started=True, pool=_Refusing(), metrics=Metrics("equipement"))
    status, body = await health_report(pipeline, SimpleNamespace(ping=_reachable))  # type: ignore[arg-type]
    assert status == 503 and body["database"] is False
    assert "db.example" in body["error"] and "s3cr3t" not in body["error"], body["error"]


async def test_kafka_is_asked_while_the_database_is_read_once_however_many_ask():
    """One after the other, the ping (up to 2 s) and the read (up to 4 s) outlasted a probe's
    5 s; and each request sent its own ping. Here each side waits for the other to have begun:
    asked in turn, neither would answer."""
    pinging, reading = asyncio.Event(), asyncio.Event()
    pings = 0

    async def ping(timeout: float) -> bool:
        nonlocal pings
        pings += 1
        pinging.set()
        await reading.wait()
        return True

    class _Answering:
        async def fetchval(self, *args):
            reading.set()
            await pinging.wait()
            return 0

    pipeline = SimpleNamespace(
        service="equipement", started=True, pool=_Answering(), metrics=Metrics("equipement"), revivals_pending=0
    )
    broker = SimpleNamespace(ping=ping)
    answers = await asyncio.wait_for(
        asyncio.gather(*(health_report(pipeline, broker) for _ in range(3))),  # type: ignore[arg-type]
        READ_SECONDS + 1,
    )
    assert [status for status, _ in answers] == [200] * 3, answers
    assert pings == 1
