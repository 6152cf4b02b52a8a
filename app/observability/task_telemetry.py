"""What one background task emits, wherever it runs: the one definition.

Thin adapters drive it: ``task_wrapper.py`` for tasks that run in the web worker after the
response (Starlette's ``BackgroundTask``), and each queue library's task class or middleware
(app/queues/) for tasks that run on a queue. Each hands it the task's span, registry name, route
and start delay; it records the rest:

- ``background_task_start_delay_seconds`` before the first attempt (after the response
  in-process; the queue wait on a queue): a retry's wait is its backoff, not a queue's,
- ``background_tasks_in_progress`` while it runs,
- ``background_task_duration_seconds{outcome}`` for every attempt: ``retry`` for one that failed
  and will be retried (its retry policy says so), ``failure`` only for the last,
- ``background_task_retries_total{exception}`` and ``background_task_failures_total{exception}``,
- the span's attributes (``background_task.attempt`` among them), and on failure its exception,
- one Sentry event per task that failed for good, tagged ``background_task``, ``route`` and
  ``attempts``, with the trace id, and grouped into one Sentry issue per (task, exception class),
- one log line: DEBUG on success (it is a metric sample and a span already), WARNING for a retry,
  ERROR with the traceback on a failure.

None of it can change the task's outcome: each piece runs ``guarded``, and a failure inside one
is counted in ``background_task_telemetry_errors_total{part}`` and logged once.
"""

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from time import perf_counter
from typing import Any, Protocol

from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from app.observability.errors import report_exception
from app.observability.metrics import Metrics
from app.retry_policy import RetryPolicy

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


@dataclass(slots=True)
class Run:
    """How one attempt ended, once its block has: what the runner and the task's state need."""

    outcome: str = "success"  # success, retry, failure, requeued or cancelled
    exception: str = ""  # the class name, for a retry or a failure
    retry_in: float | None = None  # for a retry: the backoff its policy chose


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
    attempt: int = 1,
    retry: RetryPolicy | None = None,
) -> Iterator[Run]:
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
    ``attempt`` (1-based) and ``retry``: a failure its policy retries is a retry, not a failure;
    the yielded ``Run`` says so once the block is left, with the backoff to wait.
    Every piece of telemetry runs ``guarded``: only the task's own exceptions leave this block.
    """
    metrics = telemetry.metrics
    if attempt == 1:
        guarded(telemetry, "metrics", lambda: metrics.task_start_delay.labels(name, route).observe(start_delay))
    in_progress = metrics.tasks_in_progress.labels(name)
    counted_in_progress = guarded(telemetry, "metrics", in_progress.inc)
    attributes: dict[str, AttributeValue] = {
        "background_task.name": name,
        "http.route": route,
        "background_task.attempt": attempt,
        # A later attempt's wait is its backoff after the earlier ones, not a wait to start.
        **({"background_task.start_delay_s": start_delay} if attempt == 1 else {}),
        **(span_attributes or {}),
        **({"background_task.arguments": repr(arguments)[:_MAX_ARGUMENTS_REPR]} if telemetry.include_pii else {}),
    }
    guarded(telemetry, "span", lambda: span.set_attributes(attributes))
    run = Run()
    failure: Exception | None = None  # for the log line's traceback
    started = perf_counter()
    try:
        yield run
    except requeued:
        run.outcome = "requeued"
        raise
    except Exception as exc:
        run.exception = type(exc).__name__
        # OpenTelemetry's error.type: the class of error the run ended with (a retried attempt too).
        guarded(telemetry, "span", partial(span.set_attribute, "error.type", type(exc).__qualname__))
        if contain:
            guarded(telemetry, "span", partial(_record_failure, span, exc))
        if retry is not None and retry.retries(attempt, exc):
            run.outcome, run.retry_in = "retry", retry.backoff(attempt)
        else:
            run.outcome, failure = "failure", exc
            guarded(telemetry, "sentry", partial(_report, exc, name, route, attempt))
        if not contain:
            raise
    except BaseException:
        # Cancelled (a shutdown deadline): not the task's failure, and it did not finish. The
        # in-process batch settles it as dropped; on the queue the message is redelivered.
        run.outcome = "cancelled"
        raise
    finally:
        duration = perf_counter() - started + ran_before
        if counted_in_progress:
            guarded(telemetry, "metrics", in_progress.dec)

        def count() -> None:
            guarded(telemetry, "metrics", partial(_count, metrics, name, route, run, duration))

        if run.outcome in ("success", "failure"):
            settle(count)
        elif run.outcome in ("retry", "cancelled"):  # not finished: the task stays open in the ledger
            count()
        guarded(telemetry, "span", lambda: span.set_attribute("background_task.outcome", run.outcome))
        guarded(
            telemetry,
            "log",
            partial(
                _log,
                telemetry,
                name,
                route,
                run,
                failure=failure,
                attempt=attempt,
                duration=duration,
                start_delay=start_delay,
            ),
        )


_LOG_LEVELS = {
    "success": logging.DEBUG,  # a metric sample and a span already
    "requeued": logging.INFO,
    "retry": logging.WARNING,
    "cancelled": logging.WARNING,
    "failure": logging.ERROR,
}


def _log(
    telemetry: TaskTelemetry,
    name: str,
    route: str,
    run: Run,
    *,
    failure: Exception | None,
    attempt: int,
    duration: float,
    start_delay: float,
) -> None:
    level = _LOG_LEVELS[run.outcome]
    if not telemetry.logger.isEnabledFor(level):
        return
    extra = {
        "task": name,
        "route": route,
        "outcome": run.outcome,
        "attempt": attempt,
        **({"exception": run.exception} if run.exception else {}),
        "duration_s": round(duration, 6),
        **({"start_delay_s": round(start_delay, 6)} if attempt == 1 else {}),
    }
    telemetry.logger.log(level, "background task %s", run.outcome, exc_info=failure, extra=extra)


def _report(exc: Exception, name: str, route: str, attempts: int) -> None:
    report_exception(
        exc,
        mechanism="background_task",
        tags={"background_task": name, "route": route, "attempts": str(attempts)},
        # One Sentry issue per (task, exception class), wherever in the task it was raised.
        fingerprint=["background-task", name, type(exc).__name__],
    )


def _count(metrics: Metrics, name: str, route: str, run: Run, duration: float) -> None:
    if run.outcome == "failure":
        metrics.task_failures.labels(name, route, run.exception).inc()
    elif run.outcome == "retry":
        metrics.task_retries.labels(name, route, run.exception).inc()
    # Last: the duration's count is what says an attempt finished (the books, the dashboards),
    # so a scrape that sees it finished also sees its failure or retry.
    metrics.task_duration.labels(name, route, run.outcome).observe(duration)


def _record_failure(span: Span, exc: Exception) -> None:
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
