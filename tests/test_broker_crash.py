"""Celery on Redis, where the broker or the library's worker dies at the worst moment: during a
its shutdown, or the library's worker itself. (Crashes under traffic, on every library and
broker: tests/test_queue.py.)"""

import collections
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.queues.registry import QUEUE_LIBRARIES
from app.settings import WORKER_STOP_GRACE_SECONDS
from harness import Gunicorn, Metrics, QueueWorker, RedisServer, children, wait_for

TASK = {"task": "send_email", "route": "/send-mail/"}
# The visibility timeout stays at its hour: nothing here may wait for it.
pytestmark = pytest.mark.skipif("celery" not in QUEUE_LIBRARIES, reason="celery is not registered")
ENV = {"EMAIL_SEND_SECONDS": "0.3", "WORKER_SHUTDOWN_SECONDS": "5"}


def sent(web: Gunicorn) -> collections.Counter[str]:
    return collections.Counter(web.emails_sent())


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "broker").start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def web(tmp_path: Path, broker: RedisServer) -> Iterator[Gunicorn]:
    server = Gunicorn(tmp_path / "web", env={**ENV, "CELERY_BROKER_URL": broker.url}).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_worker(tmp_path: Path, broker: RedisServer, web: Gunicorn) -> Iterator[Callable[..., QueueWorker]]:
    """Starts `python -m app.worker_main` on the test's broker; whatever it started is stopped after."""
    started: list[QueueWorker] = []

    def start(**env: str) -> QueueWorker:
        # One log file for both sides, as a shared volume would be.
        settings = {**ENV, "CELERY_BROKER_URL": broker.url, "LOG_FILE": str(web.log_file), **env}
        started.append(QueueWorker(tmp_path / "worker", settings))
        return started[-1].start()

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()


def test_a_broker_crash_during_the_soft_shutdown_ends_it_in_time_and_the_task_comes_back(
    broker: RedisServer, web: Gunicorn, start_worker: Callable[..., QueueWorker]
) -> None:
    shutdown = float(ENV["WORKER_SHUTDOWN_SECONDS"])
    worker = start_worker(EMAIL_SEND_SECONDS="3")
    assert worker.process is not None
    pids = {worker.process.pid, worker.library_pid(), *worker.child_pids()}
    assert web.thread_client().post("/send-mail/", params={"email": "late@example.com"}).status_code == 200
    wait_for(lambda: broker.waiting_and_unacked() == (0, 1), what="the task running")

    stopped = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)  # the warm shutdown: the task may finish
    time.sleep(0.5)
    broker.crash()
    # Ended by the library, or at the entry point's deadline with SIGKILL (polled each second).
    worker.process.wait(timeout=shutdown + WORKER_STOP_GRACE_SECONDS + 10)
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), timeout=5, what="every process gone")
    assert time.monotonic() - stopped < shutdown + WORKER_STOP_GRACE_SECONDS + 5
    assert children(worker.process.pid) == set()

    # The task finished during the shutdown, but its ack died with the broker: Redis kept it, and
    # the next worker gives it back as it connects and runs it again, as a counted redelivery.
    broker.start()
    assert broker.waiting_and_unacked() == (0, 1)
    assert sent(web) == {"late@example.com": 1}
    again = start_worker()
    wait_for(lambda: sent(web) == {"late@example.com": 2}, timeout=60, what="the task run again")
    metrics = again.metrics()
    assert metrics.get_value("background_task_redeliveries_total", **TASK) == 1
    assert metrics.get_value("background_task_duration_seconds_count", outcome="success", **TASK) == 1
    wait_for(lambda: broker.waiting_and_unacked() == (0, 0), what="the broker empty")


def test_a_dead_celery_worker_is_started_again_counted_and_keeps_its_counts(
    web: Gunicorn, start_worker: Callable[..., QueueWorker]
) -> None:
    worker = start_worker()
    assert worker.process is not None
    http = web.thread_client()
    assert http.post("/send-mail/", params={"email": "before@example.com"}).status_code == 200
    wait_for(lambda: sent(web) == {"before@example.com": 1}, what="the first email")
    first = worker.library_pid()
    os.kill(first, signal.SIGKILL)  # as kombu's AttributeError ends it, without the traceback
    wait_for(lambda: worker.library_pid() not in (0, first) and len(worker.child_pids()) == 2, what="a new worker")
    wait_for(lambda: worker.stderr().count(" ready.") == 2, what="the new worker ready")
    assert http.post("/send-mail/", params={"email": "after@example.com"}).status_code == 200
    wait_for(lambda: sent(web) == {"before@example.com": 1, "after@example.com": 1}, what="the second email")

    def counted() -> Metrics | None:
        metrics = worker.metrics()
        runs = metrics.get_value("background_task_duration_seconds_count", outcome="success", **TASK)
        return metrics if runs == 2 else None

    metrics: Metrics = wait_for(counted, what="both runs counted: the dead worker's count kept")
    assert metrics.get_value("background_task_worker_restarts_total") == 1
    assert worker.stderr().count("the queue worker died: starting it again") == 1
    assert worker.process.poll() is None
    assert worker.stop() == 0
