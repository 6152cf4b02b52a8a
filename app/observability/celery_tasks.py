"""The Celery adapter: queued tasks run inside ``observed_task``, as in-process ones do.

The task span is opentelemetry-instrumentation-celery's CONSUMER ``run/<task>`` span, a child of
its PRODUCER ``apply_async/<task>`` span in the web request's trace; ``observed_task`` enriches it
rather than stacking a second one. The web side stamps the route and the enqueue time in the
message headers, so the queue wait is the start delay and the labels match the in-process ones.

Per prefork process (the hooks are Celery's signals):
- the main process, before it forks: Sentry (its transport thread restarts in each child), the
  multiprocess metric directory wiped, and ``/metrics`` on WORKER_METRICS_PORT;
- each child in ``worker_process_init``: the OpenTelemetry provider and its batch processor (a
  thread does not survive fork), and in ``worker_process_shutdown`` (recycling, warm shutdown)
  a flush of its spans and Sentry events;
- metric files of dead children are folded into the merged ones (multiprocess.py), by the main
  process at each scrape and by a child that inherits a dead one's pid, before it writes.

Two consumer bootsteps run at each connection to the broker: ``RestoreOrphans`` gives back what a
broker crash left unacknowledged, and ``ConsumerAlive`` keeps the liveness file fresh.
"""

import contextlib
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery, Task, bootsteps, signals
from celery.apps import worker as celery_worker
from celery.exceptions import Retry
from kombu.exceptions import OperationalError
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.observability import multiprocess
from app.observability.errors import start_sentry, stop_sentry
from app.observability.instrumentation import instrument_celery
from app.observability.logging import LOGGER_NAME, JsonFormatter, configure_logging
from app.observability.metrics import Metrics
from app.observability.task_telemetry import observed_task
from app.observability.tracing import make_tracer_provider, start_export
from app.settings import Settings

# Message headers stamped by the web side (app/scheduler.py) and read here.
ROUTE_HEADER = "origin_route"
ENQUEUED_AT_HEADER = "enqueued_at"
NO_ROUTE = "none"  # enqueued outside a request
DROP_REASONS = ("revoked", "unregistered")
# Read from the broker at each scrape, beside the catalogue of metrics.py.
QUEUED, UNACKED = "background_tasks_queued", "background_tasks_unacked"
_SCRAPE_TIMEOUTS = {"socket_timeout": 2, "socket_connect_timeout": 2}
RESTARTED_ENV = "WORKER_RESTARTED"  # set by the entry point for a Celery worker it starts again


@dataclass(slots=True)
class WorkerTelemetry:
    metrics: Metrics
    logger: logging.Logger
    include_pii: bool
    alive_file: Path
    tracer_provider: TracerProvider | None = None
    known: set[tuple[str, str]] = field(default_factory=set)  # (task, route) seen by this process


def _telemetry(app: Celery) -> WorkerTelemetry:
    telemetry: WorkerTelemetry = app.telemetry
    return telemetry


