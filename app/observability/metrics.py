"""The Prometheus metric catalogue (the README's "Metrics" table) and its exposition.

Under gunicorn, PROMETHEUS_MULTIPROC_DIR is set by the master before any worker imports
prometheus_client, so every value lands in a per-process file and each scrape merges them
(see multiprocess.py for how dead workers' files are folded together).
"""

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from app.observability import multiprocess

RESPONSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
DELAY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


TELEMETRY_PARTS = ("metrics", "span", "sentry", "log", "state")  # what task_telemetry.guarded names


class Metrics:
    """One instance per app. Its registry serves single-process runs (tests, plain uvicorn)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_duration = Histogram(
            "http_server_request_duration_seconds",
            "Request start to last response byte; never includes background task time.",
            ["method", "route", "status"],
            buckets=RESPONSE_BUCKETS,
            registry=r,
        )
        self.active_requests = Gauge(
            "http_server_active_requests",
            "Requests not yet answered.",
            ["method", "route"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.task_duration = Histogram(
            "background_task_duration_seconds",
            "One attempt's run time, from its start to its end; outcome retry: it failed and will be retried.",
            ["task", "route", "outcome"],
            buckets=TASK_BUCKETS,
            registry=r,
        )
        self.task_failures = Counter(
            "background_task_failures",
            "Background tasks that failed for good (their last attempt raised), by exception class.",
            ["task", "route", "exception"],
            registry=r,
        )
        self.task_retries = Counter(
            "background_task_retries",
            "Attempts that raised and will be retried (the task's retry policy), by exception class.",
            ["task", "route", "exception"],
            registry=r,
        )
        self.task_start_delay = Histogram(
            "background_task_start_delay_seconds",
            "Last response byte (or enqueue) to the task's first attempt: the wait that clients never see.",
            ["task", "route"],
            buckets=DELAY_BUCKETS,
            registry=r,
        )
        self.tasks_in_progress = Gauge(
            "background_tasks_in_progress",
            "Background tasks running now.",
            ["task"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.tasks_scheduled = Counter(
            "background_tasks_scheduled",
            "Background tasks handed over by responses.",
            ["task", "route"],
            registry=r,
        )
        self.tasks_dropped = Counter(
            "background_tasks_dropped",
            "Background tasks that never ran or never finished.",
            ["task", "route", "reason"],
            registry=r,
        )
        self.tasks_pending = Gauge(
            "background_tasks_pending",
            "Background tasks handed over and not yet finished: waiting or running.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.tasks_rejected = Counter(
            "background_tasks_rejected",
            "Requests answered 503 because their worker's task backlog was full.",
            ["route"],
            registry=r,
        )
        # The queue (Celery): the web side counts what it could not enqueue, the worker redeliveries.
        self.enqueue_failures = Counter(
            "background_tasks_enqueue_failures",
            "Requests answered 503 because the broker did not take their task in time.",
            ["task", "route"],
            registry=r,
        )
        self.task_redeliveries = Counter(
            "background_task_redeliveries",
            "Queued tasks started again from a message the broker redelivered (a worker died or shut down).",
            ["task", "route"],
            registry=r,
        )
        self.worker_processes = Gauge(
            "server_worker_processes",
            "Live worker processes serving this target: each sets 1 while it runs.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.worker_restarts = Counter(
            "background_task_worker_restarts",
            "Times the queue worker's entry point started its Celery worker again after it died.",
            registry=r,
        )
        self.telemetry_errors = Counter(
            "background_task_telemetry_errors",
            "Failures inside a task's own telemetry (metrics, span, sentry, log), which never change its outcome.",
            ["part"],
            registry=r,
        )
        for part in TELEMETRY_PARTS:  # exported at zero from the start: the first failure is an increase
            self.telemetry_errors.labels(part)
        # Telemetry that never arrived: a collector or Sentry that is down must show as a number.
        self.spans_exported = Counter(
            "otel_spans_exported",
            "Spans handed to the OTLP exporter, by result: success, or failure (the batch was lost).",
            ["result"],
            registry=r,
        )
        self.spans_dropped = Counter(
            "otel_spans_dropped",
            "Spans never exported: queue_full (the exporter fell behind), shutdown (ended after it).",
            ["reason"],
            registry=r,
        )
        self.sentry_events_lost = Counter(
            "sentry_events_lost",
            "Sentry error events that did not reach Sentry, by the SDK's reason (e.g. network_error, queue_overflow).",
            ["reason"],
            registry=r,
        )
        for result in ("success", "failure"):
            self.spans_exported.labels(result)
        for reason in ("queue_full", "shutdown"):
            self.spans_dropped.labels(reason)
        for reason in ("network_error", "queue_overflow"):
            self.sentry_events_lost.labels(reason)
        self.request_lifetime = Histogram(
            "http_request_lifetime_seconds",
            "Request start to the end of its last background task: the full cost of a request.",
            ["route"],
            buckets=TASK_BUCKETS,
            registry=r,
        )

    def exposition(self) -> tuple[bytes, str]:
        multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not multiproc_dir:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        return multiprocess.exposition(multiproc_dir), CONTENT_TYPE_LATEST
