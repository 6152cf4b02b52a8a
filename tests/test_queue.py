"""Heavy tasks on Celery with a Redis broker: real redis-server, real prefork worker, real gunicorn.

The same telemetry as in-process tasks, end to end: counts across every process, one trace from
the request to the worker, one Sentry event per failure, the queue wait, and the faults.
"""

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from app.queues.celery.app import create_celery
from app.settings import Settings
from harness import (
    CeleryWorker,
    Gunicorn,
    Metrics,
    OtlpReceiver,
    RedisServer,
    SentryIngest,
    trace_id_of,
    wait_for,
)

TASK = {"task": "send_email", "route": "/send-mail/"}
SERVER, PRODUCER, CONSUMER = 2, 4, 5
FAST = {"EMAIL_SEND_SECONDS": "0.02"}


@dataclass
class Queue:
    workdir: Path
    redis: RedisServer
    web: Gunicorn
    sentry: SentryIngest
    otlp: OtlpReceiver
    env: dict[str, str]
    worker: CeleryWorker | None = None

    def start_worker(self, **env: str) -> CeleryWorker:
        assert self.worker is None or self.worker.process is None or self.worker.process.poll() is not None
        self.worker = CeleryWorker(self.workdir / "worker", {**self.env, **FAST, **env}).start()
        return self.worker

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()

    def send(self, email: str) -> httpx.Response:
        return self.web.thread_client().post("/send-mail/", params={"email": email})


def books(web: Metrics, worker: Metrics, waiting: int, unacked: int) -> float:
    """Scheduled - finished - dropped - queued - unacked: the tasks that vanished."""
    return (
        web.get_value("background_tasks_scheduled_total", **TASK)
        - worker.get_value("background_task_duration_seconds_count", outcome="success", **TASK)
        - worker.get_value("background_task_duration_seconds_count", outcome="failure", **TASK)
        - worker.get_value("background_tasks_dropped_total", **TASK)
        - waiting
        - unacked
    )


@pytest.fixture(scope="module")
def queue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Queue]:
    workdir = tmp_path_factory.mktemp("queue")
    sentry, otlp = SentryIngest(), OtlpReceiver()
    redis_server = RedisServer(workdir / "redis").start()
    env = {
        "CELERY_BROKER_URL": redis_server.url,
        "SENTRY_DSN": sentry.dsn,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "WORKER_MAX_TASKS_PER_CHILD": "40",
        "LOG_LEVEL": "DEBUG",  # a line per successful task too: which child ran it
    }
    web = Gunicorn(workdir / "web", env=env).start()
    env["LOG_FILE"] = str(web.log_file)  # one log file, as a shared volume would be
    scene = Queue(workdir, redis_server, web, sentry, otlp, env)
    scene.start_worker()
    try:
        yield scene
    finally:
        scene.stop_worker()
        web.stop()
        redis_server.stop()
        sentry.server.stop()
        otlp.server.stop()


def settled(queue: Queue, web_before: Metrics, worker_before: Metrics, finished: int) -> tuple[Metrics, Metrics]:
    assert queue.worker is not None
    worker = queue.worker

    def done() -> tuple[Metrics, Metrics] | None:
        w = worker.metrics().since(worker_before)
        outcomes = sum(
            w.get_value("background_task_duration_seconds_count", outcome=o, **TASK) for o in ("success", "failure")
        )
        if outcomes != finished or queue.redis.waiting_and_unacked() != (0, 0):
            return None
        return queue.web.metrics().since(web_before), w

    result: tuple[Metrics, Metrics] = wait_for(done, timeout=60, what=f"{finished} queued tasks to finish")
    return result