class ObservedTask(Task):
    """Every queued task's class: its run is observed like an in-process task's."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        telemetry = _telemetry(self.app)
        request = self.request
        headers = request.headers or {}
        route = str(headers.get(ROUTE_HEADER) or NO_ROUTE)
        enqueued_at = headers.get(ENQUEUED_AT_HEADER)
        # Wall clocks of two machines: a skewed clock shows as a wait of zero, never negative.
        delay = max(0.0, time.time() - float(enqueued_at)) if enqueued_at is not None else 0.0
        _first_sight(telemetry, self.name, route)
        if (request.delivery_info or {}).get("redelivered"):
            telemetry.metrics.task_redeliveries.labels(self.name, route).inc()
        with observed_task(
            telemetry,
            trace.get_current_span(),
            self.name,
            route,
            start_delay=delay,
            arguments=(args, kwargs),
            contain=False,
            requeued=(Retry,),
        ):
            return self.run(*args, **kwargs)


def _first_sight(telemetry: WorkerTelemetry, task: str, route: str) -> None:
    # Exported at zero from the start, so the first redelivery or drop is an increase an alert sees.
    if (task, route) not in telemetry.known:
        telemetry.known.add((task, route))
        telemetry.metrics.task_redeliveries.labels(task, route)
        for reason in DROP_REASONS:
            telemetry.metrics.tasks_dropped.labels(task, route, reason)


class QueueCollector(Collector):
    """Reads the broker at scrape time: messages waiting, and messages delivered to a worker but
    not yet acknowledged (reserved, running, or held by a dead worker until redelivered)."""

    def __init__(self, app: Celery, logger: logging.Logger) -> None:
        self._app = app
        self._logger = logger
        self._errors = (OperationalError, OSError, *app.connection_for_read().connection_errors)

    def collect(self) -> Iterable[Metric]:
        queue = self._app.conf.task_default_queue
        try:
            # A hung broker must not hang the scrape: Prometheus would see the worker as down.
            with self._app.connection_for_read(transport_options=_SCRAPE_TIMEOUTS) as connection:
                channel = connection.default_channel
                # Declared as the worker declares it (a passive declare fails before the first task).
                waiting = channel.queue_declare(queue=queue, durable=True, auto_delete=False).message_count
                unacked = channel.client.hlen(channel.unacked_key)
        except self._errors:
            self._logger.warning("the broker did not answer the queue-depth scrape", exc_info=True)
            return
        queued = GaugeMetricFamily(QUEUED, "Tasks waiting in the broker.", labels=["queue"])
        queued.add_metric([queue], waiting)
        yield queued
        yield GaugeMetricFamily(
            UNACKED,
            "Tasks delivered to a worker and not yet acknowledged: reserved, running, or awaiting redelivery.",
            value=unacked,
        )


class ConsumerAlive(bootsteps.StartStopStep):
    """Touches WORKER_ALIVE_FILE every few seconds while the consumer is connected and its event loop
    turns. A file gone stale means the consumer is gone while the process may still live (a broker
    away for long, a loop stuck): what the liveness probe checks, as `/metrics` cannot."""

    requires = ("celery.worker.consumer.tasks:Tasks",)
    INTERVAL = 5.0

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._timer: Any = None

    def start(self, parent: Any) -> None:
        path = _telemetry(parent.app).alive_file
        path.touch()
        self._timer = parent.timer.call_repeatedly(self.INTERVAL, path.touch)

    def stop(self, parent: Any) -> None:  # noqa: ARG002 - Celery's bootstep signature
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    shutdown = stop


class RestoreOrphans(bootsteps.StartStopStep):
    """After each connection to Redis, gives back the messages delivered before Redis last started.

    Redis's acknowledgements are emulated (kombu keeps a delivered message in an `unacked` hash
    until its ack), and a crash cuts every consumer's connection: a message delivered before it can
    never be acknowledged, and kombu alone would give it back only after the visibility timeout.
    A message delivered before the broker's start is such an orphan whatever worker took it, so any
    worker may give it back, and kombu's `restore_by_tag` makes two workers doing so restore it once.
    A task that was running runs again: a redelivery, counted as one.
    """

    requires = ("celery.worker.consumer.connection:Connection",)
    # Delivery times are the workers' clocks, the start is Redis's: a margin for their skew.
    CLOCK_SKEW_SECONDS = 1.0

    def start(self, parent: Any) -> None:
        channel = parent.connection.default_channel
        if parent.connection.transport.driver_type != "redis":
            return
        client = channel.client
        seconds, _micro = client.time()
        broker_started = seconds - client.info("server")["uptime_in_seconds"]
        orphans = client.zrangebyscore(channel.unacked_index_key, 0, broker_started - self.CLOCK_SKEW_SECONDS)
        for tag in orphans:
            channel.qos.restore_by_tag(tag, client)
        if orphans:
            _telemetry(parent.app).logger.warning(
                "messages delivered before the broker restarted given back", extra={"messages": len(orphans)}
            )


class _MergedFiles(Collector):
    def __init__(self, directory: str) -> None:
        self._directory = directory

    def collect(self) -> Iterable[Metric]:
        return multiprocess.collect_live(self._directory)


def _say_as_json(message: str, *_: Any) -> None:
    """Celery prints its shutdown notices from signal handlers with os.write, which takes no lock
    a handler could deadlock on. Still os.write, as a JSON line like every other."""
    record = logging.LogRecord("celery.apps.worker", logging.WARNING, __file__, 0, message.strip(), None, None)
    with contextlib.suppress(OSError):  # as Celery's: losing a notice must not abort the shutdown
        os.write(2, (JsonFormatter().format(record) + "\n").encode())


def _main_process_telemetry(settings: Settings, logger: logging.Logger) -> WorkerTelemetry:
    metrics = Metrics()
    if os.environ.get(RESTARTED_ENV):
        metrics.worker_restarts.inc()
    return WorkerTelemetry(metrics, logger, settings.telemetry_include_pii, settings.worker_alive_file)


def install(app: Celery, settings: Settings) -> None:
    """Connects the worker's signal handlers: call once, on the worker's own Celery app."""
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    logger = logging.getLogger(LOGGER_NAME)

    def before_worker_init(instance: Any = None, **_: Any) -> None:
        # The first hook of `celery worker`, before its privilege check warns: from here on, lines
        # are in our format. No banner: it is printed, not logged; the "ready" line says the same.
        configure_logging(settings.log_level, settings.log_format)
        if settings.log_format == "json":
            celery_worker.safe_say = _say_as_json
        instance.quiet = True

    def keep_our_logging(**_: Any) -> None:
        pass  # connected, it stops Celery's own setup (and its --loglevel) in the worker and its children

    def before_fork(**_: Any) -> None:
        # A worker restarted by its entry point (app/worker_main.py) keeps the dead one's files,
        # which scrapes fold in: its counts go on from where they were, like a gunicorn worker's.
        if not os.environ.get(RESTARTED_ENV):
            multiprocess.wipe(directory)
        # Made after the wipe: a metric made before it writes to a file the wipe unlinked, and
        # what the main process counts (drops) would never reach a scrape. Children inherit it.
        app.telemetry = _main_process_telemetry(settings, logger)
        start_sentry(settings, app.telemetry.metrics)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_MergedFiles(directory))
        registry.register(QueueCollector(app, logger))
        start_http_server(settings.worker_metrics_port, addr=settings.host, registry=registry)

    def in_child(**_: Any) -> None:
        multiprocess.merge_dead_worker(directory, os.getpid())  # a dead child's files under our pid
        telemetry = _telemetry(app)
        telemetry.metrics.worker_processes.set(1)
        if not settings.otel_sdk_disabled:
            provider = make_tracer_provider(settings)
            start_export(provider, settings, telemetry.metrics)
            instrument_celery(provider)
            telemetry.tracer_provider = provider

    def child_exit(**_: Any) -> None:
        provider = _telemetry(app).tracer_provider
        if provider is not None:
            provider.shutdown()  # flushes the spans still queued
        stop_sentry()

    def dropped(request: Any, task_name: str, reason: str) -> None:
        headers = getattr(request, "headers", None) or {}
        route = str(headers.get(ROUTE_HEADER) or NO_ROUTE)
        _telemetry(app).metrics.tasks_dropped.labels(task_name, route, reason).inc()
        logger.warning("queued task dropped", extra={"task": task_name, "route": route, "reason": reason})

    def revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
        # The sender is the task; the request is its context, which carries the headers, no name.
        dropped(request, getattr(sender, "name", None) or "unknown", "revoked")

    def unknown(name: str = "unknown", message: Any = None, **_: Any) -> None:
        dropped(message, name, "unregistered")

    app.steps["consumer"].update({ConsumerAlive, RestoreOrphans})
    signals.celeryd_init.connect(before_worker_init, weak=False)
    signals.setup_logging.connect(keep_our_logging, weak=False)
    signals.worker_init.connect(before_fork, weak=False)
    signals.worker_process_init.connect(in_child, weak=False)
    signals.worker_process_shutdown.connect(child_exit, weak=False)
    signals.task_revoked.connect(revoked, weak=False)
    signals.task_unknown.connect(unknown, weak=False)
