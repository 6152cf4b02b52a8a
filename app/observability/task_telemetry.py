"""What one background task emits, wherever it runs: the one definition.

Thin adapters drive it: ``task_wrapper.py`` for tasks that run in the web worker after the
response (Starlette's ``BackgroundTask``), and each queue library's task class or middleware
(app/queues/) for tasks that run on a queue. Each hands it the task's span, registry name, route
and start delay; it records the rest:

- ``background_task_start_delay_seconds`` (after the response in-process; the queue wait on a queue),
- ``background_tasks_in_progress`` while it runs,
- ``background_task_duration_seconds{outcome}`` and ``background_task_failures_total{exception}``,
- the span's attributes, and on failure its ERROR status and exception,
- one Sentry event per failure, tagged ``background_task`` and ``route``, with the trace id, and
  grouped into one Sentry issue per (task, exception class),
- one log line: DEBUG on success (it is a metric sample and a span already), ERROR with the
  traceback on failure.

None of it can change the task's outcome: each piece runs ``guarded``, and a failure inside one
is counted in ``background_task_telemetry_errors_total{part}`` and logged once.
"""

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from functools import partial
from time import perf_counter
from typing import Any, Protocol

from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from app.observability.errors import report_exception
from app.observability.metrics import Metrics

_MAX_ARGUMENTS_REPR = 1024
_REPORTED: set[str] = set()  # parts whose first failure this process has logged


class TaskTelemetry(Protocol):
    """What ``observed_task`` writes to: a web worker's ``WebTelemetry`` (context.py) or a queue
    worker's ``QueueWorkerTelemetry`` (worker_process.py)."""

    @property
    def metrics(self) -> Metrics: ...
    @property
    def logger(self) -> logging.Logger: ...
    @property
    def include_pii(self) -> bool: ...


Settle = Callable[[Callable[[], None]], object]


def _count_now(count: Callable[[], None]) -> None:
    count()


def guarded(telemetry: TaskTelemetry, part: str, emit: Callable[[], object]) -> bool:
    """Runs one piece of a task's telemetry. Its failure is counted in
    ``background_task_telemetry_errors_total{part}`` and logged once per part and process, never
    raised: telemetry must not change the task's outcome, the response or the tasks after it.
    True if it ran."""
    try:
        emit()
    except Exception:
        with suppress(Exception):
            telemetry.metrics.telemetry_errors.labels(part).inc()
        if part not in _REPORTED:
            _REPORTED.add(part)
            with suppress(Exception):
                telemetry.logger.exception("background task telemetry failed", extra={"part": part})
        return False
    return True


@contextmanager
def observed_task(
    telemetry: TaskTelemetry,
    span: Span,
    name: str,
    route: str,
    *,
    start_delay: float,
    arguments: tuple[Any, ...],
    contain: bool,
    settle: Settle = _count_now,
    requeued: tuple[type[BaseException], ...] = (),
    span_attributes: Mapping[str, AttributeValue] | None = None,
    ran_before: float = 0.0,
) -> Iterator[None]:
    """Observe the task run inside the block.

    ``contain``: a failure is recorded on the span and swallowed (in-process: the next task of the
    response must still run). Otherwise it propagates to the runner, whose tracing records it on the
    span (opentelemetry-instrumentation-celery does), so the span gets the exception once.
    ``settle`` counts the outcome under the caller's ledger (the web worker's backlog).
    ``requeued``: exceptions that send the task back to the queue (Celery's Retry): it has not
    finished, so nothing is counted but the run's end.
    ``span_attributes``: more of them, where the runner's own tracing leaves them out.
    ``ran_before``: seconds the task ran in a process that died, where its end is observed from
    the process that saw it die (RQ's worker, when its work horse is killed).
    Every piece of telemetry runs ``guarded``: only the task's own exceptions leave this block.
    """
    metrics = telemetry.metrics
    guarded(telemetry, "metrics", lambda: metrics.task_start_delay.labels(name, route).observe(start_delay))
    in_progress = metrics.tasks_in_progress.labels(name)
    counted_in_progress = guarded(telemetry, "metrics", in_progress.inc)
    attributes: dict[str, AttributeValue] = {
        "background_task.name": name,
        "http.route": route,
        "background_task.start_delay_s": start_delay,
        **(span_attributes or {}),
    }
    if telemetry.include_pii:
        attributes["background_task.arguments"] = repr(arguments)[:_MAX_ARGUMENTS_REPR]
    guarded(telemetry, "span", lambda: span.set_attributes(attributes))
    outcome, level, exc_info, exception = "success", logging.DEBUG, None, ""
    started = perf_counter()
    try:
        yield
    except requeued:
        outcome, level = "requeued", logging.INFO
        raise
    except Exception as exc:
        outcome, level, exc_info, exception = "failure", logging.ERROR, exc, type(exc).__name__
        if contain:
            guarded(telemetry, "span", partial(_record_failure, span, exc))
        guarded(
            telemetry,
            "sentry",
            partial(
                report_exception,
                exc,
                mechanism="background_task",
                tags={"background_task": name, "route": route},
                # One Sentry issue per (task, exception class), wherever in the task it was raised.
                fingerprint=["background-task", name, exception],
            ),
        )
        if not contain:
            raise
    except BaseException:
        # Cancelled (a shutdown deadline): not the task's failure, and it did not finish. The
        # in-process batch settles it as dropped; on the queue the message is redelivered.
        outcome, level = "cancelled", logging.WARNING
        raise
    finally:
        duration = perf_counter() - started + ran_before
        if counted_in_progress:
            guarded(telemetry, "metrics", in_progress.dec)

        def count() -> None:
            metrics.task_duration.labels(name, route, outcome).observe(duration)
            if exception:
                metrics.task_failures.labels(name, route, exception).inc()

        def count_guarded() -> None:
            guarded(telemetry, "metrics", count)

        if outcome in ("success", "failure"):
            settle(count_guarded)
        elif outcome == "cancelled":
            count_guarded()
        guarded(telemetry, "span", lambda: span.set_attribute("background_task.outcome", outcome))
        if telemetry.logger.isEnabledFor(level):
            guarded(
                telemetry,
                "log",
                lambda: telemetry.logger.log(
                    level,
                    "background task %s",
                    outcome,
                    exc_info=exc_info,
                    extra={
                        "task": name,
                        "route": route,
                        "outcome": outcome,
                        "duration_s": round(duration, 6),
                        "start_delay_s": round(start_delay, 6),
                    },
                ),
            )


def _record_failure(span: Span, exc: Exception) -> None:
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
