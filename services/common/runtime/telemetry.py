"""OpenTelemetry tracing: FastStream's Kafka middleware plus one span per handled event.

The outbox stores the W3C trace context of the event that caused each outgoing record and
the relay publishes it under that context, so one trace follows an event from a partner's
record, through every service, to the alert a dashboard reads.
"""

from collections.abc import Iterable

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from services.common.messaging.outbox import text_headers
from services.common.runtime.settings import ServiceSettings


def configure_tracing(service: str, settings: ServiceSettings) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if settings.otel_exporter == "console":
        # One JSON object per line, like the logs (its default is indented over many lines).
        one_line = ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")
        provider.add_span_processor(BatchSpanProcessor(one_line))
    elif settings.otel_exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otel_endpoint) if settings.otel_endpoint else OTLPSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(provider)  # once per process: tests run several services in one
    return provider


def context_from_headers(headers: Iterable[tuple[str, bytes | None]]) -> Context:
    """A partner's headers are any bytes or null: only text values can carry a trace context."""
    return propagate.extract(dict(text_headers(headers)))


def headers_for(span: trace.Span | None) -> dict[str, str]:
    """The trace headers that make `span` the parent of whatever a record triggers next."""
    carrier: dict[str, str] = {}
    if span is not None:
        propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier
