"""The broker crashes (SIGKILL, then a restart from its own data: Redis's append-only file,
RabbitMQ's durable queues) under steady traffic, with a real Celery worker started as `make worker`
starts it: the worker survives, nothing accepted is lost, and what runs twice is counted."""

import collections
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import Broker, Gunicorn, Metrics, QueueWorker, RabbitMQServer, RedisServer, children, wait_for

TASK = {"task": "send_email", "route": "/send-mail/"}
CRASHES = 5
DOWN_SECONDS = 4.0
CLIENTS = 3
# The visibility timeout stays at its hour: nothing here may wait for it.
ENV = {"EMAIL_SEND_SECONDS": "0.3", "WORKER_SHUTDOWN_SECONDS": "5"}


def sent(web: Gunicorn) -> collections.Counter[str]:
    return collections.Counter(web.emails_sent())


@pytest.fixture
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    """Redis, unless a test asks for RabbitMQ."""
    kind = getattr(request, "param", "redis")
    server: Broker = (RedisServer if kind == "redis" else RabbitMQServer)(tmp_path / "broker").start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def web(tmp_path: Path, broker: Broker) -> Iterator[Gunicorn]:
    server = Gunicorn(tmp_path / "web", env={**ENV, "CELERY_BROKER_URL": broker.url}).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_worker(tmp_path: Path, broker: Broker, web: Gunicorn) -> Iterator[Callable[..., QueueWorker]]:
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


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_five_broker_crashes_under_traffic_lose_nothing_and_count_what_ran_twice(
    broker: Broker, web: Gunicorn, start_worker: Callable[..., QueueWorker]
) -> None:
    worker = start_worker()
    assert worker.process is not None
    web_before, worker_before = web.metrics(), worker.metrics()
    statuses: dict[str, int] = {}
    stop = threading.Event()

    def client(n: int) -> None:
        http = web.thread_client()
        i = 0
        while not stop.is_set():
            email = f"c{n}-{i}@example.com"
            statuses[email] = http.post("/send-mail/", params={"email": email}).status_code
            i += 1
            time.sleep(0.3)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(CRASHES):
            time.sleep(random.uniform(1.0, 2.5))
            broker.crash()
            time.sleep(DOWN_SECONDS)
            broker.start()
        last_return = time.monotonic()
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    accepted = {email for email, status in statuses.items() if status == 200}
    assert set(statuses.values()) == {200, 503}
    web_change = web.wait_for_metrics(
        lambda m: (
            m.get_value("background_tasks_enqueue_failures_total", **TASK)
            == sum(status == 503 for status in statuses.values())
        ),
        "every 503 counted",
        since=web_before,
    )
    assert web_change.get_value("background_tasks_scheduled_total", **TASK) == len(accepted)

    # Every accepted email is sent within 60 s of the broker's last return, even one that was
    # running when the broker died (its ack was lost: the reconnected worker gives it back).
    wait_for(lambda: accepted <= set(sent(web)), timeout=60, what="every accepted email sent")
    assert time.monotonic() - last_return < 60
    wait_for(lambda: broker.waiting_and_unacked() == (0, 0), timeout=30, what="the broker empty")

    def settled() -> Metrics | None:
        change = worker.metrics().since(worker_before)
        runs = change.get_value("background_task_duration_seconds_count", outcome="success", **TASK)
        return change if runs == sum(sent(web).values()) else None

    worker_change: Metrics = wait_for(settled, what="every run counted by the worker")
    counts = sent(web)
    assert set(counts) <= set(statuses)  # nothing sent that was not asked for
    # A publish cut by the crash may have reached the append-only file while the client got its 503:
    # that task runs (the client was told to retry, so make tasks idempotent), unscheduled.
    refused_but_sent = set(counts) - accepted
    assert all(statuses[email] == 503 for email in refused_but_sent)
    twice = sum(n - 1 for n in counts.values())
    # Each email sent twice is a message that came back after the crash: a counted redelivery.
    assert twice <= worker_change.get_value("background_task_redeliveries_total", **TASK)
    # The books: scheduled - finished - dropped - queued - unacknowledged = - (runs never scheduled).
    books = (
        web_change.get_value("background_tasks_scheduled_total", **TASK)
        - worker_change.get_value("background_task_duration_seconds_count", outcome="success", **TASK)
        - worker_change.get_value("background_task_duration_seconds_count", outcome="failure", **TASK)
        - worker_change.get_value("background_tasks_dropped_total", **TASK)
    )
    assert books == -(twice + len(refused_but_sent))
    # The worker is still up, and each time Celery died (kombu's close path after a crash) the entry
    # point started it again and counted it: as many restarts counted as logged.
    assert worker.process.poll() is None
    restarts = worker.stderr().count("the queue worker died: starting it again")
    assert worker.metrics().get_value("background_task_worker_restarts_total") == restarts
    assert worker.stop() == 0


def test_a_broker_crash_during_the_soft_shutdown_ends_it_in_time_and_the_task_comes_back(
    broker: Broker, web: Gunicorn, start_worker: Callable[..., QueueWorker]
) -> None:
    shutdown = float(ENV["WORKER_SHUTDOWN_SECONDS"])
    worker = start_worker(EMAIL_SEND_SECONDS="3")
    assert worker.process is not None
    pids = {worker.process.pid, worker.library_pid(), *worker.child_pids()}
    assert web.thread_client().post("/send-mail/", params={"email": "late@example.com"}).status_code == 200
    wait_for(lambda: broker.waiting_and_unacked() == (0, 1), what="the task running")

    stopped = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)  # the soft shutdown: the task may finish
    time.sleep(0.5)
    broker.crash()
    worker.process.wait(timeout=shutdown + 10)
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), timeout=5, what="every process gone")
    assert time.monotonic() - stopped < shutdown + 10
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
