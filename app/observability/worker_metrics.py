"""The queue worker's `/metrics` on WORKER_METRICS_PORT, served by its entry point
(app/worker_main.py) whatever the library: the values of every process of the worker (its
multiprocess files, with those of dead processes folded) and the broker's queue depth, read at
each scrape. With METRICS_TOKEN set, a scrape must carry it, as the web side's `/metrics` must.

A depth that is not known is NaN, never a guess and never a gap: both counts when the broker does
not answer (each failed read counted by reason), the unacknowledged count where the source cannot
tell it (RabbitMQ without its management API). Sums over it (the Lost panel) are then unknown too,
where a zero would have shown waiting tasks as lost.
"""

import json
import logging
import math
import threading
import urllib.error
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.bearer import CHALLENGE, REFUSAL, authorized
from app.observability import multiprocess
from app.observability.metrics import DEPTH_READ_FAILURE_REASONS, DEPTH_READ_FAILURES, QUEUED, UNACKED
from app.settings import Settings

UNKNOWN = math.nan
DEPTH_READ_TIMEOUT_SECONDS = 2.0  # each read's: a scrape must answer within Prometheus's timeout


@dataclass(frozen=True, slots=True)
class Depth:
    waiting: float  # in the broker, not yet delivered
    unacked: float  # delivered to a worker, not yet acknowledged: reserved, running, or awaiting redelivery


def failure_reason(error: BaseException) -> str:
    """timeout, unreachable (no connection), or error (the broker answered, but with no depth:
    credentials, permissions; the log line says which), from the exception or what it wraps."""
    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and len(chain) < 8:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(e, TimeoutError) for e in chain):
        return "timeout"
    if any(isinstance(e, OSError) and not isinstance(e, urllib.error.HTTPError) for e in chain):
        return "unreachable"
    return "error"


class _ProcessFiles(Collector):
    def __init__(self, directory: str) -> None:
        self._directory = directory

    def collect(self) -> Iterable[Metric]:
        return multiprocess.collect_live(self._directory)


class _QueueDepth(Collector):
    def __init__(self, queue: str, read: Callable[[], Depth], logger: logging.Logger) -> None:
        self._queue = queue
        self._read = read
        self._logger = logger
        self._failures = dict.fromkeys(DEPTH_READ_FAILURE_REASONS, 0)
        self._lock = threading.Lock()  # scrapes may overlap

    def collect(self) -> Iterable[Metric]:
        try:
            depth = self._read()
        except Exception as error:  # a broker that is down or slow: unknown, and the scrape still answers
            reason = failure_reason(error)
            with self._lock:
                self._failures[reason] += 1
            self._logger.warning(
                "the broker did not answer the queue-depth scrape", exc_info=True, extra={"reason": reason}
            )
            depth = Depth(UNKNOWN, UNKNOWN)
        queued = GaugeMetricFamily(QUEUED.name, QUEUED.help, labels=QUEUED.labels)
        queued.add_metric([self._queue], depth.waiting)
        yield queued
        yield GaugeMetricFamily(UNACKED.name, UNACKED.help, value=depth.unacked)
        failures = CounterMetricFamily(DEPTH_READ_FAILURES.name, DEPTH_READ_FAILURES.help, labels=("reason",))
        with self._lock:
            for reason, count in self._failures.items():
                failures.add_metric([reason], count)
        yield failures


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line per scrape would drown the worker's own


def serve_worker_metrics(
    settings: Settings, directory: str, queue: str, read_depth: Callable[[], Depth], logger: logging.Logger
) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ProcessFiles(directory))
    registry.register(_QueueDepth(queue, read_depth, logger))
    scrape = make_wsgi_app(registry)
    token = settings.metrics_token
    expected = token.get_secret_value().encode() if token is not None else None
    refusal = json.dumps({"detail": REFUSAL}).encode()

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if expected is not None and not authorized(environ.get("HTTP_AUTHORIZATION"), expected):
            start_response("401 Unauthorized", [("Content-Type", "application/json"), ("WWW-Authenticate", CHALLENGE)])
            return [refusal]
        return scrape(environ, start_response)  # type: ignore[no-any-return]

    server = make_server(settings.host, settings.worker_metrics_port, app, ThreadingWSGIServer, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True).start()
