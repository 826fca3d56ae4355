"""`/health`'s body when the database fails: the error named, no password in it."""

from types import SimpleNamespace

from services.common.runtime.health import health_report
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
