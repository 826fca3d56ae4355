"""Tracing per batch (OpenTelemetry's messaging conventions for a batch receive), against the
real broker and database: one span per batch linked to each record's trace context, and every
outgoing record continuing its cause's trace (else the batch's)."""

import asyncio
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import pytest
from aiokafka import AIOKafkaProducer
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import contracts as c
from contracts.internal import PROFILS
from helpers import TopicReader, college, eventually, running, send
from helpers import uai as valid_uai
from services.common.messaging.connection import kafka_options
from services.common.runtime import telemetry
from services.common.runtime.telemetry import tracer_is_recording, tracer_provider
from services.equipement.app import SPEC
from test_equipement import lot, referentiel_loaded

PARTNER_TRACES = ("4bf92f3577b34da6a3ce929d0e0e4736", "0af7651916cd43dd8448eb211c80319c")


@contextmanager
def exported(max_links: int = 2000) -> Iterator[InMemorySpanExporter]:
    """The spans this process ends meanwhile, through an SDK provider installed for the while
    alone (a span keeps up to `max_links` links, as BATCH_MAX_RECORDS sets it in a service):
    after it, the process is back to no-op tracing (the default, which the other tests run
    with). OpenTelemetry sets its provider once per process; its own test utilities reset these
    two globals the same way."""
    saved = trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE._done
    provider, exporter = tracer_provider(max_links=max_links), InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace._TRACER_PROVIDER_SET_ONCE._done = False
    trace.set_tracer_provider(provider)
    assert tracer_is_recording()
    try:
        yield exporter
    finally:
        provider.shutdown()
        trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE._done = saved
    assert not tracer_is_recording() or isinstance(saved[0], TracerProvider)


@pytest.fixture
def spans():
    with exported() as exporter:
        yield exporter


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
            if trace_id == PARTNER_TRACES[0]:  # a partner's own entries
                headers.append(("tracestate", b"rectorat=jean-dupont"))
            await send(kafka.bootstrap_servers, topic, [(uai, lot(uai, "L1", 30, 1))], headers=headers)
        records = await profils.wait_for(lambda rs: len(rs) >= 3, what="the three lots' records")

    batches = [s for s in spans.get_finished_spans() if s.name == "process equipement"]
    assert batches and all(s.kind == trace.SpanKind.CONSUMER for s in batches)
    assert not [s for s in spans.get_finished_spans() if s.name.startswith("equipement process")], "no span per event"
    linked = sorted(format(link.context.trace_id, "032x") for s in batches for link in s.links)
    assert linked == sorted(PARTNER_TRACES), "each record with a trace context is linked, once"
    # Not its tracestate, which the console exporter printed (audit s64 privacy F5).
    assert not [link for s in batches for link in s.links if link.context.trace_state], "no link's tracestate"
    # A batch of one record is one message, which the conventions give no count.
    assert sum(s.attributes.get("messaging.batch.message_count", 1) for s in batches) == 3 + 3  # référentiel + lots
    group = settings.topic("equipement")
    for s in batches:  # the messaging conventions' attributes (audit helper-181 #4)
        assert (s.attributes["messaging.operation.name"], s.attributes["messaging.operation.type"]) == ("process",) * 2
        assert s.attributes["messaging.consumer.group.name"] == group
    topics = {s.attributes.get("messaging.destination.name") for s in batches}
    assert topics <= {settings.topic(c.REFERENTIEL), settings.topic(c.EQUIPEMENT), None}
    assert settings.topic(c.EQUIPEMENT) in topics

    parent = {r.key.decode().split("/")[0]: dict(r.headers)["traceparent"].decode() for r in records}
    assert parent[uais[0]].split("-")[1] == PARTNER_TRACES[0]
    assert parent[uais[1]].split("-")[1] == PARTNER_TRACES[1]
    # No trace context on the cause: the record continues the trace of the batch that made it.
    batch_traces = {format(s.context.trace_id, "032x") for s in batches}
    assert parent[uais[2]].split("-")[1] in batch_traces


async def test_a_large_batch_links_each_trace_context_of_its_records_once(kafka, settings, spans):
    """The SDK's default kept a span's last 128 links and dropped the others without a word: a
    backlog's batch of 2,000 records lost the traces of most. Records sharing a context (a
    partner's batch posted at once) are linked once."""
    uais = [valid_uai(f"0357{n:03d}") for n in range(300)]
    traces = [f"{n + 1:032x}" for n in range(150)]  # each shared by two records
    await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(u, college(u)) for u in uais])
    producer = AIOKafkaProducer(**kafka_options(kafka.bootstrap_servers), acks="all")
    await producer.start()
    try:
        for n, uai in enumerate(uais):  # one partition: the backlog is read in large batches
            parent = f"00-{traces[n // 2]}-00f067aa0ba902b7-01".encode()
            await producer.send(
                settings.topic(c.EQUIPEMENT),
                json.dumps(lot(uai, "L1", 30, 1)).encode(),
                key=uai.encode(),
                partition=0,
                headers=[("content-type", b"application/cloudevents+json"), ("traceparent", parent)],
            )
        await producer.flush()
    finally:
        await producer.stop()

    def batches() -> list:
        return [s for s in spans.get_finished_spans() if s.name == "process equipement"]

    async with running(SPEC, settings):
        await eventually(
            lambda: asyncio.sleep(
                0, {format(k.context.trace_id, "032x") for s in batches() for k in s.links} >= set(traces)
            ),
            what="every trace context linked",
        )
    largest = max(batches(), key=lambda s: len(s.links))
    assert len(largest.links) > 128, f"a batch linking more than the SDK's default: {len(largest.links)}"
    for span in batches():
        contexts = [(k.context.trace_id, k.context.span_id) for k in span.links]
        assert len(contexts) == len(set(contexts)), "each context once per batch"
        assert span.dropped_links == 0


