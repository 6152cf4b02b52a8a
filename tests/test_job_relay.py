"""What a process forked for one task hands its parent (app/observability/job_relay.py): the same
spans, and the same metric calls, over a real pipe from a real fork."""

import os
import select
import time

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from app.observability.job_relay import JobRelay, RelayingSpanProcessor, recorded, replay
from app.observability.metrics import Metrics

LABELS = {"task": "send_email", "route": "/send-mail/"}


def _horse(relay: JobRelay, tracer: trace.Tracer, metrics: Metrics, link: trace.SpanContext) -> bool:
    relay.in_horse()
    held = recorded(metrics, relay.calls)
    with tracer.start_as_current_span(
        "process send_email", kind=SpanKind.CONSUMER, links=[Link(link, {"n": 1})]
    ) as span:
        span.set_attribute("background_task.name", "send_email")
        span.add_event("retry", {"background_task.attempt": 2})
        span.set_status(Status(StatusCode.ERROR, "EmailDeliveryError"))
        held.task_duration.labels(*LABELS.values(), "failure").observe(0.25)
        held.task_failures.labels(*LABELS.values(), "EmailDeliveryError").inc()
        held.tasks_dropped.labels(*LABELS.values(), "revoked")  # a series at zero
    return relay.hand_over()


def test_a_forked_process_hands_its_spans_and_metric_calls_to_its_parent() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "relay-test"}))
    relay = JobRelay()
    processor = RelayingSpanProcessor(SimpleSpanProcessor(exporter), relay, provider.resource)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    metrics = Metrics()
    with tracer.start_as_current_span("send send_email", kind=SpanKind.PRODUCER) as producer:
        relay.open()
        pid = os.fork()
        if pid == 0:
            try:
                os._exit(0 if _horse(relay, tracer, metrics, producer.get_span_context()) else 1)
            finally:
                os._exit(2)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        assert exporter.get_finished_spans() == ()  # the horse exported nothing itself
        spans, calls = relay.collect()
        processor.relayed(spans)
        replay(metrics, calls)

    consumer, sent = exporter.get_finished_spans()
    assert sent.name == "send send_email"
    assert consumer.name == "process send_email"
    assert consumer.kind is SpanKind.CONSUMER
    assert consumer.context.trace_id == sent.context.trace_id
    assert consumer.parent is not None
    assert consumer.parent.span_id == sent.context.span_id
    assert dict(consumer.attributes or {}) == {"background_task.name": "send_email"}
    assert [(e.name, dict(e.attributes or {})) for e in consumer.events] == [("retry", {"background_task.attempt": 2})]
    assert [(link.context.span_id, dict(link.attributes or {})) for link in consumer.links] == [
        (sent.context.span_id, {"n": 1})
    ]
    assert (consumer.status.status_code, consumer.status.description) == (StatusCode.ERROR, "EmailDeliveryError")
    assert consumer.resource.attributes["service.name"] == "relay-test"
    assert consumer.start_time is not None
    assert consumer.end_time is not None
    assert sent.start_time is not None
    assert sent.start_time < consumer.start_time < consumer.end_time

    value = metrics.registry.get_sample_value
    assert value("background_task_duration_seconds_count", {**LABELS, "outcome": "failure"}) == 1
    assert value("background_task_duration_seconds_sum", {**LABELS, "outcome": "failure"}) == 0.25
    assert value("background_task_failures_total", {**LABELS, "exception": "EmailDeliveryError"}) == 1
    assert value("background_tasks_dropped_total", {**LABELS, "reason": "revoked"}) == 0


def test_a_horse_whose_parent_died_keeps_what_it_holds() -> None:
    """Its parent gone (a pool worker killed), a horse exports and writes what it holds itself:
    nobody would read the pipe."""
    verdict, verdict_out = os.pipe()
    middle = os.fork()
    if middle == 0:  # the pool worker: it forks a horse, then dies
        try:
            relay = JobRelay()
            relay.open()
            if os.fork() == 0:
                parent = os.getppid()
                relay.in_horse()
                deadline = time.monotonic() + 30
                while os.getppid() == parent and time.monotonic() < deadline:
                    time.sleep(0.01)
                os.write(verdict_out, b"handed" if relay.hand_over() else b"kept")
        finally:
            os._exit(0)
    os.close(verdict_out)
    assert os.waitstatus_to_exitcode(os.waitpid(middle, 0)[1]) == 0
    ready, _, _ = select.select([verdict], [], [], 30)
    assert ready
    assert os.read(verdict, 16) == b"kept"
