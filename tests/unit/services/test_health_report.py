"""`/health`'s body when the database fails: the error named, no password in it; `/readyz`'s
answer, with and without Kafka (ressources' readers are served while Kafka is away)."""

import asyncio
from types import SimpleNamespace

from services.common.runtime.health import READ_SECONDS, health_report, readiness_report
from services.common.runtime.metrics import Metrics


class _Refusing:
    async def fetchval(self, *args):
        raise OSError("could not reach postgresql://feo:s3cr3t@db.example:5432/feo (timeout)")


async def _reachable(timeout: float) -> bool:
    return True


async def _away(timeout: float) -> bool:
    return False


class _Answering:
    async def fetchval(self, *args):
        return 0

    async def fetch(self, *args):
        return []


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

    class _AnsweringOnce:
        async def fetchval(self, *args):
            reading.set()
            await pinging.wait()
            return 0

        async def fetch(self, *args):
            return []

    pipeline = SimpleNamespace(
        service="equipement", started=True, pool=_AnsweringOnce(), metrics=Metrics("equipement"), revivals_pending=0
    )
    broker = SimpleNamespace(ping=ping)
    answers = await asyncio.wait_for(
        asyncio.gather(*(health_report(pipeline, broker) for _ in range(3))),  # type: ignore[arg-type]
        READ_SECONDS + 1,
    )
    assert [status for status, _ in answers] == [200] * 3, answers
    assert pings == 1


def _pipeline(pool: object, started: bool = True) -> SimpleNamespace:
    return SimpleNamespace(
        service="ressources", started=started, pool=pool, metrics=Metrics("ressources"), revivals_pending=0
    )


async def test_a_service_read_from_its_database_alone_is_ready_while_kafka_is_away():
    away = SimpleNamespace(ping=_away)
    status, body = await readiness_report(_pipeline(_Answering()), away, None, readiness="database")  # type: ignore[arg-type]
    assert (status, body["ready"], body["database"]) == (200, True, True), body
    status, body = await readiness_report(_pipeline(_Answering()), away, None, readiness="kafka-and-database")  # type: ignore[arg-type]
    assert (status, body["ready"], body["kafka"]) == (503, False, False), body


async def test_readiness_without_kafka_still_needs_the_database_and_names_its_error_without_password():
    reachable = SimpleNamespace(ping=_reachable)
    status, body = await readiness_report(_pipeline(_Refusing()), reachable, None, readiness="database")  # type: ignore[arg-type]
    assert (status, body["ready"], body["database"]) == (503, False, False), body
    assert "db.example" in body["error"] and "s3cr3t" not in body["error"], body["error"]
    status, body = await readiness_report(_pipeline(None, started=False), reachable, None, readiness="database")  # type: ignore[arg-type]
    assert (status, body["ready"]) == (503, False), body


async def test_a_service_answering_each_request_itself_is_ready_once_started_whatever_its_dependencies():
    """The passerelle: taken out of the Service while Kafka or PostgreSQL is away (every replica
    at once), partners met the ingress's error page instead of its 503 with Retry-After."""
    away = SimpleNamespace(ping=_away)
    status, body = await readiness_report(_pipeline(_Refusing()), away, None, readiness="started")  # type: ignore[arg-type]
    assert (status, body["ready"]) == (200, True), body
    status, body = await readiness_report(_pipeline(_Refusing()), away, None, readiness="kafka-and-database")  # type: ignore[arg-type]
    assert (status, body["ready"]) == (503, False), body
    status, body = await readiness_report(_pipeline(None, started=False), away, None, readiness="started")  # type: ignore[arg-type]
    assert (status, body["ready"]) == (503, False), body


async def test_readiness_with_kafka_is_healths_answer():
    reachable = SimpleNamespace(ping=_reachable)
    status, body = await readiness_report(_pipeline(_Answering()), reachable, None, readiness="kafka-and-database")  # type: ignore[arg-type]
    assert (status, body["ready"], body["kafka"], body["database"]) == (200, True, True, True), body
    status, body = await readiness_report(_pipeline(_Refusing()), reachable, None, readiness="kafka-and-database")  # type: ignore[arg-type]
    assert (status, body["ready"]) == (503, False) and "s3cr3t" not in body["error"], body