def test_counts_are_exact_across_web_workers_and_prefork_children(queue: Queue) -> None:
    assert queue.worker is not None
    web_before, worker_before = queue.web.metrics(), queue.worker.metrics()
    emails = [f"count-{i}-{uuid.uuid4().hex[:6]}@example.com" for i in range(240)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(queue.send, emails))
    assert [r.status_code for r in responses] == [200] * len(emails)
    web, worker = settled(queue, web_before, worker_before, len(emails))

    assert web.get_value("background_tasks_scheduled_total", **TASK) == len(emails)
    assert worker.get_value("background_task_duration_seconds_count", outcome="success", **TASK) == len(emails)
    assert worker.get_value("background_task_start_delay_seconds_count", **TASK) == len(emails)
    assert worker.get_value("background_task_failures_total") == 0
    assert worker.get_value("background_task_redeliveries_total") == 0
    assert web.get_value("background_task_duration_seconds_count") == 0  # none ran in the web workers
    assert books(web, worker, 0, 0) == 0
    logged = [e for e in queue.web.emails_sent() if e.startswith("count-")]
    assert sorted(logged) == sorted(emails)  # each exactly once

    # Both web workers enqueued, and more than two children ran tasks: they were recycled every 40.
    enqueuers = [
        path
        for path in queue.web.multiproc_dir.glob("counter_*.db")
        if any(
            '"background_tasks_scheduled_total"' in key for key, *_ in MmapedDict.read_all_values_from_file(str(path))
        )
    ]
    assert len(enqueuers) >= 2
    runners = {line["pid"] for line in queue.worker.app_logs() if line.get("message") == "background task success"}
    assert len(runners) >= len(emails) // 40
    # A child recycled after the last task is replaced a moment later.
    worker = queue.worker
    wait_for(lambda: worker.metrics().get_value("server_worker_processes") == 2, what="two live children")


def test_one_trace_from_the_request_to_the_failing_queued_task(queue: Queue) -> None:
    queue.stop_worker()
    queue.start_worker(EMAIL_FAILURE_RATE="1")
    try:
        assert queue.worker is not None
        worker_before = queue.worker.metrics()
        response = queue.send("fails@example.com")
        assert response.status_code == 200
        trace_id = trace_id_of(response)
        wait_for(
            lambda: (
                queue.worker is not None
                and queue.worker.metrics().since(worker_before).get_value("background_task_failures_total") == 1
            ),
            what="the failure",
        )
        spans = wait_for(lambda: len(s := queue.otlp.trace(trace_id)) >= 3 and s, what="three spans")
        time.sleep(0.5)  # a stacked duplicate span would arrive by now
        spans = queue.otlp.trace(trace_id)
        assert sorted(s.kind for s in spans) == [SERVER, PRODUCER, CONSUMER]
        (server,) = [s for s in spans if s.kind == SERVER]
        (producer,) = [s for s in spans if s.kind == PRODUCER]
        (consumer,) = [s for s in spans if s.kind == CONSUMER]
        assert server.name == "POST /send-mail/"
        assert producer.name == "apply_async/send_email"
        assert producer.parent_span_id == server.span_id
        assert consumer.name == "run/send_email"
        assert consumer.parent_span_id == producer.span_id
        assert consumer.status_code == 2
        assert consumer.event_names == ["exception"]  # recorded once, not by two layers
        assert consumer.attributes["background_task.name"] == "send_email"
        assert consumer.attributes["http.route"] == "/send-mail/"
        assert consumer.attributes["background_task.outcome"] == "failure"
        assert consumer.attributes["background_task.start_delay_s"] >= 0

        events = wait_for(lambda: queue.sentry.events_tagged("background_task", "send_email"), what="the event")
        time.sleep(0.5)
        (event,) = queue.sentry.events_tagged("background_task", "send_email")
        assert event["tags"]["route"] == "/send-mail/"
        assert event["contexts"]["trace"]["trace_id"] == trace_id
        (exception,) = event["exception"]["values"]
        assert exception["type"] == "EmailDeliveryError"
        assert exception["mechanism"] == {"type": "background_task", "handled": False}
        assert events
        failures = queue.worker.metrics().since(worker_before)
        assert failures.get_value("background_task_failures_total", exception="EmailDeliveryError", **TASK) == 1
    finally:
        queue.stop_worker()
        queue.start_worker()


