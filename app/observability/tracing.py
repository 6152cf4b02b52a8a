"""OpenTelemetry tracing: the provider, its OTLP exporter and the traceparent header.

The provider is made by create_app but exports nothing until start_export() runs in the
worker's lifespan, after gunicorn forked: a BatchSpanProcessor's thread does not survive fork.
"""

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from app.settings import Settings


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


def start_export(provider: TracerProvider, settings: Settings) -> None:
    if settings.otel_exporter_otlp_endpoint is None:
        return
    endpoint = str(settings.otel_exporter_otlp_endpoint).rstrip("/") + "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))


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
