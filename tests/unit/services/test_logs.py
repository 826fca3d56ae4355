"""configure_logging: the libraries' lines in the service's format, quiet below their level,
aiokafka's retried coordinator errors not shown as errors (real processes:
tests/integration/test_settings_and_logs.py)."""

import asyncio
import json
import logging
import sys

import faststream  # noqa: F401  (installs its own "faststream" logger, as in a service)
import pytest
import structlog
from aiokafka.errors import GroupCoordinatorNotAvailableError
from opentelemetry import trace

from services.common.runtime.logs import COORDINATOR, configure_logging

pytestmark = pytest.mark.usefixtures("logging_restored")


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_library_lines_are_json_like_the_service_s_and_quiet_below_warning(capsys):
    configure_logging("svc", "json", "INFO")
    structlog.get_logger("test").info("batch.applied", records=3)
    logging.getLogger("aiokafka.conn").info("Connected to node 1")
    logging.getLogger("faststream").info("FastStream app started successfully! To exit, press CTRL+C")
    logging.getLogger("aiokafka.conn").warning("Unable to connect to %s", "postgresql://feo:s3cret@db/feo")
    lines = json_lines(capsys.readouterr().err)
    assert [(line["event"], line["service"], line["level"]) for line in lines] == [
        ("batch.applied", "svc", "info"),
        ("Unable to connect to postgresql://feo:***@db/feo", "svc", "warning"),
    ]
    assert lines[1]["logger"] == "aiokafka.conn" and "timestamp" in lines[1]


def test_a_line_said_in_a_recording_span_names_its_trace_and_span(capsys):
    """By them a line (`batch.failed`) finds its batch's span, and through its links the
    partners' traces; with no exporter (no span recording) a line has neither."""
    from opentelemetry.sdk.trace import TracerProvider

    configure_logging("svc", "json", "INFO")
    log = structlog.get_logger("test")
    with TracerProvider().get_tracer("test").start_as_current_span("process svc") as span:
        log.info("batch.applied", records=3)
    with trace.get_tracer("no-op").start_as_current_span("process svc"):  # the API's no-op tracer
        log.info("batch.applied", records=1)
    recorded, unrecorded = json_lines(capsys.readouterr().err)
    context = span.get_span_context()
    assert (recorded["trace_id"], recorded["span_id"]) == (f"{context.trace_id:032x}", f"{context.span_id:016x}")
    assert "trace_id" not in unrecorded and "span_id" not in unrecorded


def test_faststream_speaks_through_the_root_logger_without_its_colours(capsys):
    # FastStream installs its own coloured handler at import; an earlier test of the session may
    # have configured logging already, so put one back as it would be.
    coloured = logging.StreamHandler(sys.stderr)
    coloured.setFormatter(logging.Formatter("\x1b[36m%(name)s\x1b[0m %(message)s"))
    logging.getLogger("faststream").addHandler(coloured)
    logging.getLogger("faststream").propagate = False
    configure_logging("svc", "console", "INFO", library_level="INFO")  # stderr is not a terminal here
    logging.getLogger("faststream").info("FastStream app starting...")
    err = capsys.readouterr().err
    assert "FastStream app starting..." in err and "faststream" in err
    assert "\x1b[" not in err
    assert err.count("FastStream app starting...") == 1, "once: not also by its own handler"


def test_a_group_coordinator_error_aiokafka_retries_is_info_not_error(capsys):
    configure_logging("svc", "json", "INFO")
    coordinator = logging.getLogger(COORDINATOR)
    coordinator.error("Group Coordinator Request failed: %s", GroupCoordinatorNotAvailableError())
    coordinator.warning("Marking the coordinator dead (node %s)for group %s.", 1, "formation")
    coordinator.error("Heartbeat failed: %r", ValueError("boom"))
    assert [line["event"] for line in json_lines(capsys.readouterr().err)] == ["Heartbeat failed: ValueError('boom')"]

    configure_logging("svc", "json", "INFO", library_level="INFO")  # asked for: shown, as INFO
    coordinator.error("Group Coordinator Request failed: %s", GroupCoordinatorNotAvailableError())
    [line] = json_lines(capsys.readouterr().err)
    assert line["level"] == "info" and "GroupCoordinatorNotAvailableError" in line["event"]