def test_queue_wait_is_the_start_delay_and_never_the_response_time(queue: Queue) -> None:
    assert queue.worker is not None
    web_before = queue.web.metrics()
    queue.stop_worker()
    worker_before = Metrics()  # a new worker starts from zero
    emails = [f"wait-{i}@example.com" for i in range(6)]
    began = time.perf_counter()
    timings = []
    for email in emails:
        sent = time.perf_counter()
        assert queue.send(email).status_code == 200
        timings.append(time.perf_counter() - sent)
    time.sleep(max(0.0, 2.0 - (time.perf_counter() - began)))
    queue.start_worker()
    _web, worker = settled(queue, web_before, worker_before, len(emails))
    assert max(timings) < 1.0  # a response that waited for the stopped worker would take 2 s or more
    assert worker.get_value("background_task_start_delay_seconds_count", **TASK) == len(emails)
    assert worker.get_value("background_task_start_delay_seconds_bucket", le="1.0", **TASK) == 0
    assert worker.get_value("background_task_start_delay_seconds_sum", **TASK) >= 2.0 * len(emails)


def test_a_broker_that_is_down_gets_503s_counted_and_a_restart_loses_nothing(queue: Queue) -> None:
    assert queue.worker is not None
    web_before, worker_before = queue.web.metrics(), queue.worker.metrics()
    queue.redis.stop()
    down = [f"down-{i}@example.com" for i in range(10)]
    for email in down:
        began = time.perf_counter()
        response = queue.send(email)
        assert time.perf_counter() - began < 2.0
        assert response.status_code == 503
        assert response.headers["retry-after"] == "2"
        assert response.json() == {"detail": "The task queue is unavailable; retry later."}

    # Traffic goes on while Redis comes back.
    statuses: dict[str, int] = {}
    stop = threading.Event()

    def traffic() -> None:
        i = 0
        while not stop.is_set():
            email = f"restart-{i}@example.com"
            statuses[email] = queue.send(email).status_code
            i += 1
            time.sleep(0.02)

    thread = threading.Thread(target=traffic)
    thread.start()
    time.sleep(0.5)
    queue.redis.start()
    time.sleep(1.5)
    stop.set()
    thread.join()
    accepted = {email for email, status in statuses.items() if status == 200}
    assert set(statuses.values()) <= {200, 503}
    assert accepted, "requests succeed again once Redis is back"

    web = queue.web.wait_for_metrics(
        lambda m: (
            m.get_value("background_tasks_enqueue_failures_total", **TASK)
            == len(down) + sum(s == 503 for s in statuses.values())
        ),
        "the 503s counted",
        since=web_before,
    )
    scheduled = int(web.get_value("background_tasks_scheduled_total", **TASK))
    settled(queue, web_before, worker_before, scheduled)
    logged = [e for e in queue.web.emails_sent() if e.startswith(("down-", "restart-"))]
    assert len(logged) == len(set(logged)) == scheduled  # every enqueued task ran, once
    assert accepted <= set(logged)
    assert not any(e.startswith("down-") for e in logged)
    assert "Traceback" not in queue.web.stderr()
    waiting, unacked = queue.redis.waiting_and_unacked()
    assert (
        books(queue.web.metrics().since(web_before), queue.worker.metrics().since(worker_before), waiting, unacked) == 0
    )


def _running_child(worker: CeleryWorker) -> int:
    """The child whose in-progress gauge is 1, read from its own metric file."""
    for path in worker.multiproc_dir.glob("gauge_livesum_*.db"):
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            if '"background_tasks_in_progress"' in key and value == 1:
                return int(path.stem.rsplit("_", 1)[1])
    return 0


