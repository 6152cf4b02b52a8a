"""One call schedules a heavy task; settings decide where it runs.

``await schedule(background_tasks, "send_email", email, …)`` hands the task to FastAPI's
``BackgroundTasks`` when no broker is configured, and otherwise enqueues it to Celery before the
response: a 200 then means the broker holds the task. Kombu blocks, so the send runs on a thread
of its own, within ENQUEUE_TIMEOUT_SECONDS; a broker that is down or slow gets the client a 503
with Retry-After, counted in ``background_tasks_enqueue_failures_total``, never a 500.
"""

import logging
import time
import uuid
from typing import Annotated, Any

from anyio import CapacityLimiter, fail_after, to_thread
from celery import Celery
from fastapi import BackgroundTasks, Depends, HTTPException, Request, status
from kombu.exceptions import OperationalError
from opentelemetry.instrumentation.celery import utils as celery_tracing

from app.observability.celery_tasks import ENQUEUED_AT_HEADER, NO_ROUTE, ROUTE_HEADER
from app.observability.context import current_request
from app.observability.metrics import Metrics
from app.queued import QueuedTasks

QUEUE_UNAVAILABLE = "The task queue is unavailable; retry later."
# Kombu's producer pool holds 10 connections by default: more threads would only wait for one.
_SENDERS = 10


class Scheduler:
    def __init__(
        self,
        tasks: QueuedTasks,
        celery: Celery | None,
        metrics: Metrics,
        logger: logging.Logger,
        *,
        timeout: float,
        retry_after_seconds: int,
    ) -> None:
        self.tasks = tasks
        self.celery = celery
        self._metrics = metrics
        self._logger = logger
        self._timeout = timeout
        self._retry_after = str(retry_after_seconds)
        self._senders = CapacityLimiter(_SENDERS)
        self._known: set[tuple[str, str]] = set()

    async def __call__(self, background_tasks: BackgroundTasks, name: str, *args: Any) -> None:
        func = self.tasks[name]
        if self.celery is None:
            background_tasks.add_task(func, *args)
            return
        record = current_request.get()
        route = record.route if record is not None else NO_ROUTE
        try:
            with fail_after(self._timeout):
                await to_thread.run_sync(self._send, name, route, args, limiter=self._senders, abandon_on_cancel=True)
        except (TimeoutError, OperationalError, OSError) as exc:
            self._metrics.enqueue_failures.labels(name, route).inc()
            self._logger.warning(
                "queue unavailable: task not enqueued",
                extra={"task": name, "route": route, "error": type(exc).__name__},
            )
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, QUEUE_UNAVAILABLE, headers={"Retry-After": self._retry_after}
            ) from None

    def _send(self, name: str, route: str, args: tuple[Any, ...]) -> None:
        assert self.celery is not None
        task = self.celery.tasks[name]
        task_id = str(uuid.uuid4())
        headers = {ROUTE_HEADER: route, ENQUEUED_AT_HEADER: time.time()}
        try:
            task.apply_async(args, task_id=task_id, headers=headers)
        except BaseException as exc:
            _end_producer_span(task, task_id, exc)
            raise
        # Counted once the broker holds it, even if the request gave up waiting: the task will run.
        self._metrics.tasks_scheduled.labels(name, route).inc()
        # From its first enqueue on, a (task, route) is exported at zero, so a failure after it is
        # an increase; one that fails from the start shows in the 503s of the request metrics.
        if (name, route) not in self._known:
            self._known.add((name, route))
            self._metrics.enqueue_failures.labels(name, route)


def _end_producer_span(task: Any, task_id: str, exc: BaseException) -> None:
    """The instrumentation ends its PRODUCER span only after a successful publish; a failed one
    would stay open and attached to the task object forever."""
    context = celery_tracing.retrieve_context(task, task_id, is_publish=True)
    if context is not None:
        _span, activation, _token = context
        activation.__exit__(type(exc), exc, exc.__traceback__)  # records it, status ERROR, ends it
        celery_tracing.detach_context(task, task_id, is_publish=True)


def _scheduler(request: Request) -> Scheduler:
    scheduler: Scheduler = request.app.state.schedule
    return scheduler


Schedule = Annotated[Scheduler, Depends(_scheduler)]
