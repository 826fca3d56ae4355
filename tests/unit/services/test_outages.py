"""A loop retrying what PostgreSQL being away makes fail says it once (runtime/outages.py)."""

import asyncio

import asyncpg
import pytest

from helpers import Said
from services.common.runtime import outages
from services.common.runtime.outages import EveryFew, Outage
from services.common.storage import retention


def test_an_outage_is_said_once_a_fault_each_time_and_its_end_once():
    said = Said()
    outage = Outage(said, "loop.failed", "loop.recovered", "a hint")
    outage.succeeded()  # nothing failed: nothing to say
    for exc in (ConnectionRefusedError(), asyncpg.CannotConnectNowError("starting"), RuntimeError("a bug")):
        try:
            raise exc
        except Exception as caught:
            outage.failed(caught, round=1)
    outage.succeeded()
    outage.succeeded()
    lines = [(line["event"], line["level"], line.get("error")) for line in said.lines]
    assert lines == [
        ("loop.failed", "warning", "ConnectionRefusedError"),
        ("loop.failed", "debug", "CannotConnectNowError"),
        ("loop.failed", "exception", None),  # a fault, with its traceback
        ("loop.recovered", "info", None),
    ]
    assert said.lines[0]["hint"] == "a hint" and said.lines[0]["round"] == 1


def test_a_state_is_said_again_when_it_changes_and_the_outage_ends_once():
    said = Said()
    outage = Outage(said, "relay.waiting", "relay.resumed", "away", away=(Exception,))
    read_only = ("relay.read_only", "no writes")
    for exc, state in [
        (ConnectionRefusedError(), None),
        (TimeoutError(), None),
        (asyncpg.ReadOnlySQLTransactionError("read-only"), read_only),
        (asyncpg.ReadOnlySQLTransactionError("read-only"), read_only),
        (ConnectionRefusedError(), None),  # writes taken again, Kafka away
    ]:
        outage.failed(exc, state)
    outage.succeeded()
    assert [(line["event"], line["level"], line.get("hint")) for line in said.lines] == [
        ("relay.waiting", "warning", "away"),
        ("relay.waiting", "debug", None),
        ("relay.read_only", "warning", "no writes"),
        ("relay.read_only", "debug", None),
        ("relay.waiting", "warning", "away"),
        ("relay.resumed", "info", None),
    ]


def test_a_password_in_the_error_is_not_said():
    said = Said()
    try:
        raise ConnectionRefusedError("cannot reach postgresql://feo:s3cret@db/feo")
    except ConnectionRefusedError as exc:
        Outage(said, "loop.failed", "loop.recovered", "").failed(exc)
    assert "s3cret" not in said.lines[0]["detail"]


def test_a_line_every_few_seconds_says_how_many_were_not_said_since(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(outages.time, "monotonic", lambda: now[0])
    said, every = Said(), EveryFew(10)
    for at in (100.0, 101.0, 105.0, 109.9, 110.0, 111.0, 125.0):
        now[0] = at
        every.say(said.warning, "api.base_injoignable", error="ConnectionRefusedError")
    assert [(line["event"], line["autres_requetes"]) for line in said.lines] == [
        ("api.base_injoignable", 0),  # at 100
        ("api.base_injoignable", 3),  # at 110: 101, 105 and 109.9 were not said
        ("api.base_injoignable", 1),  # at 125: 111
    ]
    assert said.lines[0]["error"] == "ConnectionRefusedError" and said.lines[0]["level"] == "warning"


async def test_a_purge_says_postgresql_away_once_and_a_fault_each_time(monkeypatch):
    said = Said()
    monkeypatch.setattr(retention, "log", said)
    outcomes = iter([ConnectionRefusedError(), ConnectionRefusedError(), 3, 0, RuntimeError("a bug"), None])

    async def purge() -> int:
        outcome = next(outcomes)
        if outcome is None:
            raise asyncio.CancelledError  # the service stopping
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    with pytest.raises(asyncio.CancelledError):
        await retention.periodically("retention", purge, period=0, older_than_days=30)
    assert [(line["event"], line["level"]) for line in said.lines] == [
        ("retention.purge_failed", "warning"),
        ("retention.purge_failed", "debug"),  # every period while away: an hour each, in a service
        ("retention.purge_recovered", "info"),
        ("retention.purged", "info"),
        ("retention.purge_failed", "exception"),  # a fault, with its traceback
    ]
    assert said.lines[3]["rows"] == 3 and said.lines[3]["older_than_days"] == 30
