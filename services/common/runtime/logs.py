"""One log format per run: readable in a terminal, one JSON object per line otherwise, for the
service's own lines and for the libraries' (FastStream, aiokafka, uvicorn, asyncio), which go
through the standard library's root logger and structlog's `ProcessorFormatter`.

The service logs one line per batch (`batch.applied`, pipeline.py) and, in ressources, per
evaluation that changed an alert (`alerts.evaluated`); per-event and per-alert lines are at
DEBUG. Libraries speak from `LIBRARY_LOG_LEVEL` (WARNING by default): their start, stop and
partition-assignment lines are INFO. No line shows a password:
every text value, exception text included, goes through `secrets.redact`.
"""

import asyncio
import io
import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO, cast

import structlog
from opentelemetry import trace

from services.common.runtime.secrets import redact

RETRIED_BY_AIOKAFKA = (
    "GroupCoordinatorNotAvailableError",
    "NotCoordinatorForGroupError",
    "Marking the coordinator dead",
)
"""aiokafka's group coordinator lines while the coordinator is loading or moving, which it
retries (at every start on a new broker): INFO, not ERROR. A Kafka really away is said by the
service itself (`dependencies.lost`)."""

QUOTING_PARTNERS = "opentelemetry.trace.span"
"""OpenTelemetry's logger that quotes a `tracestate` member it refuses, at WARNING: a partner's
header, any text it chose (a person's name too). Only its errors are shown; the member is
dropped all the same."""
COORDINATOR = "aiokafka.consumer.group_coordinator"
"""aiokafka's logger of the group coordinator, whose retried errors configure_logging tones down."""


def visible(text: str, keep: str = "") -> str:
    """`text` with each character a terminal would act on or not show (control characters but
    those of `keep`, an escape sequence's ESC; format characters, a bidi override) written as
    its escape (`\\u001b`, `\\u202e`): partners choose member names, identifiers and OS names,
    which reach an operator's terminal in a DLQ message or a log line (security audit s69 F3)."""
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() or ch in keep else f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}"
        for ch in text
    )


_LINES = frozenset({"exception", "stack"})
"""The values the console writes on lines of their own (a traceback): their line breaks kept."""


def _visible_values(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor of the console format (a terminal's): every text value `visible`, a
    traceback's lines kept; the others' line breaks too are escapes (a library's message, printed
    as it is, would otherwise start a line of its own choosing). JSON lines escape them themselves."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = visible(value, keep="\n\t" if key in _LINES else "")
    return event_dict


def redact_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: masks the passwords of URLs and DSNs in every text value, those in
    dicts, lists and tuples of the line too."""
    for key, value in event_dict.items():
        event_dict[key] = _redacted(value)
    return event_dict


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: _redacted(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_redacted(v) for v in value)
    return value


class _CurrentStderr(io.TextIOBase):
    """Whatever `sys.stderr` is when a line is written, not when logging was configured (a test
    capturing stderr replaces it, then closes its replacement)."""

    def write(self, text: str, /) -> int:
        # A line that cannot be written (the pipe to the log collector broken, full) is lost,
        # as the standard library's handlers lose theirs: raised from a log call after a
        # batch's commit, it failed the batch, which was taken again, for as long as it lasted.
        try:
            return sys.stderr.write(text)
        except OSError:
            return 0

    def flush(self) -> None:
        try:
            sys.stderr.flush()
        except OSError:
            pass


class _LibraryHandler(logging.StreamHandler):
    """The root logger's handler installed here (replaced, not added again, on each call)."""


def _coordinator_retry(record: logging.LogRecord) -> bool:
    """A filter of aiokafka's coordinator logger: it runs before the handlers compare the record's
    level with theirs, so a line made INFO here is dropped below LIBRARY_LOG_LEVEL=INFO."""
    if record.levelno > logging.INFO and any(text in record.getMessage() for text in RETRIED_BY_AIOKAFKA):
        record.levelno, record.levelname = logging.INFO, "INFO"
    return True


CUT_AT_STOP = "timeout graceful shutdown exceeded"
"""What uvicorn says when it cancels the requests still in flight once a stop's grace is over."""


def _request_cut_at_stop(record: logging.LogRecord) -> bool:
    """A filter of uvicorn's logger: a request cut at a stop (uvicorn cancels it with CUT_AT_STOP)
    has its traceback printed as an exception of the app, after uvicorn's own line saying it cut
    it ("Cancel N running task(s), timeout graceful shutdown exceeded"). Any other cancellation
    is printed as it comes."""
    error = record.exc_info[1] if record.exc_info else None
    return not (isinstance(error, asyncio.CancelledError) and CUT_AT_STOP in str(error))


_SAID = "_feo_said"


def said(error: BaseException) -> None:
    """`error` has been logged with its traceback by the platform (`batch.failed`): FastStream,
    which the consumer's handler re-raises it to (the batch taken again), does not log it again."""
    try:
        setattr(error, _SAID, True)
    except AttributeError:  # an exception type without a __dict__: logged twice, as before
        pass


def _said_already(record: logging.LogRecord) -> bool:
    """A filter of the libraries' handler: a record whose exception the platform logged (`said`)."""
    error = record.exc_info[1] if record.exc_info else None
    return not getattr(error, _SAID, False)


def _trace_ids(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The line's span, when one is recording (an exporter set: OTEL_EXPORTER): its trace and
    span ids, by which a line (`batch.failed`, `events.rejected`) finds its batch's span, and
    through its links the partners' traces."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event.setdefault("trace_id", format(context.trace_id, "032x"))
        event.setdefault("span_id", format(context.span_id, "016x"))
    return event


def configure_logging(service: str, fmt: str = "auto", level: str = "INFO", library_level: str = "WARNING") -> None:
    tty = sys.stderr.isatty()
    use_json = fmt == "json" or (fmt == "auto" and not tty)
    renderer = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=tty)
    shown: list[structlog.typing.Processor] = [] if use_json else [_visible_values]
    stamped: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        _trace_ids,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *stamped,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact_secrets,
            *shown,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)

    handler = _LibraryHandler(_CurrentStderr())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                *stamped,
                structlog.stdlib.add_logger_name,
                structlog.processors.format_exc_info,
                redact_secrets,
                *shown,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    handler.setLevel(library_level.upper())
    handler.addFilter(_said_already)
    root = logging.getLogger()
    for previous in [h for h in root.handlers if isinstance(h, _LibraryHandler)]:
        root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(library_level.upper())
    # FastStream's logger comes with its own handler (its format, colour codes) and does not
    # propagate: it goes through the root logger like any other.
    faststream = logging.getLogger("faststream")
    faststream.handlers.clear()
    faststream.propagate = True
    faststream.setLevel(logging.NOTSET)
    coordinator = logging.getLogger(COORDINATOR)
    if _coordinator_retry not in coordinator.filters:
        coordinator.addFilter(_coordinator_retry)
    uvicorn = logging.getLogger("uvicorn.error")
    if _request_cut_at_stop not in uvicorn.filters:
        uvicorn.addFilter(_request_cut_at_stop)
    logging.getLogger(QUOTING_PARTNERS).setLevel(logging.ERROR)
    logging.captureWarnings(True)  # Python's warnings as log lines, in the same format
