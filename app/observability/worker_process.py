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
- ``in_job_process`` and ``child_reaped``, where a process is forked for each task (RQ): its
  pid's old files folded before it writes, its own after it exits.
The entry point (app/worker_main.py) owns the metrics directory and serves ``/metrics``
(worker_metrics.py), folding the files of dead processes at each scrape.
"""

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider

from app.observability import multiprocess
from app.observability.books import Books
from app.observability.errors import start_sentry, stop_sentry
from app.observability.logging import LOGGER_NAME
from app.observability.metrics import Metrics
from app.observability.tracing import make_tracer_provider, start_export
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
            start_export(provider, self._settings, telemetry.metrics)
            self._instrument(provider)
            telemetry.tracer_provider = provider

    def in_job_process(self) -> None:
        """In a process forked for one task (RQ's work horse): it inherits the telemetry, but not
        the files of a dead process that had its pid, which are folded first."""
        multiprocess.merge_dead_worker(self._directory, os.getpid())

    def child_reaped(self, pid: int) -> None:
        """A process forked for one task has exited: its files folded now, so that their number
        does not grow with the tasks run (unless the pid already names another live process)."""
        multiprocess.fold_if_dead(self._directory, pid)

    def at_child_exit(self) -> None:
        provider = self.telemetry.tracer_provider
        if provider is not None:
            provider.shutdown()  # flushes the spans still queued
        stop_sentry()
