"""The real parts that the tests and `make bench` run: gunicorn, the worker, redis-server,
Prometheus, a Sentry ingest stand-in and an OTLP receiver, each module one concern.

Every server listens on 127.0.0.1 only and dies with the process that started it.
"""

from harness.logs import LOG_KEYS, app_lines, log_lines
from harness.processes import ROOT, children, die_with_parent, free_port, spawn, wait_for
from harness.prometheus import PROMETHEUS_DIR, Metrics, Prometheus, start_prometheus
from harness.queue import (
    Broker,
    QueueWorker,
    RabbitMQServer,
    RedisServer,
    backend_params,
    start_together,
    waiting_and_unacked,
)
from harness.receivers import OtlpReceiver, SentryIngest, Span
from harness.web import TOKEN, Gunicorn, Stack, post_scope, started, trace_id_of

__all__ = [
    "LOG_KEYS",
    "PROMETHEUS_DIR",
    "ROOT",
    "TOKEN",
    "Broker",
    "Gunicorn",
    "Metrics",
    "OtlpReceiver",
    "Prometheus",
    "QueueWorker",
    "RabbitMQServer",
    "RedisServer",
    "SentryIngest",
    "Span",
    "Stack",
    "app_lines",
    "backend_params",
    "children",
    "die_with_parent",
    "free_port",
    "log_lines",
    "post_scope",
    "spawn",
    "start_prometheus",
    "start_together",
    "started",
    "trace_id_of",
    "wait_for",
    "waiting_and_unacked",
]
