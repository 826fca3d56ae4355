"""A loop retrying what PostgreSQL being away makes fail says it once (runtime/outages.py)."""

import asyncpg

from helpers import Said
from services.common.runtime.outages import Outage


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


def test_a_password_in_the_error_is_not_said():
    said = Said()
    try:
        raise ConnectionRefusedError("cannot reach postgresql://feo:s3cret@db/feo")
    except ConnectionRefusedError as exc:
        Outage(said, "loop.failed", "loop.recovered", "").failed(exc)
    assert "s3cret" not in said.lines[0]["detail"]
