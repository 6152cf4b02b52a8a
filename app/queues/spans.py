"""What a library without an OpenTelemetry instrumentation of its own (Dramatiq, RQ) runs around
a publish and a task: PRODUCER and CONSUMER spans made with OpenTelemetry's API, named and
attributed as its messaging conventions say, and ``observed_message``, a task's run observed.
The context travels in the envelope's headers, written and read with OpenTelemetry's propagation
API (app/queues/backend.py), so the task's span is a child of the enqueue's, in the request's
trace."""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, SpanKind, Tracer

from app.observability.task_telemetry import Run, observed_task
from app.observability.worker_process import QueueWorkerTelemetry
from app.queues.backend import Envelope
from app.queues.task_states import TaskStates, claim, record_end
from app.retry_policy import RetryPolicy

_SCOPE = "app.queues"


def tracer(provider: TracerProvider | None) -> Tracer:
    """A tracer of the process's provider; without one (OTEL_SDK_DISABLED), one that records nothing."""
    return (provider or trace.NoOpTracerProvider()).get_tracer(_SCOPE)


@contextmanager
def publish_span(tracer: Tracer, system: str, task: str, message_id: str) -> Iterator[None]:
    """Around a publish; the envelope's headers, written inside, carry this span as the parent."""
    attributes = {"messaging.system": system, "messaging.operation.type": "send", "messaging.message.id": message_id}
    with tracer.start_as_current_span(f"send {task}", kind=SpanKind.PRODUCER, attributes=attributes):
        yield


@contextmanager
def process_span(
    tracer: Tracer, system: str, task: str, message_id: str, headers: Mapping[str, Any] | None
) -> Iterator[Span]:
    """Around a task's run, the child of its enqueue's span. An exception leaving it is recorded on
    the span once, with status ERROR (``observed_task`` runs with ``contain=False`` inside it)."""
    parent = propagate.extract(dict(headers or {}))
    attributes = {
        "messaging.system": system,
        "messaging.operation.type": "process",
        "messaging.message.id": message_id,
    }
    with tracer.start_as_current_span(
        f"process {task}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span


@contextmanager
def observed_message(
    telemetry: QueueWorkerTelemetry,
    system: str,
    name: str,
    message_id: str,
    headers: Mapping[str, Any] | None,
    *,
    arguments: tuple[Any, ...],
    redelivered: bool | None = False,
    requeued: tuple[type[BaseException], ...] = (),
    started_at: float | None = None,
    ran_before: float = 0.0,
    states: TaskStates | None = None,
    attempt: int = 1,
    retry: RetryPolicy | None = None,
) -> Iterator[Run]:
    """One queued task's attempt, observed: its envelope read, its books kept, its state claimed
    (TaskCancelled, before any span, if it was cancelled) and recorded, inside its CONSUMER span
    and ``observed_task``. ``started_at`` and ``ran_before``: for a run observed from the process
    that saw it die (RQ's worker), when it started and how long it ran. ``redelivered`` None: the
    broker does not say, and a run of it that the state store saw start before says it."""
    envelope = Envelope.read(headers, message_id)
    telemetry.books.seen(name, envelope.route)
    seen_before = False
    if started_at is None:
        seen_before = claim(telemetry, states, message_id, task=name, route=envelope.route, attempt=attempt)
    if redelivered or (redelivered is None and seen_before):
        telemetry.books.redelivered(name, envelope.route)
    start_delay = envelope.waited() if started_at is None else max(0.0, started_at - envelope.enqueued_at)
    run = Run()
    try:
        with (
            process_span(tracer(telemetry.tracer_provider), system, name, message_id, headers) as span,
            observed_task(
                telemetry,
                span,
                name,
                envelope.route,
                start_delay=start_delay,
                arguments=arguments,
                contain=False,
                requeued=requeued,
                ran_before=ran_before,
                attempt=attempt,
                retry=retry,
            ) as run,
        ):
            yield run
    finally:
        record_end(telemetry, states, message_id, run)
