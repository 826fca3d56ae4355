"""Fixtures of the services' unit tests."""

import logging

import pytest
import structlog

from services.common.runtime.logs import COORDINATOR


@pytest.fixture
def logging_restored():
    """configure_logging changes process-wide state: put it back for the other tests."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    library = logging.getLogger("faststream")
    library_state = (list(library.handlers), library.propagate, library.level)
    coordinator_filters = list(logging.getLogger(COORDINATOR).filters)
    yield
    structlog.configure(**saved)
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = handlers
    root.setLevel(level)
    library.handlers[:], library.propagate = library_state[:2]
    library.setLevel(library_state[2])
    logging.getLogger(COORDINATOR).filters[:] = coordinator_filters
    logging.captureWarnings(False)
