"""The worker-side contract, one for every library: a queued task's attempt goes through
``observed_message``, whichever library delivered it, and ends in one of the outcomes below when
the library stops it."""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

from opentelemetry.trace import Span

from app.observability.task_telemetry import Run, observed_task
from app.observability.worker_process import QueueWorkerTelemetry
from app.queues.envelope import Envelope
from app.queues.spans import Destination, process_span, tracer
from app.queues.task_states import TaskCancelled, TaskStates, claim, record_end
from app.retry_policy import RetryPolicy


class TimeLimitExceeded(Exception):
    """A queued task ran past TASK_TIME_LIMIT_SECONDS: one exception class (and so one label and
    one Sentry issue) whatever library stopped it."""


class WorkerProcessLost(Exception):
    """The process running a queued task died (SIGKILL, out of memory) where the library does not
    run the task again (RQ moves it to its failed registry): a failure, reported as one."""


@contextmanager
def observed_message(
    telemetry: QueueWorkerTelemetry,
    destination: Destination,
    name: str,
    message_id: str,
    headers: Mapping[str, Any] | None,
    *,
    arguments: tuple[Any, ...],
    span: Span | None = None,
    redelivered: bool | None = False,
    requeued: tuple[type[BaseException], ...] = (),
    started_at: float | None = None,
    ran_before: float = 0.0,
    states: TaskStates | None = None,
    claimed: bool | None = None,
    attempt: int = 1,
    retry: RetryPolicy | None = None,
) -> Iterator[Run]:
    """One queued task's attempt, observed: its envelope read, its books kept, its state claimed
    (TaskCancelled if it was cancelled) and recorded, inside its CONSUMER span and
    ``observed_task``. ``span``: the library's own CONSUMER span, where its instrumentation made
    one (Celery's), given the same attributes; otherwise one is made here. ``started_at`` and
    ``ran_before``: for a run observed from the process that saw it die (RQ's worker), when it
    started and how long it ran. ``redelivered`` None: the broker does not say, and a run of it
    that the state store saw start before says it. ``claimed``: the state claimed already where the
    library received the message (Celery's main process), True if a run had started before; None:
    claimed here."""
    envelope = Envelope.read(headers, message_id)
    telemetry.books.seen(name, envelope.route)
    seen_before = bool(claimed)
    if started_at is None and claimed is None:
        try:
            seen_before = claim(telemetry, states, message_id, task=name, route=envelope.route, attempt=attempt)
        except TaskCancelled:
            if span is not None:  # the library's span has begun, and says so
                span.set_attribute("background_task.outcome", "cancelled")
            raise
    if redelivered or (redelivered is None and seen_before):
        telemetry.books.redelivered(name, envelope.route)
    start_delay = envelope.waited() if started_at is None else max(0.0, started_at - envelope.enqueued_at)
    consumer = (
        process_span(tracer(telemetry.tracer_provider), destination, name, message_id, headers)
        if span is None
        else nullcontext(span)
    )
    run = Run()
    try:
        with (
            consumer as current,
            observed_task(
                telemetry,
                current,
                name,
                envelope.route,
                start_delay=start_delay,
                arguments=arguments,
                contain=False,
                requeued=requeued,
                # A span made here has them from its start; the library's gets them now.
                span_attributes=None if span is None else destination.attributes(message_id, "process"),
                ran_before=ran_before,
                attempt=attempt,
                retry=retry,
            ) as run,
        ):
            yield run
    finally:
        record_end(telemetry, states, message_id, run)
