"""Trace and span ids do not depend on the `random` module's shared state (telemetry.OwnRandomIds); a
record's trace context read from its headers, repeated ones included."""

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


def test_repeated_trace_headers_are_one_list_or_no_context_when_they_disagree():
    """The last field alone was taken: a partner's first tracestate members lost, and of two
    different traceparents one picked silently."""
    from services.common.runtime.telemetry import trace_headers

    first, other = (f"00-{n:032x}-00f067aa0ba902b7-01".encode() for n in (1, 2))
    states = [("tracestate", b"congo=t61rcWkgMzE"), ("tracestate", b"rojo=00f067aa0ba902b7")]
    carried = trace_headers([("traceparent", first), *states], None, with_state=True)
    assert carried == {"traceparent": first.decode(), "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"}
    assert trace_headers([("traceparent", first), ("traceparent", first)], None) == {"traceparent": first.decode()}
    assert trace_headers([("traceparent", first), ("traceparent", other)], None) == {}
