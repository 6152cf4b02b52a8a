"""The telemetry of a queue worker whose main process forks (or spawns) the processes that run
tasks: Celery's prefork children, Dramatiq's processes, RQ's pool workers and their work horses.

A queue adapter calls these named hooks from its library's own events:
- ``before_fork``, in the main process: a dead process's files under its pid folded, the
  metrics, the books, Sentry (its transport thread restarts in each child);
- ``in_child``, in each process that runs tasks (for Dramatiq and RQ, the process that ran
  ``before_fork``): the same fold in a forked child, the process gauge, the OpenTelemetry
  provider with its batch processor (a thread does not survive fork) and the library's
  instrumentation;
- ``at_child_exit``, when such a process stops or is recycled: its spans and Sentry events
  flushed;
- ``before_job_fork``, ``in_job_process``, ``at_job_exit`` and ``child_reaped``, where a
  process is forked for each task (RQ): it hands its spans and metric calls to the process that
  forked it, which exports and writes them (job_relay.py), and counts the task in progress.
The entry point (app/worker_main.py) owns the metrics directory and serves ``/metrics``
(worker_metrics.py), folding the files of dead processes at each scrape.
"""

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import Gauge

from app.observability import multiprocess
from app.observability.books import Books
from app.observability.errors import start_sentry, stop_sentry, stop_sentry_if_reported
from app.observability.job_relay import JobRelay, RelayingSpanProcessor, recorded, replay
from app.observability.logging import LOGGER_NAME
from app.observability.metrics import Metrics
from app.observability.task_telemetry import guarded
from app.observability.tracing import make_tracer_provider, span_processor
from app.settings import Settings


@dataclass(slots=True)
class QueueWorkerTelemetry:
    """What a queued task's telemetry writes to, in a worker process."""

    metrics: Metrics
    books: Books
    logger: logging.Logger
    include_pii: bool
    alive_file: Path
    tracer_provider: TracerProvider | None = None


_COUNTED_BY_PARENT = frozenset({"tasks_in_progress"})


class WorkerProcesses:
    def __init__(
        self,
        settings: Settings,
        *,
        instrument: Callable[[TracerProvider], None],
    ) -> None:
        self._settings = settings
        self._instrument = instrument
        self._directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        self._telemetry: QueueWorkerTelemetry | None = None
        self._main_pid = 0
        self._relay = JobRelay()
        self._spans: RelayingSpanProcessor | None = None
        # The series a process forked for one task is counted in by its parent, from before the
        # fork until the end of the job; None when no such count is open.
        self._job_in_progress: Gauge | None = None
        self._inherited: QueueWorkerTelemetry | None = None  # in that process: its parent's telemetry

    @property
    def telemetry(self) -> QueueWorkerTelemetry:
        if self._telemetry is None:
            raise RuntimeError("the worker's telemetry starts in before_fork")
        return self._telemetry

    def before_fork(self) -> None:
        settings, logger = self._settings, logging.getLogger(LOGGER_NAME)
        self._main_pid = os.getpid()
        multiprocess.merge_dead_worker(self._directory, self._main_pid)  # a dead process's files under our pid
        metrics = Metrics()  # children inherit it
        self._telemetry = QueueWorkerTelemetry(
            metrics,
            Books(metrics, logger, queue_worker=True),
            logger,
            settings.telemetry_include_pii,
            settings.worker_alive_file,
        )
        start_sentry(settings, metrics)

    def in_child(self) -> None:
        if os.getpid() != self._main_pid:  # forked (Celery's children); Dramatiq and RQ start both here
            multiprocess.merge_dead_worker(self._directory, os.getpid())
        telemetry = self.telemetry
        telemetry.metrics.worker_processes.set(1)
        if not self._settings.otel_sdk_disabled:
            provider = make_tracer_provider(self._settings)
            processor = span_processor(self._settings, telemetry.metrics)
            if processor is not None:
                self._spans = RelayingSpanProcessor(processor, self._relay, provider.resource)
                provider.add_span_processor(self._spans)
            self._instrument(provider)
            telemetry.tracer_provider = provider

    def before_job_fork(self, task: str) -> None:
        """Before a process is forked for ``task``: the pipe it hands its telemetry over, and the
        task counted in progress until it is reaped (the process's own count reaches this one
        only once it has exited)."""
        self._relay.open()
        series = self.telemetry.metrics.tasks_in_progress.labels(task)
        self._job_in_progress = series if guarded(self.telemetry, "metrics", series.inc) else None

    def in_job_process(self) -> None:
        """In a process forked for one task (RQ's work horse): it inherits the telemetry, and its
        spans and metric calls are held for its parent (job_relay.py)."""
        if not self._relay.in_horse():
            multiprocess.merge_dead_worker(self._directory, os.getpid())  # before it writes files
            return
        self._inherited = telemetry = self.telemetry
        metrics = recorded(telemetry.metrics, self._relay.calls)
        books = Books(metrics, telemetry.logger, queue_worker=True)
        self._telemetry = dataclasses.replace(telemetry, metrics=metrics, books=books)

    def at_job_exit(self) -> None:
        """In that process, as it exits: its spans and metric calls to its parent (or exported and
        written here if they are too many for the pipe, in files of its own: those of a dead
        process that had its pid folded first), its Sentry event sent if it has one."""
        if self._inherited is not None and not self._relay.hand_over():
            multiprocess.merge_dead_worker(self._directory, os.getpid())
            self._telemetry = self._inherited
            replay(self._inherited.metrics, self._relay.calls)
            if self._spans is not None:
                for span in self._relay.spans:
                    self._spans.inner.on_end(span)
                self._spans.inner.force_flush()
        stop_sentry_if_reported()

    def child_reaped(self, pid: int) -> None:
        """A job that forks a process has ended: what the process handed over exported and
        written, the task no longer in progress, the process's files (if it wrote any) folded now,
        so that their number does not grow with the tasks run (unless the pid already names another
        live process). ``pid`` 0: no process was forked (the job failed before, or the fork did);
        only what was opened for it is closed."""
        telemetry = self.telemetry
        spans, calls = self._relay.collect()
        # The process counted itself in progress; its parent did, for all its life.
        guarded(telemetry, "metrics", lambda: replay(telemetry.metrics, calls, skip=_COUNTED_BY_PARENT))
        if self._job_in_progress is not None:
            guarded(telemetry, "metrics", self._job_in_progress.dec)
            self._job_in_progress = None
        if self._spans is not None:
            guarded(telemetry, "span", partial(self._spans.relayed, spans))
        if pid:
            multiprocess.fold_if_dead(self._directory, pid)

    def at_child_exit(self) -> None:
        provider = self.telemetry.tracer_provider
        if provider is not None:
            provider.shutdown()  # flushes the spans still queued
        stop_sentry()
