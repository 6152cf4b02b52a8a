"""Spans that never reach the collector are counted, whatever the reason."""

from app.observability.metrics import Metrics
from app.observability.tracing import make_tracer_provider, start_export
from app.settings import Settings
from harness import free_port


def test_a_span_ended_after_shutdown_is_counted_as_dropped() -> None:
    settings = Settings(otel_exporter_otlp_endpoint=f"http://127.0.0.1:{free_port()}")
    metrics, provider = Metrics(), make_tracer_provider(settings)
    start_export(provider, settings, metrics)
    span = provider.get_tracer("test").start_span("late")
    provider.shutdown()
    span.end()  # a task that outlived the worker's flush
    dropped = metrics.registry.get_sample_value("otel_spans_dropped_total", {"reason": "shutdown"})
    assert dropped == 1
