"""The Prometheus metric catalogue and its exposition.

``CATALOGUE`` is the one list of what the service and its queue workers export: `Metrics` builds
the web side's and the worker processes' metrics from it, the worker's entry point its queue depth
(worker_metrics.py), and docs/telemetry.md its table (docs/generate.py, checked by a test).

Under gunicorn, PROMETHEUS_MULTIPROC_DIR is set by the master before any worker imports
prometheus_client, so every value lands in a per-process file and each scrape merges them
(see multiprocess.py for how dead workers' files are folded together).
"""

import os
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from app.observability import multiprocess

RESPONSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
DELAY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

TELEMETRY_PARTS = ("metrics", "span", "sentry", "log", "state")  # what task_telemetry.guarded names


@dataclass(frozen=True, slots=True)
class Spec:
    """One metric: its name as declared (a counter's exposed name adds ``_total``), its help, its
    labels, and who exports it: the web side, the queue worker, or both."""

    kind: Literal["counter", "gauge", "histogram"]
    name: str
    help: str
    labels: tuple[str, ...] = ()
    exported_by: Literal["web", "worker", "both"] = "both"
    buckets: tuple[float, ...] = ()

    @property
    def exposed_name(self) -> str:
        return f"{self.name}_total" if self.kind == "counter" else self.name


REQUEST_DURATION = Spec(
    "histogram",
    "http_server_request_duration_seconds",
    "Request start to last response byte; never includes background task time.",
    ("method", "route", "status"),
    "web",
    RESPONSE_BUCKETS,
)
ACTIVE_REQUESTS = Spec("gauge", "http_server_active_requests", "Requests not yet answered.", ("method", "route"), "web")
TASK_DURATION = Spec(
    "histogram",
    "background_task_duration_seconds",
    "One attempt's run time, from its start to its end, by outcome: success, failure (its last attempt), "
    "retry (it will be retried), cancelled; requeued on a worker (a shutdown gave it back).",
    ("task", "route", "outcome"),
    buckets=TASK_BUCKETS,
)
TASK_FAILURES = Spec(
    "counter",
    "background_task_failures",
    "Background tasks that failed for good (their last attempt raised), by exception class.",
    ("task", "route", "exception"),
)
TASK_RETRIES = Spec(
    "counter",
    "background_task_retries",
    "Attempts that raised and will be retried (the task's retry policy), by exception class.",
    ("task", "route", "exception"),
)
TASK_START_DELAY = Spec(
    "histogram",
    "background_task_start_delay_seconds",
    "Last response byte (or the enqueue) to the task's first attempt: the wait that clients never see.",
    ("task", "route"),
    buckets=DELAY_BUCKETS,
)
TASKS_IN_PROGRESS = Spec("gauge", "background_tasks_in_progress", "Background tasks running now.", ("task",))
TASKS_SCHEDULED = Spec(
    "counter",
    "background_tasks_scheduled",
    "Background tasks handed over by responses: run in-process, or enqueued.",
    ("task", "route"),
    "web",
)
TASKS_DROPPED = Spec(
    "counter",
    "background_tasks_dropped",
    "Background tasks that never ran or never finished, by reason: shutdown (unfinished at the drain "
    "deadline), cancelled (by its client); on a worker revoked, or unregistered (no such task).",
    ("task", "route", "reason"),
)
REQUEST_LIFETIME = Spec(
    "histogram",
    "http_request_lifetime_seconds",
    "Request start to the end of its last background task: the full cost of a request.",
    ("route",),
    "web",
    TASK_BUCKETS,
)
TASKS_PENDING = Spec(
    "gauge",
    "background_tasks_pending",
    "Background tasks handed over and not yet finished: waiting or running, all web workers.",
    exported_by="web",
)
TASKS_REJECTED = Spec(
    "counter",
    "background_tasks_rejected",
    "Requests answered 503 because their worker's task backlog was full.",
    ("route",),
    "web",
)
ENQUEUE_FAILURES = Spec(
    "counter",
    "background_tasks_enqueue_failures",
    "Requests answered 503 because the broker (or the task state store) did not take their task in time.",
    ("task", "route"),
    "web",
)
TASK_REDELIVERIES = Spec(
    "counter",
    "background_task_redeliveries",
    "Queued tasks started again from a message the broker redelivered (a worker died or shut down).",
    ("task", "route"),
    "worker",
)
WORKER_PROCESSES = Spec(
    "gauge",
    "server_worker_processes",
    "Live worker processes serving this target: each sets 1 while it runs.",
)
WORKER_RESTARTS = Spec(
    "counter",
    "background_task_worker_restarts",
    "Times the queue worker's entry point started its library's worker again after it died.",
    exported_by="worker",
)
TELEMETRY_ERRORS = Spec(
    "counter",
    "background_task_telemetry_errors",
    "Failures inside a task's own telemetry (metrics, span, sentry, log, state), which never change its outcome.",
    ("part",),
)
SPANS_EXPORTED = Spec(
    "counter",
    "otel_spans_exported",
    "Spans handed to the OTLP exporter, by result: success, or failure (the batch was lost).",
    ("result",),
)
SPANS_DROPPED = Spec(
    "counter",
    "otel_spans_dropped",
    "Spans never exported: queue_full (the exporter fell behind), shutdown (ended after it).",
    ("reason",),
)
SENTRY_EVENTS_LOST = Spec(
    "counter",
    "sentry_events_lost",
    "Sentry error events that did not reach Sentry, by the SDK's reason (e.g. network_error, queue_overflow).",
    ("reason",),
)
# Read from the broker at each scrape of the worker (worker_metrics.py), not written by processes.
QUEUED = Spec(
    "gauge", "background_tasks_queued", "Tasks waiting in the broker; NaN when it cannot be read.", ("queue",), "worker"
)
UNACKED = Spec(
    "gauge",
    "background_tasks_unacked",
    "Tasks delivered to a worker and not yet acknowledged: reserved, running, or awaiting redelivery; "
    "NaN when unknown (the broker did not answer, or RabbitMQ without its management API).",
    exported_by="worker",
)
DEPTH_READ_FAILURE_REASONS = ("timeout", "unreachable", "error")
DEPTH_READ_FAILURES = Spec(
    "counter",
    "background_tasks_queue_depth_read_failures",
    "Queue-depth reads that failed, leaving the depth unknown, by reason: timeout, unreachable, error.",
    ("reason",),
    "worker",
)

