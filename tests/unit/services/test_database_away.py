"""Which failures are PostgreSQL (or Kafka) away, said once as a state, and which are faults,
said with their traceback: a value asyncpg cannot send is an InterfaceError, as a connection
gone is, and was taken for PostgreSQL away (storage/db.database_away)."""

import asyncpg
import pytest
from aiokafka.errors import KafkaConnectionError

from services.common.messaging.outbox import kafka_or_database_away
from services.common.storage.db import DATABASE_AWAY, database_away

UNSENDABLE = asyncpg.exceptions._base.DataError(
    "invalid input for query argument $1: 3000000000 (value out of int32 range)"
)


@pytest.mark.parametrize(
    "exc",
    [ConnectionRefusedError(), TimeoutError(), asyncpg.ConnectionDoesNotExistError("closed"),
     asyncpg.AdminShutdownError("shutting down"), asyncpg.ReadOnlySQLTransactionError("read-only")],
)  # fmt: skip
def test_the_database_away(exc):
    assert database_away(exc) and kafka_or_database_away(exc)


def test_a_value_asyncpg_cannot_send_is_a_fault_not_the_database_away():
    assert isinstance(UNSENDABLE, DATABASE_AWAY), "what an except clause of DATABASE_AWAY takes"
    assert not database_away(UNSENDABLE) and not kafka_or_database_away(UNSENDABLE)


@pytest.mark.parametrize("exc", [asyncpg.DataError("22003"), asyncpg.QueryCanceledError("timeout"), ValueError()])
def test_what_one_statement_met_is_not_the_database_away(exc):
    assert not database_away(exc)


def test_kafka_away():
    assert kafka_or_database_away(KafkaConnectionError()) and not database_away(KafkaConnectionError())
