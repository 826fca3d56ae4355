"""A record PostgreSQL refuses is dead-lettered with what it broke, named by its rule: the
error, its SQLSTATE, the table, column or constraint. Never a value: PostgreSQL's message and
its DETAIL may quote the row ("Failing row contains (…)"), and the description goes to the DLQ
header, the dead-letter log, the logs and the traces."""

import asyncpg

from services.common.pipeline import refused_by_database


def test_a_check_violation_is_named_by_its_constraint_not_by_the_row():
    refused = asyncpg.PostgresError.new(
        {
            "S": "ERROR",
            "C": "23514",
            "M": 'new row for relation "affectations" violates check constraint "affectations_check"',
            "D": "Failing row contains (T-secret-42, 0350004X, 2026-09-01).",
            "t": "affectations",
            "n": "affectations_check",
        }
    )
    assert "T-secret-42" in str(refused), "asyncpg's message quotes the row"
    described = refused_by_database(refused)
    assert described == "CheckViolationError, SQLSTATE 23514, table affectations, constraint affectations_check"


def test_a_value_out_of_range_is_named_by_its_column_not_by_the_value():
    refused = asyncpg.PostgresError.new(
        {"S": "ERROR", "C": "22003", "M": 'value "3000000000" is out of range for type integer', "c": "quantity"}
    )
    assert refused_by_database(refused) == "NumericValueOutOfRangeError, SQLSTATE 22003, column quantity"
