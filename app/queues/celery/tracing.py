"""Celery's spans: opentelemetry-instrumentation-celery, on both sides."""

from collections.abc import Iterable
from typing import Any

from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.instrumentation.celery import utils as celery_tracing
from opentelemetry.sdk.trace import TracerProvider


def instrument_celery(tracer_provider: TracerProvider) -> None:
    """The PRODUCER span of each enqueue (web side) or the CONSUMER span of each run (worker).
    Under ``opentelemetry-instrument``, the global provider's instrumentation is replaced, so
    nothing is instrumented twice."""
    instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    instrumentor.instrument(tracer_provider=tracer_provider)


def _instrumented(name: str) -> Any:
    """The task object the instrumentation keeps a publish's span on: it looks a task up by name
    in Celery's current app, which is not the app that publishes (made with
    ``set_as_current=False``) but Celery's default app, where a shared task is registered too."""
    return celery_tracing.retrieve_task_from_sender({"sender": name})


def end_producer_span(name: str, task_id: str, exc: BaseException) -> None:
    """The instrumentation ends its PRODUCER span only after a successful publish; a failed one
    would stay open, and its context would be detached when it is collected, in another context
    ("Failed to detach context")."""
    task = _instrumented(name)
    context = celery_tracing.retrieve_context(task, task_id, is_publish=True)
    if context is not None:
        _span, activation, _token = context
        activation.__exit__(type(exc), exc, exc.__traceback__)  # records it, status ERROR, ends it
        celery_tracing.detach_context(task, task_id, is_publish=True)


def share_span_table(names: Iterable[str]) -> None:
    """The instrumentation keeps each task's open spans in a dict it makes on the task object at the
    first publish, unlocked: two threads publishing the first time both make one, and the spans
    stored in the dict that lost stay open for ever (a PRODUCER span lost, and "Failed to detach
    context" when they are collected). Made here, before any thread publishes."""
    for name in names:
        task = _instrumented(name)
        if task is not None and getattr(task, celery_tracing.CTX_KEY, None) is None:
            setattr(task, celery_tracing.CTX_KEY, {})
