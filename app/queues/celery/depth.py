"""The broker's depth, read by the worker's main process at each scrape."""

import logging
from collections.abc import Iterable

from celery import Celery
from kombu.exceptions import OperationalError
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Beside the catalogue of app/observability/metrics.py: the same names whatever the library.
QUEUED, UNACKED = "background_tasks_queued", "background_tasks_unacked"
_SCRAPE_TIMEOUTS = {"socket_timeout": 2, "socket_connect_timeout": 2}


class QueueCollector(Collector):
    """Messages waiting, and messages delivered to a worker but not yet acknowledged (reserved,
    running, or held by a dead worker until redelivered)."""

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
