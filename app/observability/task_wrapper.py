"""The one wrapper every background task runs in.

Starlette runs a response's background through ``BackgroundTask.__call__``, and a batch
through ``BackgroundTasks.__call__`` (FastAPI subclasses it with its own ``__call__``).
Every route's tasks pass there: a ``BackgroundTasks`` parameter, ``Response(background=…)``
and routes added later, so that is where the wrapper is installed.

For each task it records the start delay, the run time by outcome, failures by exception
class, one span in the request's trace, one Sentry event per failure and one log line.
A task that raises is reported and contained, so the tasks after it still run; one whose retry
policy (app/retry_policy.py) says so is tried again after its backoff. Every task
is entered in the worker's backlog when handed over and settled there exactly once, as
finished or as dropped, so the counts add up even when a shutdown cuts tasks short.
"""

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from time import perf_counter
from typing import Any

import anyio
import fastapi.background
from anyio import to_thread
from starlette.background import BackgroundTask, BackgroundTasks
from starlette.concurrency import run_in_threadpool

from app.observability.backlog import Entry
from app.observability.context import RequestRecord, current_request
from app.observability.task_telemetry import Run, observed_task
from app.retry_policy import RetryPolicy, retry_policy
from app.task_registry import RegisteredTask

_PATCHED = (BackgroundTask, BackgroundTasks, fastapi.background.BackgroundTasks)


def task_name(func: Callable[..., Any]) -> str:
    if isinstance(func, RegisteredTask):  # a heavy task run in process: its registry name
        return func.name
    while isinstance(func, functools.partial):
        func = func.func
    return str(getattr(func, "__qualname__", type(func).__qualname__))


def install_task_wrapper() -> None:
    """Idempotent, and the only wrapper in any order. opentelemetry-instrumentation-fastapi wraps
    ``BackgroundTask.__call__`` in a span of its own unless ``_otel_original_call`` is set: set here,
    it stops a later instrumentation from wrapping, and ``uninstrument_app`` restores this wrapper.
    Installed after the instrumentation, it replaces the instrumentation's wrapper."""
    for cls in _PATCHED:
        cls.__call__ = _observed_call  # type: ignore[method-assign]
    BackgroundTask._otel_original_call = _observed_call  # type: ignore[attr-defined]


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
    await run_batch(record, tasks)


async def run_batch(record: RequestRecord, tasks: Sequence[BackgroundTask]) -> None:
    """A response's tasks, one after the other, each observed and settled once (the bench calls it
    to measure the wrapper alone)."""
    backlog = record.telemetry.backlog
    entries = backlog.open([task_name(task.func) for task in tasks], record.route)
    for index, (task, entry) in enumerate(zip(tasks, entries, strict=True)):
        try:
            await _attempts(record, entry, task)
        except BaseException:
            backlog.drop(entries[index:])  # this task (unless it settled itself) and those not yet started
            raise


async def _attempts(record: RequestRecord, entry: Entry, task: BackgroundTask) -> None:
    """The task's attempts: another after its backoff while its retry policy says so. The wait is
    a sleep on the event loop, holding no thread; the shutdown deadline cancels it, and the task,
    still open in the backlog, is dropped."""
    policy = task.func.retry if isinstance(task.func, RegisteredTask) else retry_policy(task.func)
    attempt = 1
    while True:
        if task.is_async:
            with _observed(record, entry, task, attempt, policy) as run:
                await task.func(*task.args, **task.kwargs)
        else:
            # A limiter of its own: sync tasks never take the threads of sync endpoints.
            # Abandoned on cancel (the shutdown deadline): the worker exits instead of
            # waiting for the thread, and the task is settled as dropped right here.
            run = await to_thread.run_sync(
                _run_sync,
                record,
                entry,
                task,
                attempt,
                policy,
                limiter=record.telemetry.task_limiter,
                abandon_on_cancel=True,
            )
        if run.retry_in is None:
            return
        await anyio.sleep(run.retry_in)
        attempt += 1


def _run_sync(
    record: RequestRecord, entry: Entry, task: BackgroundTask, attempt: int, policy: RetryPolicy | None
) -> Run:
    with _observed(record, entry, task, attempt, policy) as run:
        task.func(*task.args, **task.kwargs)
    return run


@contextmanager
def _observed(
    record: RequestRecord, entry: Entry, task: BackgroundTask, attempt: int, policy: RetryPolicy | None
) -> Iterator[Run]:
    telemetry, name = record.telemetry, entry[1]
    started = perf_counter()
    with (
        telemetry.tracer.start_as_current_span(
            f"BackgroundTask {name}", record_exception=False, set_status_on_exception=False
        ) as span,
        observed_task(
            telemetry,
            span,
            name,
            record.route,
            start_delay=started - (record.response_sent or started),
            arguments=(task.args, task.kwargs),
            contain=True,
            # A task that ends after the shutdown deadline dropped it must not count as finished too.
            settle=functools.partial(telemetry.backlog.settle, entry),
            attempt=attempt,
            retry=policy,
        ) as run,
    ):
        yield run
