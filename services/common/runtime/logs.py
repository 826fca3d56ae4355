"""structlog set-up: readable in a terminal, one JSON object per line otherwise.

Handlers bind `event_id`, `event_type` and `uai` with `structlog.contextvars`, so every line
logged while an event is handled carries them. No line shows a password: every text value,
exception text included, goes through `secrets.redact`.
"""

import io
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import structlog

from services.common.runtime.secrets import redact


def redact_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: masks the passwords of URLs and DSNs in every text value."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = redact(value)
    return event_dict


class _CurrentStderr(io.TextIOBase):
    """Whatever `sys.stderr` is when a line is written, not when logging was configured (a test
    capturing stderr replaces it, then closes its replacement)."""

    def write(self, text: str, /) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(service: str, fmt: str = "auto", level: str = "INFO") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    # FastStream and aiokafka log through the standard library: keep them, less chatty.
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format=f"{service} %(name)s %(levelname)s %(message)s"
    )
    logging.getLogger("faststream").setLevel(max(logging.INFO, logging.getLevelName(level.upper())))
