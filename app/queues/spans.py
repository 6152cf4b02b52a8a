"""The PRODUCER and CONSUMER spans of a library without an OpenTelemetry instrumentation of its
own (Dramatiq, RQ), made with OpenTelemetry's API, named and attributed as its messaging
conventions say (semantic conventions 1.44, messaging spans), as far as they fit a task queue. The
context travels in the envelope's headers, written and read with OpenTelemetry's propagation API
(app/queues/envelope.py), so the task's span is a child of the enqueue's, in the request's
trace."""

import functools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.util.types import AttributeValue

_SCOPE = "app.queues"


@functools.cache
def tracer(provider: TracerProvider | None) -> Tracer:
    """A tracer of the process's provider; without one (OTEL_SDK_DISABLED), one that records nothing.
    Made once per provider: the SDK's get_tracer adds a warnings filter at each call, which costs a
    regular expression's compilation in a process forked for one task (RQ's work horse)."""
    return (provider or trace.NoOpTracerProvider()).get_tracer(_SCOPE)


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a library's tasks go: its name (messaging.system) and its queue."""

    system: str
    queue: str

    def attributes(self, message_id: str, operation: str) -> dict[str, AttributeValue]:
        """The conventions' attributes of a publish (``send``) or a task's run (``process``)."""
        return {
            "messaging.system": self.system,
            "messaging.operation.type": operation,
            "messaging.operation.name": operation,
            "messaging.destination.name": self.queue,
            "messaging.message.id": message_id,
        }


@contextmanager
def publish_span(tracer: Tracer, destination: Destination, task: str, message_id: str) -> Iterator[None]:
    """Around a publish; the envelope's headers, written inside, carry this span as the parent."""
    attributes = destination.attributes(message_id, "send")
    with tracer.start_as_current_span(f"send {task}", kind=SpanKind.PRODUCER, attributes=attributes):
        yield


@contextmanager
def process_span(
    tracer: Tracer, destination: Destination, task: str, message_id: str, headers: Mapping[str, Any] | None
) -> Iterator[Span]:
    """Around a task's run, the child of its enqueue's span. An exception leaving it is recorded on
    the span once, with status ERROR (``observed_task`` runs with ``contain=False`` inside it)."""
    parent = propagate.extract(dict(headers or {}))
    attributes = destination.attributes(message_id, "process")
    with tracer.start_as_current_span(
        f"process {task}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span
