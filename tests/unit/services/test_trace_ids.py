"""Trace and span ids do not depend on the `random` module's shared state (telemetry.OwnRandomIds)."""

import random

from services.common.runtime.telemetry import tracer_provider


def _ids_after_seeding(provider) -> list[tuple[int, int]]:
    tracer = provider.get_tracer("test")
    ids = []
    for _ in range(3):
        random.seed(0)  # what hypothesis does around each example
        with tracer.start_as_current_span("batch") as span:
            context = span.get_span_context()
            ids.append((context.trace_id, context.span_id))
    return ids


def test_ids_differ_when_the_shared_random_is_seeded_the_same_each_time():
    state = random.getstate()
    try:
        ids = _ids_after_seeding(tracer_provider("test"))
    finally:
        random.setstate(state)
    assert len({t for t, _ in ids}) == 3 and len({s for _, s in ids}) == 3
    assert all(t and s for t, s in ids)


def test_drawing_ids_leaves_the_shared_random_as_it_was():
    provider = tracer_provider("test")
    before = random.getstate()
    with provider.get_tracer("test").start_as_current_span("batch"):
        pass
    assert random.getstate() == before
