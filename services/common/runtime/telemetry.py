"""OpenTelemetry tracing: one span per handled batch, linked to each record's trace context.

The outbox stores, as the `traceparent` of each outgoing record, the trace context of the
record that caused it (else the batch's span), and the relay publishes it as stored, so one
trace follows an event from a partner's record, through every service, to the alert a
dashboard reads. With no exporter (the default) no SDK is installed: spans are no-ops and
cost nothing, while partners' trace contexts are still carried along.
"""

import random
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

from fastapi.telemetry import TelemetryConfig
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.common.messaging.outbox import text_headers
from services.common.runtime.settings import ServiceSettings


class OwnRandomIds(IdGenerator):
    """Trace and span ids drawn from a generator of their own, seeded by the system. The SDK's
    default draws from the `random` module's shared state, which anything in the process may
    seed: hypothesis seeds it to 0 around each example, so spans of a service running beside
    such a test (same process) got the same ids over and over, and its drawing raced with theirs."""

    def __init__(self) -> None:
        self._random = random.Random()  # seeded from os.urandom

    def generate_span_id(self) -> int:
        while (span_id := self._random.getrandbits(64)) == trace.INVALID_SPAN_ID:
            pass
        return span_id

    def generate_trace_id(self) -> int:
        while (trace_id := self._random.getrandbits(128)) == trace.INVALID_TRACE_ID:
            pass
        return trace_id

    def is_trace_id_random(self) -> bool:
        return True


def tracer_provider(service: str | None = None, max_links: int = 2000) -> TracerProvider:
    """An SDK provider, its ids drawn by OwnRandomIds; no span processor yet. A span keeps up to
    `max_links` links (a batch's span, one per trace context among its records): the SDK's
    default kept the last 128 and dropped the others without a word."""
    resource = Resource.create({"service.name": service} if service else {})
    return TracerProvider(resource=resource, id_generator=OwnRandomIds(), span_limits=SpanLimits(max_links=max_links))


HTTP_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}
"""FastAPI's own OpenTelemetry (`FastAPI(telemetry=...)`), off: with an exporter, every request
made a span, the probes' and scrapes' too, whose `url.query` went out as sent (a token in it
included, which the logs mask) and whose parent came from the process's global propagators
(W3C baggage too: W3C_TRACE_CONTEXT below). What is traced is the batches (README, Tracing)."""


def traces_url(endpoint: str) -> str:
    """OTEL_ENDPOINT as the exporter takes it, the traces' own URL: a collector's base address
    (`http://collector:4318`, what OTEL_EXPORTER_OTLP_ENDPOINT names) gets `/v1/traces`, which
    the exporter adds to that variable only; its spans went to `/`, answered 404."""
    parts = urlsplit(endpoint)
    if parts.path in ("", "/"):
        return urlunsplit(parts._replace(path="/v1/traces"))
    return endpoint


def configure_tracing(service: str, settings: ServiceSettings, max_links: int) -> TracerProvider | None:
    """The SDK's provider when spans are exported somewhere, else None (no-op tracing)."""
    if settings.otel_exporter == "none":
        return None
    provider = tracer_provider(service, max_links=max_links)
    if settings.otel_exporter == "console":
        # One JSON object per line, like the logs (its default is indented over many lines).
        one_line = ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")
        provider.add_span_processor(BatchSpanProcessor(one_line))
    elif settings.otel_exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.otel_endpoint
        exporter = OTLPSpanExporter(endpoint=traces_url(str(endpoint))) if endpoint else OTLPSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(provider)  # once per process: tests run several services in one
    return provider


W3C_TRACE_CONTEXT = TraceContextTextMapPropagator()
"""What a record's trace travels by: `traceparent` and `tracestate`, nothing else. Not the
process's global propagators (OpenTelemetry's default adds W3C baggage, OTEL_PROPAGATORS may add
more): a partner's `baggage` header would go on to the alerts every territory's dashboards read
(CONTRACTS.md, Limits: a header never affects any other record)."""


def context_from_headers(headers: Iterable[tuple[str, bytes | None]]) -> Context:
    """A partner's headers are any bytes or null: only text values can carry a trace context.
    Repeated, `tracestate` fields are one list (RFC 9110, W3C Trace Context: combined with
    commas; the last alone lost the others' members), and two different `traceparent`s are no
    context at all (which is the record's? the last one was taken)."""
    carrier: dict[str, str] = {}
    for name, value in text_headers(headers):
        if name == "tracestate" and name in carrier:
            carrier[name] += "," + value
        elif name == "traceparent" and carrier.get(name, value) != value:
            return Context()
        else:
            carrier[name] = value
    return W3C_TRACE_CONTEXT.extract(carrier)


def tracer_is_recording() -> bool:
    """Whether spans go anywhere (an SDK provider is installed): else links are not worth building."""
    return isinstance(trace.get_tracer_provider(), TracerProvider)


def trace_headers(
    cause: Iterable[tuple[str, bytes | None]] | None, span: trace.Span | None, *, with_state: bool = False
) -> dict[str, str]:
    """The trace headers of a record caused by a record with headers `cause`: its trace context
    when it has one, else `span`'s (the batch that produced it), else none. `traceparent` alone
    unless `with_state`: a partner's `tracestate` is up to 32 entries of its own choosing, which
    would go on to the records a service derives (alerts every territory reads); the
    passerelle keeps it on the partner's own record."""
    carrier: dict[str, str] = {}
    context = context_from_headers(cause) if cause else None
    if context is not None and trace.get_current_span(context).get_span_context().is_valid:
        W3C_TRACE_CONTEXT.inject(carrier, context=context)
    elif span is not None and span.get_span_context().is_valid:
        W3C_TRACE_CONTEXT.inject(carrier, context=trace.set_span_in_context(span))
    if not with_state:
        carrier.pop("tracestate", None)
    return carrier