def test_a_child_killed_mid_task_runs_it_again_once_and_counts_the_redelivery(queue: Queue) -> None:
    queue.stop_worker()
    worker = queue.start_worker(EMAIL_SEND_SECONDS="2")
    try:
        web_before, worker_before = queue.web.metrics(), worker.metrics()
        assert queue.send("killed@example.com").status_code == 200
        pid = wait_for(lambda: _running_child(worker), what="the task to start")
        os.kill(pid, signal.SIGKILL)
        _web, after = settled(queue, web_before, worker_before, 1)
        assert after.get_value("background_task_redeliveries_total", **TASK) == 1
        assert after.get_value("background_task_duration_seconds_count", outcome="success", **TASK) == 1
        assert queue.web.emails_sent().count("killed@example.com") == 1
        wait_for(lambda: worker.metrics().get_value("server_worker_processes") == 2, what="a replacement child")
        assert worker.metrics().get_value("background_tasks_in_progress") == 0  # the dead child's 1 is gone
        assert books(queue.web.metrics().since(web_before), worker.metrics().since(worker_before), 0, 0) == 0
    finally:
        queue.stop_worker()
        queue.start_worker()


def test_a_revoked_queued_task_is_counted_as_dropped_with_its_task_and_route(queue: Queue) -> None:
    queue.stop_worker()
    worker = queue.start_worker(EMAIL_SEND_SECONDS="2")
    try:
        web_before, worker_before = queue.web.metrics(), worker.metrics()
        for i in range(3):  # two children take two; the third waits in Redis (prefetch of 1)
            assert queue.send(f"revoke-{i}@example.com").status_code == 200
        wait_for(lambda: queue.redis.waiting_and_unacked() == (1, 2), what="two running, one waiting")
        waiting = json.loads(queue.redis.client().lindex("celery", 0))
        control = create_celery(Settings(celery_broker_url=queue.redis.url), {}, producer=True)
        control.control.revoke(waiting["headers"]["id"])
        settled(queue, web_before, worker_before, 2)
        # Celery acknowledges a revoked message, then signals it: the count follows a moment later.
        wait_for(
            lambda: worker.metrics().since(worker_before).get_value("background_tasks_dropped_total", **TASK) == 1,
            what="the drop",
        )
        after = worker.metrics().since(worker_before)
        assert after.get_value("background_tasks_dropped_total", reason="revoked", **TASK) == 1
        assert books(queue.web.metrics().since(web_before), worker.metrics().since(worker_before), 0, 0) == 0
        revoked = waiting["headers"]["argsrepr"].split("'")[1]
        assert revoked not in queue.web.emails_sent()
    finally:
        queue.stop_worker()
        queue.start_worker()


@pytest.mark.parametrize(("task_seconds", "shutdown_seconds", "requeued"), [(1, 5, False), (4, 1, True)])
def test_sigterm_finishes_running_tasks_within_the_deadline_or_requeues_them(
    queue: Queue, task_seconds: int, shutdown_seconds: int, requeued: bool
) -> None:
    queue.stop_worker()
    worker = queue.start_worker(EMAIL_SEND_SECONDS=str(task_seconds), WORKER_SHUTDOWN_SECONDS=str(shutdown_seconds))
    email = f"sigterm-{task_seconds}@example.com"
    assert queue.send(email).status_code == 200
    wait_for(lambda: _running_child(worker), what="the task to start")
    began = time.monotonic()
    assert worker.stop(timeout=shutdown_seconds + 15) == 0
    assert time.monotonic() - began < shutdown_seconds + 5
    assert queue.redis.waiting_and_unacked() == ((1, 0) if requeued else (0, 0))
    assert queue.web.emails_sent().count(email) == (0 if requeued else 1)
    worker = queue.start_worker()
    wait_for(lambda: queue.web.emails_sent().count(email) == 1, what="the task to have run once")
    if requeued:
        assert worker.metrics().get_value("background_task_redeliveries_total", **TASK) == 1
