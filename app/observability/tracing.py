"""OpenTelemetry tracing: the provider, its OTLP exporter and the traceparent header.

The provider is made by create_app but exports nothing until start_export() runs in the
worker's lifespan, after gunicorn forked: a BatchSpanProcessor's thread does not survive fork.
Every span handed to export is counted by what became of it (exported, failed, dropped), so a
collector that refuses, hangs or falls behind shows on /metrics instead of going unnoticed.
"""

import logging
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from app.observability.metrics import Metrics
from app.settings import Settings

# Where the SDK's batch processor logs each span it drops; its messages are matched below.
_BATCH_PROCESSOR_LOGGER = "opentelemetry.sdk._shared_internal"


def _sampler(settings: Settings) -> Sampler:
    ratio = TraceIdRatioBased(settings.otel_traces_sampler_arg)
    return {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": ratio,
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(ratio),
    }[settings.otel_traces_sampler]


def make_tracer_provider(settings: Settings) -> TracerProvider:
    # Spans are always made, even with no exporter, so logs, Sentry events and the
    # traceparent header carry real trace ids that a client can quote.
    resource = Resource.create({SERVICE_NAME: settings.otel_service_name})
    return TracerProvider(resource=resource, sampler=_sampler(settings))


# What a span may carry to the exporter, unless TELEMETRY_INCLUDE_PII: the instrumentations also
# record the query string (emails), the client's address, the user agent and the host.
_ALLOWED_ATTRIBUTES = frozenset(
    {
        "http.request.method",
        "http.response.status_code",
        "http.route",
        "url.scheme",
        "network.protocol.version",
        "error.type",
        # The same under the old conventions, which a process gets when an instrumentation was
        # installed before OTEL_SEMCONV_STABILITY_OPT_IN=http could be read (http.url and
        # http.target, with the query string, stay out).
        "http.method",
        "http.status_code",
        "http.scheme",
        "http.flavor",
    }
)
_ALLOWED_PREFIXES = ("background_task.", "celery.", "messaging.")


def _allowed(key: str) -> bool:
    return key in _ALLOWED_ATTRIBUTES or key.startswith(_ALLOWED_PREFIXES)


def allowed_attributes_only(span: ReadableSpan) -> ReadableSpan:
    """The span as exported: the same, or a copy without the attributes not allowed above."""
    attributes = span.attributes or {}
    if all(_allowed(key) for key in attributes):
        return span
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes={key: value for key, value in attributes.items() if _allowed(key)},
        events=span.events,
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class _CountingExporter(SpanExporter):
    """Counts every span by what became of it; on the batch processor's thread, off the request path,
    it also drops the attributes that are not allowed."""

    def __init__(self, inner: SpanExporter, metrics: Metrics, *, include_pii: bool) -> None:
        self._inner = inner
        self._exported = metrics.spans_exported
        self._include_pii = include_pii

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = SpanExportResult.FAILURE
        try:
            result = self._inner.export(spans if self._include_pii else [allowed_attributes_only(s) for s in spans])
        finally:
            self._exported.labels("success" if result is SpanExportResult.SUCCESS else "failure").inc(len(spans))
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _DropCounter(logging.Filter):
    """Turns the batch processor's line per dropped span (a flood, when the collector is slow)
    into a count."""

    _REASONS = (("Queue full, dropping", "queue_full"), ("Shutdown called, ignoring", "shutdown"))

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._dropped = metrics.spans_dropped

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        for prefix, reason in self._REASONS:
            if message.startswith(prefix):
                self._dropped.labels(reason).inc()
                return False
        return True


def span_processor(settings: Settings, metrics: Metrics) -> SpanProcessor | None:
    """The batch processor exporting over OTLP, or None without an endpoint."""
    if settings.otel_exporter_otlp_endpoint is None:
        return None
    endpoint = str(settings.otel_exporter_otlp_endpoint).rstrip("/") + "/v1/traces"
    processor_logger = logging.getLogger(_BATCH_PROCESSOR_LOGGER)
    for stale in [f for f in processor_logger.filters if isinstance(f, _DropCounter)]:
        processor_logger.removeFilter(stale)  # an earlier app's, in this process: it would count instead
    processor_logger.addFilter(_DropCounter(metrics))
    # Its "Shutdown called" line is INFO: below the default WARNING, the filter would never see it.
    processor_logger.setLevel(min(processor_logger.getEffectiveLevel(), logging.INFO))
    return BatchSpanProcessor(
        _CountingExporter(OTLPSpanExporter(endpoint=endpoint), metrics, include_pii=settings.telemetry_include_pii)
    )


def start_export(provider: TracerProvider, settings: Settings, metrics: Metrics) -> None:
    processor = span_processor(settings, metrics)
    if processor is not None:
        provider.add_span_processor(processor)


def traceparent(span: trace.Span) -> bytes | None:
    context = span.get_span_context()
    if not context.is_valid:
        return None
    flags = int(context.trace_flags)
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}".encode()


def current_ids() -> tuple[str, str] | None:
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"
