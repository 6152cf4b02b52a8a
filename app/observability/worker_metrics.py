"""The queue worker's `/metrics` on WORKER_METRICS_PORT, served by its entry point
(app/worker_main.py) whatever the library: the values of every process of the worker (its
multiprocess files, with those of dead processes folded) and the broker's queue depth, read at
each scrape. With METRICS_TOKEN set, a scrape must carry it, as the web side's `/metrics` must.
"""

import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.bearer import CHALLENGE, REFUSAL, authorized
from app.observability import multiprocess
from app.observability.metrics import QUEUED, UNACKED
from app.settings import Settings


@dataclass(frozen=True, slots=True)
class Depth:
    queue: str
    waiting: int  # in the broker, not yet delivered
    unacked: int  # delivered to a worker, not yet acknowledged: reserved, running, or awaiting redelivery


class _ProcessFiles(Collector):
    def __init__(self, directory: str) -> None:
        self._directory = directory

    def collect(self) -> Iterable[Metric]:
        return multiprocess.collect_live(self._directory)


class _QueueDepth(Collector):
    def __init__(self, read: Callable[[], Depth], logger: logging.Logger) -> None:
        self._read = read
        self._logger = logger

    def collect(self) -> Iterable[Metric]:
        try:
            depth = self._read()
        except Exception:  # a broker that is down or slow: no depth, and the scrape still answers
            self._logger.warning("the broker did not answer the queue-depth scrape", exc_info=True)
            return
        queued = GaugeMetricFamily(QUEUED.name, QUEUED.help, labels=QUEUED.labels)
        queued.add_metric([depth.queue], depth.waiting)
        yield queued
        yield GaugeMetricFamily(UNACKED.name, UNACKED.help, value=depth.unacked)


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line per scrape would drown the worker's own


def serve_worker_metrics(
    settings: Settings, directory: str, read_depth: Callable[[], Depth], logger: logging.Logger
) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ProcessFiles(directory))
    registry.register(_QueueDepth(read_depth, logger))
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
