"""One worker's ledger of background tasks: what is pending, when to shed load, what was lost.

Every task handed over by a response is opened here and settled exactly once: by the wrapper
when it ends (success, failure), or as dropped (cancelled, or still open when a draining
worker runs out of time). Settling is the only way out, under a lock, because a sync task
ends on its own thread while the event loop may be dropping it at the shutdown deadline.
So the books always balance: scheduled = success + failure + dropped + pending.
"""

import functools
import itertools
import logging
import threading
from collections.abc import Callable

from app.observability.books import Books
from app.observability.metrics import Metrics

Entry = tuple[int, str, str]  # (id, task, route)


class Backlog:
    def __init__(self, metrics: Metrics, logger: logging.Logger, limit: int, retry_after_seconds: int) -> None:
        self._metrics = metrics
        self._limit = limit
        self.retry_after = str(retry_after_seconds).encode()
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._open: dict[int, Entry] = {}
        self.books = Books(metrics, logger)
        self.draining = False  # set when the worker starts its graceful shutdown

    @property
    def depth(self) -> int:
        return len(self._open)

    def rejects(self, route: str) -> bool:
        """Shed a request to a route that schedules tasks while this worker's backlog is full.

        A route is known to schedule tasks once it has handed one over in this worker; a
        backlog can only be full of such routes, so a route that never did is never shed.
        """
        return self.depth >= self._limit and self.books.schedules_tasks(route)

    def open(self, tasks: list[str], route: str) -> list[Entry]:
        with self._lock:
            self.books.route_seen(route)
            entries = [(next(self._ids), task, route) for task in tasks]
            # A scrape reads the workers' files while they are written, so it can see one write
            # of a pair without the other. Pending rises before scheduled and falls after the
            # outcome is counted: a torn scrape sees a task twice, never a task lost.
            self._metrics.tasks_pending.inc(len(entries))
            for entry in entries:
                self._open[entry[0]] = entry
                self.books.scheduled(entry[1], route)
        return entries

    def settle(self, entry: Entry, count: Callable[[], None]) -> bool:
        """Count the task's outcome and take it out of pending, unless it was already settled
        (dropped at shutdown): True if this call settled it."""
        with self._lock:
            if self._open.pop(entry[0], None) is None:
                return False
            count()
            self._metrics.tasks_pending.dec()
        return True

    def drop(self, entries: list[Entry]) -> None:
        """Settle every entry still open as dropped: by shutdown while draining, else cancelled."""
        reason = "shutdown" if self.draining else "cancelled"
        for entry in entries:
            self.settle(entry, functools.partial(self.books.dropped, entry[1], entry[2], reason))

    def drop_all(self) -> None:
        with self._lock:
            entries = list(self._open.values())
        self.drop(entries)
