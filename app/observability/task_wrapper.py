"""The one wrapper every background task runs in.

Starlette runs a response's background through ``BackgroundTask.__call__``, and a batch
through ``BackgroundTasks.__call__`` (FastAPI subclasses it with its own ``__call__``).
Every route's tasks pass there: a ``BackgroundTasks`` parameter, ``Response(background=…)``
and routes added later, so that is where the wrapper is installed. It replaces the
``BackgroundTask <func>`` span that opentelemetry-instrumentation-fastapi patches into the
same method, so each task gets exactly one span.

For each task it records the start delay, the run time by outcome, failures by exception
class, one span in the request's trace, one Sentry event per failure and one log line.
A task that raises is reported and contained, so the tasks after it still run.
"""

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from time import perf_counter
from typing import Any

import fastapi.background
from anyio import to_thread
from opentelemetry.trace import Status, StatusCode
from opentelemetry.util.types import Attributes
from starlette.background import BackgroundTask, BackgroundTasks
from starlette.concurrency import run_in_threadpool

from app.observability.context import RequestRecord, current_request
from app.observability.errors import report_exception

_PATCHED = (BackgroundTask, BackgroundTasks, fastapi.background.BackgroundTasks)


def task_name(func: Callable[..., Any]) -> str:
    while isinstance(func, functools.partial):
        func = func.func
    return str(getattr(func, "__qualname__", type(func).__qualname__))


def install_task_wrapper() -> None:
    """Idempotent; must run after FastAPIInstrumentor.instrument_app, whose patch it replaces."""
    for cls in _PATCHED:
        cls.__call__ = _observed_call  # type: ignore[method-assign]


async def _observed_call(self: BackgroundTask) -> None:
    tasks: Sequence[BackgroundTask] = self.tasks if isinstance(self, BackgroundTasks) else (self,)
    record = current_request.get()
    if record is None:  # run outside our middleware (another app): Starlette's own semantics
        for task in tasks:
            if task.is_async:
                await task.func(*task.args, **task.kwargs)
            else:
                await run_in_threadpool(task.func, *task.args, **task.kwargs)
        return
    await _run_batch(record, tasks)


async def _run_batch(record: RequestRecord, tasks: Sequence[BackgroundTask]) -> None:
    metrics = record.telemetry.metrics
    names = [task_name(task.func) for task in tasks]
    for name in names:
        metrics.tasks_scheduled.labels(name, record.route).inc()
    for index, (task, name) in enumerate(zip(tasks, names, strict=True)):
        try:
            if task.is_async:
                with _observed(record, name):
                    await task.func(*task.args, **task.kwargs)
            else:
                # A limiter of its own: sync tasks never take the threads of sync endpoints.
                await to_thread.run_sync(_run_sync, record, name, task, limiter=record.telemetry.task_limiter)
        except BaseException:
            # Cancelled (the worker is going away): the tasks not yet started are lost; say so.
            for lost in names[index + 1 :]:
                metrics.tasks_dropped.labels(lost, record.route, "cancelled").inc()
            raise


def _run_sync(record: RequestRecord, name: str, task: BackgroundTask) -> None:
    with _observed(record, name):
        task.func(*task.args, **task.kwargs)


@contextmanager
def _observed(record: RequestRecord, name: str) -> Iterator[None]:
    telemetry, route = record.telemetry, record.route
    metrics = telemetry.metrics
    started = perf_counter()
    delay = started - (record.response_sent or started)
    metrics.task_start_delay.labels(name, route).observe(delay)
    in_progress = metrics.tasks_in_progress.labels(name)
    in_progress.inc()
    outcome, level, exc_info = "success", logging.INFO, None
    attributes: Attributes = {"background_task.name": name, "http.route": route, "background_task.start_delay_s": delay}
    with telemetry.tracer.start_as_current_span(
        f"BackgroundTask {name}", attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            yield
        except Exception as exc:  # contained: the next task of the response must still run
            outcome, level, exc_info = "failure", logging.ERROR, exc
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            metrics.task_failures.labels(name, route, type(exc).__name__).inc()
            report_exception(exc, mechanism="background_task", tags={"background_task": name, "route": route})
        except BaseException:
            # Cancellation is not the task's failure, but the task did not finish.
            outcome, level = "cancelled", logging.WARNING
            metrics.tasks_dropped.labels(name, route, "cancelled").inc()
            raise
        finally:
            duration = perf_counter() - started
            in_progress.dec()
            metrics.task_duration.labels(name, route, outcome).observe(duration)
            span.set_attribute("background_task.outcome", outcome)
            telemetry.logger.log(
                level,
                "background task %s",
                outcome,
                exc_info=exc_info,
                extra={
                    "task": name,
                    "route": route,
                    "outcome": outcome,
                    "duration_s": round(duration, 6),
                    "start_delay_s": round(delay, 6),
                },
            )
