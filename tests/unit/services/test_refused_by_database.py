"""A record PostgreSQL refuses is dead-lettered with what it broke, named by its rule: the
error, its SQLSTATE, the table, column or constraint. Never a value: PostgreSQL's message and
its DETAIL may quote the row ("Failing row contains (…)"), and the description goes to the DLQ
header, the dead-letter log, the logs and the traces."""

import asyncpg
import pytest

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


@pytest.mark.parametrize("raised_in", ["a batch's span", "a revival's span"])
def test_a_span_that_failed_names_postgresql_s_rule_never_the_row(raised_in):
    """A revival's span let OpenTelemetry set its status from the exception's text, asyncpg's
    DETAIL quoting the refused row (a teacher_id), for the collector."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from services.common.pipeline import _failed, _failing

    provider, exporter = TracerProvider(), InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    refused = asyncpg.exceptions.NotNullViolationError.new(
        {
            "M": 'null value in column "x"',
            "D": "Failing row contains (Jean-Dupont-NUMEN)",
            "C": "23502",
            "t": "t",
            "c": "x",
        }
    )
    assert "Jean-Dupont" in str(refused)
    tracer = provider.get_tracer("test")
    with (
        pytest.raises(asyncpg.exceptions.NotNullViolationError),
        tracer.start_as_current_span("s", record_exception=False, set_status_on_exception=False) as span,
    ):
        if raised_in == "a revival's span":
            with _failing(span):
                raise refused
        try:
            raise refused
        except asyncpg.PostgresError as exc:
            _failed(span, exc)
            raise
    [span] = exporter.get_finished_spans()
    exported = span.to_json()
    assert span.status.description == "NotNullViolationError, SQLSTATE 23502, table t, column x"
    assert "Jean-Dupont" not in exported and '"exception.type": "NotNullViolationError"' in exported
