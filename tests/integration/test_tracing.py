"""Tracing per batch (OpenTelemetry's messaging conventions for a batch receive), against the
real broker and database: one span per batch linked to each record's trace context, and every
outgoing record continuing its cause's trace (else the batch's)."""

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import contracts as c
from contracts.internal import PROFILS
from helpers import TopicReader, college, running, send
from helpers import uai as valid_uai
from services.common.runtime.telemetry import tracer_is_recording, tracer_provider
from services.equipement.app import SPEC
from test_equipement import lot, referentiel_loaded

PARTNER_TRACES = ("4bf92f3577b34da6a3ce929d0e0e4736", "0af7651916cd43dd8448eb211c80319c")


@pytest.fixture
def spans():
    """The spans this process ends during the test, through an SDK provider installed for the
    test alone: after it, the process is back to no-op tracing (the default, which the other
    tests run with). OpenTelemetry sets its provider once per process; its own test utilities
    reset these two globals the same way."""
    saved = trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE._done
    provider, exporter = tracer_provider(), InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace._TRACER_PROVIDER_SET_ONCE._done = False
    trace.set_tracer_provider(provider)
    assert tracer_is_recording()
    yield exporter
    provider.shutdown()
    trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE._done = saved
    assert not tracer_is_recording() or isinstance(saved[0], TracerProvider)


async def test_one_span_per_batch_linked_to_each_record_and_traces_continue(kafka, settings, spans):
    uais = [valid_uai(f"035070{n}") for n in range(3)]
    async with (
        running(SPEC, settings) as pipeline,
        TopicReader(kafka.bootstrap_servers, settings.topic(PROFILS)) as profils,
    ):
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(u, college(u)) for u in uais])
        await referentiel_loaded(pipeline, 3)
        topic = settings.topic(c.EQUIPEMENT)
        for uai, trace_id in zip(uais, (*PARTNER_TRACES, None), strict=True):
            headers = [("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01".encode())] if trace_id else []
            await send(kafka.bootstrap_servers, topic, [(uai, lot(uai, "L1", 30, 1))], headers=headers)
        records = await profils.wait_for(lambda rs: len(rs) >= 3, what="the three lots' records")

    batches = [s for s in spans.get_finished_spans() if s.name == "process equipement"]
    assert batches and all(s.kind == trace.SpanKind.CONSUMER for s in batches)
    assert not [s for s in spans.get_finished_spans() if s.name.startswith("equipement process")], "no span per event"
    linked = sorted(format(link.context.trace_id, "032x") for s in batches for link in s.links)
    assert linked == sorted(PARTNER_TRACES), "each record with a trace context is linked, once"
    assert sum(s.attributes["messaging.batch.message_count"] for s in batches) == 3 + 3  # référentiel + lots

    parent = {r.key.decode().split("/")[0]: dict(r.headers)["traceparent"].decode() for r in records}
    assert parent[uais[0]].split("-")[1] == PARTNER_TRACES[0]
    assert parent[uais[1]].split("-")[1] == PARTNER_TRACES[1]
    # No trace context on the cause: the record continues the trace of the batch that made it.
    batch_traces = {format(s.context.trace_id, "032x") for s in batches}
    assert parent[uais[2]].split("-")[1] in batch_traces