async def test_records_judged_again_are_linked_part_by_part_none_dropped(kafka, settings, monkeypatch):
    """Records refused uai-inconnu wait for their établissement, then are judged again in parts
    of REVIVAL_RECORDS, one transaction for a UAI's: its span took every part's links, and past
    its bound (BATCH_MAX_RECORDS; here 10 records a batch, 25 waiting) the SDK dropped the
    others without a word (audit S3). Each part is now a `process` span of its own."""
    from services.common import pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "REVIVAL_RECORDS", 10)
    uai = valid_uai("0350777")
    traces = [f"{n + 1:032x}" for n in range(25)]
    small = settings.model_copy(update={"batch_max_records": 10})
    with exported(max_links=10) as exporter:
        async with running(SPEC, small) as pipeline:
            for n, trace_id in enumerate(traces):  # before their établissement: they wait for it
                headers = [("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01".encode())]
                await send(
                    kafka.bootstrap_servers,
                    small.topic(c.EQUIPEMENT),
                    [(uai, lot(uai, f"L{n}", 1, 1))],
                    headers=headers,
                )
            await eventually(
                lambda: pipeline.pool.fetchval("SELECT count(*) = 25 FROM attente_referentiel"), what="25 waiting"
            )
            await send(kafka.bootstrap_servers, small.topic(c.REFERENTIEL), [(uai, college(uai))])
            await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 25 FROM lots"), what="25 lots revived")
        ended = exporter.get_finished_spans()
    # (A transaction replayed after a conflict would be a second revive span, its parts again.)
    revivals = {s.context.span_id for s in ended if s.name == "revive equipement"}
    assert {s.kind for s in ended if s.name == "revive equipement"} == {trace.SpanKind.INTERNAL}  # not a receive
    parts = [s for s in ended if s.name == "process equipement" and s.parent and s.parent.span_id in revivals]
    assert len(parts) >= 3 and all(s.attributes.get("messaging.batch.message_count", 1) <= 10 for s in parts)
    assert {format(k.context.trace_id, "032x") for s in parts for k in s.links} == set(traces)
    assert [s.dropped_links for s in ended] == [0] * len(ended)


async def test_with_an_exporter_a_batch_has_no_span_but_its_own(kafka, settings, spans, monkeypatch):
    """FastStream's telemetry middleware, installed with an exporter, made two spans more per
    batch (`<topic> create`, a root, and `<topic> process`), named and described after the
    batch's first record alone, the partner's correlation_id copied in: the batch's span was
    their child. Its spans went to the service's own provider (here the console's)."""
    uai = valid_uai("0357999")
    printed = io.StringIO()
    monkeypatch.setattr(telemetry, "ConsoleSpanExporter", partial(ConsoleSpanExporter, out=printed))
    exporting = settings.model_copy(update={"otel_exporter": "console"})
    async with running(SPEC, exporting) as pipeline:
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(uai, college(uai))])
        await referentiel_loaded(pipeline, 1)
    assert [s for s in spans.get_finished_spans() if s.name == "process equipement"], "the batch's own span"
    assert [json.loads(line)["name"] for line in printed.getvalue().splitlines()] == []


async def test_an_http_request_makes_no_span_and_its_query_goes_nowhere(kafka, settings, spans):
    """FastAPI's own OpenTelemetry made a span of every request once an exporter was set, the
    probes' and scrapes' too, its `url.query` exported as sent (a token in it, which the logs
    mask), its parent read with the process's global propagators (audit helper-181 #3)."""
    from helpers import serving
    from services.ressources.app import SPEC as RESSOURCES

    async with serving(RESSOURCES, settings) as (client, _):
        for path in ("/health", "/readyz", "/metrics", "/alertes?token=secret-in-a-query"):
            response = await client.get(path, headers={"traceparent": f"00-{PARTNER_TRACES[0]}-00f067aa0ba902b7-01"})
            assert response.status_code < 500, path
    made = spans.get_finished_spans()
    assert not [s for s in made if s.kind == trace.SpanKind.SERVER or s.name.startswith(("GET", "fastapi"))], [
        s.name for s in made
    ]
    assert "secret-in-a-query" not in "".join(s.to_json() for s in made)


async def test_a_failed_batch_s_span_names_its_error_type(kafka, settings, spans):
    """The conventions' `error.type` on a span that failed: the exception's type, never its
    message, which may quote a refused value (audit helper-181 #4)."""
    uais = [valid_uai(f"035071{n}") for n in range(2)]
    async with running(SPEC, settings) as pipeline:
        await send(kafka.bootstrap_servers, settings.topic(c.REFERENTIEL), [(u, college(u)) for u in uais])
        await referentiel_loaded(pipeline, 2)
        await pipeline.pool.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.uai = '{uais[0]}' THEN RAISE EXCEPTION 'Dupont refused' USING ERRCODE = 'data_exception'; "
            "END IF; RETURN NEW; END $$; "
            "CREATE TRIGGER refuse BEFORE INSERT ON lots FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
        await send(kafka.bootstrap_servers, settings.topic(c.EQUIPEMENT), [(u, lot(u, "L1", 30, 1)) for u in uais])
        await eventually(lambda: pipeline.pool.fetchval("SELECT count(*) = 1 FROM lots"), what="the other lot")

    failed = [s for s in spans.get_finished_spans() if s.status.status_code == trace.StatusCode.ERROR]
    assert failed and {s.attributes["error.type"] for s in failed} == {"DataError"}
    assert "Dupont" not in "".join(s.to_json() for s in failed)
