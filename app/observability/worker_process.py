"""The telemetry of a queue worker whose main process forks (or spawns) the processes that run
tasks: Celery's prefork children today, Dramatiq's processes and RQ's work horses next.

A queue adapter calls these named hooks from its library's own events:
- ``before_fork``, in the main process: the multiprocess metric directory wiped (unless the entry
  point owns it, and keeps the counts of a worker it restarts), the metrics, the books, Sentry
  (its transport thread restarts in each child), and ``/metrics`` on WORKER_METRICS_PORT;
- ``in_child``, in each process that runs tasks: a dead process's files under its pid folded,
  the process gauge, the OpenTelemetry provider with its batch processor (a thread does not
  survive fork) and the library's instrumentation;
- ``at_child_exit``, when such a process stops or is recycled: its spans and Sentry events
  flushed.
At each scrape, the main process folds the files of dead processes (multiprocess.py).
"""

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from app.observability import multiprocess
from app.observability.books import Books
from app.observability.errors import start_sentry, stop_sentry
from app.observability.logging import LOGGER_NAME
from app.observability.metrics import Metrics
from app.observability.tracing import make_tracer_provider, start_export
from app.settings import Settings

SUPERVISED_ENV = "WORKER_SUPERVISED"  # set by app/worker_main.py, which owns the metrics directory


@dataclass(slots=True)
class QueueWorkerTelemetry:
    """What a queued task's telemetry writes to, in a worker process."""

    metrics: Metrics
    books: Books
    logger: logging.Logger
    include_pii: bool
    alive_file: Path
    tracer_provider: TracerProvider | None = None


class _MergedFiles(Collector):
    def __init__(self, directory: str) -> None:
        self._directory = directory

    def collect(self) -> Iterable[Metric]:
        return multiprocess.collect_live(self._directory)


class WorkerProcesses:
    def __init__(
        self,
        settings: Settings,
        *,
        instrument: Callable[[TracerProvider], None],
        collectors: Callable[[logging.Logger], Sequence[Collector]] = lambda _logger: (),
    ) -> None:
        self._settings = settings
        self._instrument = instrument
        self._collectors = collectors
        self._directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        self._telemetry: QueueWorkerTelemetry | None = None

    @property
    def telemetry(self) -> QueueWorkerTelemetry:
        if self._telemetry is None:
            raise RuntimeError("the worker's telemetry starts in before_fork")
        return self._telemetry

    def before_fork(self) -> None:
        settings, logger = self._settings, logging.getLogger(LOGGER_NAME)
        if not os.environ.get(SUPERVISED_ENV):
            multiprocess.wipe(self._directory)
        # Made after the wipe: a metric made before it writes to a file the wipe unlinked, and
        # what the main process counts (drops) would never reach a scrape. Children inherit it.
        metrics = Metrics()
        self._telemetry = QueueWorkerTelemetry(
            metrics,
            Books(metrics, logger, queue_worker=True),
            logger,
            settings.telemetry_include_pii,
            settings.worker_alive_file,
        )
        start_sentry(settings, metrics)
        registry = CollectorRegistry(auto_describe=False)
        for collector in (_MergedFiles(self._directory), *self._collectors(logger)):
            registry.register(collector)
        start_http_server(settings.worker_metrics_port, addr=settings.host, registry=registry)

    def in_child(self) -> None:
        multiprocess.merge_dead_worker(self._directory, os.getpid())  # a dead process's files under our pid
        telemetry = self.telemetry
        telemetry.metrics.worker_processes.set(1)
        if not self._settings.otel_sdk_disabled:
            provider = make_tracer_provider(self._settings)
            start_export(provider, self._settings, telemetry.metrics)
            self._instrument(provider)
            telemetry.tracer_provider = provider

    def at_child_exit(self) -> None:
        provider = self.telemetry.tracer_provider
        if provider is not None:
            provider.shutdown()  # flushes the spans still queued
        stop_sentry()
