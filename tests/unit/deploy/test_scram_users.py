"""deploy/local/kafka/readiness.py's SCRAM users, against a stand-in admin client: a new user is
waited for until the broker knows it, and the caller keeps its password as soon as the
controller took it (a start interrupted by the wait would otherwise make new passwords, and
reset users the broker knows, which no wait can see)."""

from types import SimpleNamespace

import pytest

from deploy.local.kafka import readiness
from deploy.local.kafka.jars import KafkaRuntimeError

ACCESS = SimpleNamespace(kafka_python=lambda: {})


class Admin:
    """Knows a user after `delay` descriptions (the broker taking it from the controller)."""

    delay = 2

    def __init__(self, **_: object) -> None:
        self.described = 0
        self.altered: list[str] = []

    def alter_user_scram_credentials(self, alterations: list) -> dict:
        self.altered += [a.user for a in alterations]
        return {}

    def describe_user_scram_credentials(self, names: list[str]) -> dict:
        self.described += 1
        known = self.described > self.delay
        return {n: {"error": None if known else "unknown", "credential_infos": [{}] if known else []} for n in names}

    def close(self) -> None:
        pass


def test_a_new_user_is_waited_for_and_kept_before(monkeypatch: pytest.MonkeyPatch) -> None:
    admins: list[Admin] = []
    monkeypatch.setattr(readiness, "KafkaAdminClient", lambda **kw: admins.append(Admin(**kw)) or admins[-1])
    said: list[int] = []
    readiness.add_scram_users(ACCESS, {"gar": "pw"}, altered=lambda: said.append(admins[0].described))
    assert said == [0], "kept once altered, before any wait"
    assert admins[0].described == Admin.delay + 1, "returned once the broker knew it"


def test_a_user_the_broker_never_knows_fails_named_its_password_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Admin, "delay", 10**9)
    monkeypatch.setattr(readiness, "KafkaAdminClient", Admin)
    kept: list[bool] = []
    with pytest.raises(KafkaRuntimeError, match=r"SCRAM users still unknown 0\.2 s after their change: gar"):
        readiness.add_scram_users(ACCESS, {"gar": "pw"}, altered=lambda: kept.append(True), timeout=0.2)
    assert kept == [True]