CATALOGUE = (
    REQUEST_DURATION,
    ACTIVE_REQUESTS,
    REQUEST_LIFETIME,
    TASK_DURATION,
    TASK_FAILURES,
    TASK_RETRIES,
    TASK_START_DELAY,
    TASKS_IN_PROGRESS,
    TASKS_SCHEDULED,
    TASKS_DROPPED,
    TASKS_PENDING,
    TASKS_REJECTED,
    ENQUEUE_FAILURES,
    TASK_REDELIVERIES,
    WORKER_PROCESSES,
    WORKER_RESTARTS,
    QUEUED,
    UNACKED,
    DEPTH_READ_FAILURES,
    TELEMETRY_ERRORS,
    SPANS_EXPORTED,
    SPANS_DROPPED,
    SENTRY_EVENTS_LOST,
)


def _counter(spec: Spec, registry: CollectorRegistry) -> Counter:
    return Counter(spec.name, spec.help, spec.labels, registry=registry)


def _gauge(spec: Spec, registry: CollectorRegistry) -> Gauge:
    # livesum: a dead process's value leaves the sum with it.
    return Gauge(spec.name, spec.help, spec.labels, multiprocess_mode="livesum", registry=registry)


def _histogram(spec: Spec, registry: CollectorRegistry) -> Histogram:
    return Histogram(spec.name, spec.help, spec.labels, buckets=spec.buckets, registry=registry)


class Metrics:
    """One instance per app or worker process. Its registry serves single-process runs (tests, plain uvicorn)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.request_duration = _histogram(REQUEST_DURATION, r)
        self.active_requests = _gauge(ACTIVE_REQUESTS, r)
        self.task_duration = _histogram(TASK_DURATION, r)
        self.task_failures = _counter(TASK_FAILURES, r)
        self.task_retries = _counter(TASK_RETRIES, r)
        self.task_start_delay = _histogram(TASK_START_DELAY, r)
        self.tasks_in_progress = _gauge(TASKS_IN_PROGRESS, r)
        self.tasks_scheduled = _counter(TASKS_SCHEDULED, r)
        self.tasks_dropped = _counter(TASKS_DROPPED, r)
        self.tasks_pending = _gauge(TASKS_PENDING, r)
        self.tasks_rejected = _counter(TASKS_REJECTED, r)
        self.enqueue_failures = _counter(ENQUEUE_FAILURES, r)
        self.task_redeliveries = _counter(TASK_REDELIVERIES, r)
        self.worker_processes = _gauge(WORKER_PROCESSES, r)
        self.worker_restarts = _counter(WORKER_RESTARTS, r)
        self.telemetry_errors = _counter(TELEMETRY_ERRORS, r)
        for part in TELEMETRY_PARTS:  # exported at zero from the start: the first failure is an increase
            self.telemetry_errors.labels(part)
        # Telemetry that never arrived: a collector or Sentry that is down must show as a number.
        self.spans_exported = _counter(SPANS_EXPORTED, r)
        self.spans_dropped = _counter(SPANS_DROPPED, r)
        self.sentry_events_lost = _counter(SENTRY_EVENTS_LOST, r)
        for result in ("success", "failure"):
            self.spans_exported.labels(result)
        for reason in ("queue_full", "shutdown"):
            self.spans_dropped.labels(reason)
        for reason in ("network_error", "queue_overflow"):
            self.sentry_events_lost.labels(reason)
        self.request_lifetime = _histogram(REQUEST_LIFETIME, r)

    def exposition(self) -> tuple[bytes, str]:
        multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not multiproc_dir:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        return multiprocess.exposition(multiproc_dir), CONTENT_TYPE_LATEST
