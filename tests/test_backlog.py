"""The per-worker ledger, in process: each task settles once, and shedding is per route."""

import logging

from app.observability.backlog import Backlog
from app.observability.metrics import Metrics
from harness import Metrics as Scrape


def _backlog(limit: int = 3) -> tuple[Backlog, Metrics]:
    metrics = Metrics()
    return Backlog(metrics, logging.getLogger("test"), limit, retry_after_seconds=7), metrics


def _scrape(metrics: Metrics) -> Scrape:
    return Scrape.parse(metrics.exposition()[0].decode())


def test_each_task_settles_exactly_once() -> None:
    backlog, metrics = _backlog()
    first, second, third = backlog.open(["a", "b", "c"], "/jobs/")
    assert backlog.depth == 3
    counted: list[str] = []
    assert backlog.settle(first, lambda: counted.append("first"))
    assert not backlog.settle(first, lambda: counted.append("first again"))
    backlog.drop([second, third])
    backlog.drop([third])
    assert not backlog.settle(third, lambda: counted.append("third"))
    assert counted == ["first"]
    scrape = _scrape(metrics)
    assert scrape.get_value("background_tasks_scheduled_total", route="/jobs/") == 3
    assert scrape.get_value("background_tasks_dropped_total", reason="cancelled") == 2
    assert scrape.get_value("background_tasks_dropped_total") == 2
    assert scrape.get_value("background_tasks_pending") == 0
    assert backlog.depth == 0


def test_the_outcome_is_counted_before_the_task_leaves_pending() -> None:
    # A scrape that sees pending at 0 must not then miss a finished task's count.
    backlog, metrics = _backlog()
    (entry,) = backlog.open(["a"], "/jobs/")
    pending_while_counting: list[float] = []
    assert backlog.settle(entry, lambda: pending_while_counting.append(_pending(metrics)))
    assert pending_while_counting == [1]
    assert _pending(metrics) == 0


def _pending(metrics: Metrics) -> float:
    return _scrape(metrics).get_value("background_tasks_pending")


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
    backlog.settle(entries[0], lambda: None)
    assert not backlog.rejects("/jobs/")
    assert backlog.retry_after == b"7"
