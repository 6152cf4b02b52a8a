"""The books of background tasks, kept in one place whatever runs them.

Scheduled, dropped (one list of reasons), redelivered and not enqueued: each (task, route) is
exported at zero from the first time a process sees it, so that its first increase is one an
alert sees (a series that first appears at 1 shows no increase). The web side's ledger
(backlog.py), the scheduler and every queue adapter count through here.
"""

import logging

from app.observability.metrics import Metrics

# Why a task was dropped, by where it can happen. In a web worker: shutdown, still running or
# waiting (for its next attempt too) when the drain deadline came; cancelled, cut short outside a
# shutdown, or a queued task cancelled by its client (DELETE /tasks/{id}). In a queue worker:
# revoked before it ran; unregistered, a name the worker does not know.
WEB_DROPS = ("shutdown", "cancelled")
QUEUE_DROPS = ("revoked", "unregistered")


class Books:
    """One per process. A queue worker's books (``queue_worker=True``) also export redeliveries."""

    def __init__(self, metrics: Metrics, logger: logging.Logger, *, queue_worker: bool = False) -> None:
        self._metrics = metrics
        self._logger = logger
        self._queue_worker = queue_worker
        self._drops = QUEUE_DROPS if queue_worker else WEB_DROPS
        self._tasks: set[tuple[str, str]] = set()
        self._enqueued: set[tuple[str, str]] = set()
        self._routes: set[str] = set()

    def seen(self, task: str, route: str) -> None:
        # Unlocked: two threads that both see a new pair only make the same series twice.
        if (task, route) in self._tasks:
            return
        self._tasks.add((task, route))
        for reason in self._drops:
            self._metrics.tasks_dropped.labels(task, route, reason)
        if self._queue_worker:
            self._metrics.task_redeliveries.labels(task, route)

    def route_seen(self, route: str) -> None:
        """A route that hands tasks over: its rejections are exported from now on."""
        if route not in self._routes:
            self._routes.add(route)
            self._metrics.tasks_rejected.labels(route)

    def schedules_tasks(self, route: str) -> bool:
        return route in self._routes

    def scheduled(self, task: str, route: str) -> None:
        self.seen(task, route)
        self._metrics.tasks_scheduled.labels(task, route).inc()

    def enqueued(self, task: str, route: str) -> None:
        """Scheduled on a queue: the broker holds it. From then on, a failure to enqueue this
        (task, route) is an increase; one that fails from the start shows in the request's 503s."""
        self.scheduled(task, route)
        if (task, route) not in self._enqueued:
            self._enqueued.add((task, route))
            self._metrics.enqueue_failures.labels(task, route)

    def not_enqueued(self, task: str, route: str, error: str) -> None:
        self._metrics.enqueue_failures.labels(task, route).inc()
        self._logger.warning(
            "queue unavailable: task not enqueued", extra={"task": task, "route": route, "error": error}
        )

    def dropped(self, task: str, route: str, reason: str, *, log_level: int = logging.WARNING) -> None:
        self.seen(task, route)
        self._metrics.tasks_dropped.labels(task, route, reason).inc()
        self._logger.log(log_level, "background task dropped", extra={"task": task, "route": route, "reason": reason})

    def redelivered(self, task: str, route: str) -> None:
        self.seen(task, route)
        self._metrics.task_redeliveries.labels(task, route).inc()
