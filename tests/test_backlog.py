"""The per-worker ledger, in process: each task settles once, and shedding is per route."""

import logging

from app.observability.backlog import Backlog
from app.observability.metrics import Metrics
from tests.support import Metrics as Scrape


def _backlog(limit: int = 3) -> tuple[Backlog, Metrics]:
    metrics = Metrics()
    return Backlog(metrics, logging.getLogger("test"), limit, retry_after_seconds=7), metrics


def _scrape(metrics: Metrics) -> Scrape:
    return Scrape.parse(metrics.exposition()[0].decode())


def test_each_task_settles_exactly_once() -> None:
    backlog, metrics = _backlog()
    first, second, third = backlog.open(["a", "b", "c"], "/jobs/")
    assert backlog.depth == 3
    assert backlog.settle(first)
    assert not backlog.settle(first)
    backlog.drop([second, third])
    backlog.drop([third])
    assert not backlog.settle(third)
    scrape = _scrape(metrics)
    assert scrape.get_value("background_tasks_scheduled_total", route="/jobs/") == 3
    assert scrape.get_value("background_tasks_dropped_total", reason="cancelled") == 2
    assert scrape.get_value("background_tasks_dropped_total") == 2
    assert scrape.get_value("background_tasks_pending") == 0
    assert backlog.depth == 0


def test_draining_drops_what_is_left_as_shutdown() -> None:
    backlog, metrics = _backlog()
    backlog.open(["a"], "/jobs/")
    backlog.open(["b", "c"], "/other/")
    backlog.draining = True
    backlog.drop_all()
    scrape = _scrape(metrics)
    assert scrape.get_value("background_tasks_dropped_total", reason="shutdown") == 3
    assert scrape.get_value("background_tasks_dropped_total", task="b", route="/other/", reason="shutdown") == 1
    assert backlog.depth == 0


def test_only_routes_that_schedule_tasks_are_shed_and_only_when_full() -> None:
    backlog, _ = _backlog(limit=2)
    assert not backlog.rejects("/jobs/")
    entries = backlog.open(["a", "b"], "/jobs/")
    assert backlog.rejects("/jobs/")
    assert not backlog.rejects("/quiet/")  # never handed over a task: never shed
    backlog.settle(entries[0])
    assert not backlog.rejects("/jobs/")
    assert backlog.retry_after == b"7"