def test_configured_twice_a_line_is_written_once(capsys):
    configure_logging("svc", "json", "INFO")
    configure_logging("svc", "json", "INFO")
    logging.getLogger("asyncio").error("Task was destroyed but it is pending!")
    assert len(json_lines(capsys.readouterr().err)) == 1


def test_only_a_request_cut_at_a_stop_loses_its_traceback_on_uvicorns_logger():
    """uvicorn prints the request it cancels past a stop's grace as the app's exception, after
    saying it cut it: that traceback is dropped. Any other cancellation is printed as it comes."""
    from services.common.runtime.logs import _request_cut_at_stop

    def record(error: BaseException) -> logging.LogRecord:
        return logging.LogRecord(
            "uvicorn.error",
            logging.ERROR,
            __file__,
            1,
            "Exception in ASGI application\n",
            (),
            (type(error), error, None),
        )

    assert not _request_cut_at_stop(
        record(asyncio.CancelledError("Task cancelled, timeout graceful shutdown exceeded"))
    )
    assert _request_cut_at_stop(record(asyncio.CancelledError()))
    assert _request_cut_at_stop(record(RuntimeError("timeout graceful shutdown exceeded")))


def test_a_partner_s_tracestate_refused_is_not_quoted_in_the_log(capsys):
    """OpenTelemetry quoted a tracestate member it refused at WARNING: any text of the partner's
    choosing (a person's name) in the service's log, once per request or record."""
    from services.common.runtime.telemetry import context_from_headers, trace_headers

    configure_logging("svc", "json", "INFO")
    traceparent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers = [("traceparent", traceparent), ("tracestate", b"congo=t61rcWkgMzE,Jean Dupont 01/02/1980")]
    context_from_headers(headers)
    assert trace_headers(headers, None)["traceparent"] == traceparent.decode(), "the trace itself still read"
    assert "Dupont" not in capsys.readouterr().err


def test_a_line_that_cannot_be_written_is_lost_not_raised(monkeypatch):
    """A log call after a batch's commit raised BrokenPipeError when stderr's pipe was broken:
    the batch failed and was taken again, for as long as it lasted."""

    class Broken:
        def write(self, text: str) -> int:
            raise BrokenPipeError("the log collector went away")

        def flush(self) -> None:
            raise BrokenPipeError("the log collector went away")

    configure_logging("svc", "json", "INFO")
    monkeypatch.setattr(sys, "stderr", Broken())
    structlog.get_logger("test").info("batch.applied", records=3)
    logging.getLogger("aiokafka.conn").warning("Unable to connect")


def test_an_error_the_platform_logged_is_not_logged_again_by_faststream(capsys):
    """A batch that failed was logged twice with its traceback: `batch.failed`, then FastStream's
    own error line once the handler raised it back (the batch taken again). Now once; an
    error the platform did not log is still FastStream's to say."""
    from services.common.runtime.logs import said

    configure_logging("svc", "json", "INFO")
    kafka = logging.getLogger("faststream.kafka")
    logged, other = RuntimeError("disk full"), RuntimeError("in FastStream's parser")
    said(logged)
    for error in (logged, other):
        try:
            raise error
        except RuntimeError:
            kafka.exception("%s", error)
    assert [line["event"] for line in json_lines(capsys.readouterr().err)] == ["in FastStream's parser"]


def test_on_a_terminal_a_partner_s_text_cannot_drive_it(capsys):
    """Console lines (`./dev up` in a terminal) show a partner's escape sequence or bidi override
    as its escape, not acted on, and a line break in a message too, which would start a line of
    its choosing; a traceback keeps its lines (security audit s69 F3, review s69)."""
    configure_logging("svc", "console", "INFO")
    log = structlog.get_logger("test")
    log.info("reevaluation.part_done", resource_id="\x1b[2J\x1b]0;pwned\x07r\u202e1")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("batch.failed")
    logging.getLogger("aiokafka.conn").warning("topic \x1b[31mred\n2026-12-07 [error    ] forged")
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "\u202e" not in err
    assert "\\u001b[2J" in err and "\\u202e" in err and "\\u001b[31mred\\u000a2026-12-07 [error" in err
    assert not [line for line in err.splitlines() if line.startswith("2026-12-07 [error")], "no line forged"
    assert "Traceback (most recent call last):\n" in err and "ValueError: boom" in err
