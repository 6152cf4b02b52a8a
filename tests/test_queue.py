"""Heavy tasks on a queue, one contract for every library and broker: a real broker (Debian's
redis-server or rabbitmq-server), the library's real worker as `make worker` starts it, and real
gunicorn.

The same telemetry as in-process tasks, end to end: counts across every process, one trace from
the request to the worker, one Sentry event per failure, retries told apart from failures, a
task's state and its cancellation, the queue wait, the time limit, and the faults (broker down, a
task's process killed, SIGTERM).
"""

import collections
import importlib
import json
import math
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.mmap_dict import MmapedDict

from app.settings import WORKER_STOP_GRACE_SECONDS, Settings
from harness import (
    TOKEN,
    Broker,
    Gunicorn,
    Metrics,
    OtlpReceiver,
    QueueWorker,
    RabbitMQServer,
    RedisServer,
    SentryIngest,
    backend_params,
    children,
    log_lines,
    start_together,
    trace_id_of,
    wait_for,
    waiting_and_unacked,
)
from harness.proxy import HoldingProxy
from harness.queries import answers_on_one_worker_and_on_each

TASK = {"task": "send_email", "route": "/send-mail/"}
SERVER, PRODUCER, CONSUMER = 2, 4, 5
FAST = {"EMAIL_SEND_SECONDS": "0.02"}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FINAL = ("succeeded", "failed")
WORKER_METRICS_TOKEN = "worker-metrics-token-0123456789"  # the harness scrapes with it
IMPORT_TIME = re.compile(r"import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)\s*$")  # PYTHONPROFILEIMPORTTIME's
CRASHES, CRASH_CLIENTS = 2, 2
# Every supported (library, broker).
BACKENDS = [
    ("celery", "redis"),
    ("celery", "rabbitmq"),
    ("dramatiq", "redis"),
    ("dramatiq", "rabbitmq"),
    ("rq", "redis"),
]
# The names of the enqueue's and the run's spans: Celery's instrumentation's, or app/queues/spans.py's.
SPAN_NAMES = {"celery": ("apply_async/send_email", "run/send_email")}
# Dramatiq's Redis broker gives a dead worker's messages back once its heartbeats have stopped for
# the visibility timeout: short here, so that no test waits an hour.
SHORT_VISIBILITY = {
    "QUEUE_VISIBILITY_TIMEOUT_SECONDS": "10",
    "TASK_TIME_LIMIT_SECONDS": "8",
    "WORKER_SHUTDOWN_SECONDS": "5",
}


@dataclass
class Queue:
    library: str
    broker_name: str
    workdir: Path
    broker: Broker
    web: Gunicorn
    sentry: SentryIngest
    otlp: OtlpReceiver
    env: dict[str, str]
    state_redis: RedisServer | None  # where task state lives beside RabbitMQ
    worker: QueueWorker | None = None
    custom_worker: bool = False  # started with settings of a test's own

    @property
    def backend(self) -> tuple[str, str]:
        return self.library, self.broker_name

    def depth(self) -> tuple[int, int]:
        return self.broker.waiting_and_unacked(self.library)

    def start_worker(self, **env: str) -> QueueWorker:
        assert self.worker is None or self.worker.process is None or self.worker.process.poll() is not None
        worker_env = {**self.env, **FAST, "METRICS_TOKEN": WORKER_METRICS_TOKEN, **env}
        self.worker = QueueWorker(self.workdir / "worker", worker_env).start()
        self.custom_worker = bool(env)
        return self.worker

    def default_worker(self) -> QueueWorker:
        """A worker with the fixture's settings: the running one, or a new one if the last test
        left none (a test that needs its own stops it at the end, and starts no other)."""
        running = self.worker is not None and self.worker.process is not None and self.worker.process.poll() is None
        if not running or self.custom_worker:
            self.stop_worker()
            self.start_worker()
        assert self.worker is not None
        return self.worker

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()

    def send(self, email: str) -> httpx.Response:
        return self.web.thread_client().post("/send-mail/", params={"email": email})

    def state(self, task_id: str) -> dict[str, Any]:
        response = self.web.thread_client().get(f"/tasks/{task_id}", headers=AUTH)
        assert response.status_code == 200, response.text
        state: dict[str, Any] = response.json()
        return state

    def cancel(self, task_id: str) -> httpx.Response:
        return self.web.thread_client().delete(f"/tasks/{task_id}", headers=AUTH)


@contextmanager
def traffic(queue: Queue, prefix: str, pause: float, clients: int = 1) -> Iterator[dict[str, int]]:
    """Clients posting /send-mail/ until the block ends, each on its own connection: every email
    sent (``<prefix>-<client>-<n>@example.com``) with the status it got."""
    statuses: dict[str, int] = {}
    stop = threading.Event()

    def client(n: int) -> None:
        http, i = queue.web.thread_client(), 0
        while not stop.is_set():
            email = f"{prefix}-{n}-{i}@example.com"
            statuses[email] = http.post("/send-mail/", params={"email": email}).status_code
            i += 1
            time.sleep(pause)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def books(web: Metrics, worker: Metrics, waiting: int, unacked: int) -> float:
    """Scheduled - finished - dropped (by the web side: cancelled; or the worker) - queued - unacked:
    the tasks that vanished."""
    return (
        web.get_value("background_tasks_scheduled_total", **TASK)
        - worker.get_value("background_task_duration_seconds_count", outcome="success", **TASK)
        - worker.get_value("background_task_duration_seconds_count", outcome="failure", **TASK)
        - web.get_value("background_tasks_dropped_total", **TASK)
        - worker.get_value("background_tasks_dropped_total", **TASK)
        - waiting
        - unacked
    )


@pytest.fixture(scope="module", params=backend_params(BACKENDS))
def queue(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Queue]:
    library, broker_name = request.param
    workdir = tmp_path_factory.mktemp(f"queue-{library}-{broker_name}")
    sentry, otlp = SentryIngest(), OtlpReceiver()
    broker: Broker = (RedisServer if broker_name == "redis" else RabbitMQServer)(workdir / "broker").start()
    state_redis = RedisServer(workdir / "state").start() if isinstance(broker, RabbitMQServer) else None
    env = {
        "BROKER_URL": broker.url,
        "TASK_QUEUE": library,
        **({"BROKER_MANAGEMENT_URL": broker.management_url} if isinstance(broker, RabbitMQServer) else {}),
        **({"TASK_STATE_URL": state_redis.url} if state_redis else {}),
        "API_TOKEN": TOKEN,
        # The web side's too: RQ takes a task's retries with it when it is enqueued.
        "EMAIL_MAX_ATTEMPTS": "4",
        # A budget far above an enqueue's milliseconds, so that a busy machine cannot turn one into
        # a 503; a broker that is down still refuses at once.
        "ENQUEUE_TIMEOUT_SECONDS": "5",
        "EMAIL_RETRY_BACKOFF_SECONDS": "0.1",
        **(SHORT_VISIBILITY if (library, broker_name) == ("dramatiq", "redis") else {}),
        "SENTRY_DSN": sentry.dsn,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "WORKER_MAX_TASKS_PER_CHILD": "40",
        "LOG_LEVEL": "DEBUG",  # a line per successful task too: which child ran it
    }
    web = Gunicorn(workdir / "web", env=env).start()
    env["LOG_FILE"] = str(web.log_file)  # one log file, as a shared volume would be
    scene = Queue(library, broker_name, workdir, broker, web, sentry, otlp, env, state_redis)
    scene.start_worker()
    try:
        yield scene
    finally:
        scene.stop_worker()
        web.stop()
        broker.remove()
        if state_redis is not None:
            state_redis.remove()
        sentry.server.stop()
        otlp.server.stop()


def settled(
    queue: Queue, web_before: Metrics, worker_before: Metrics, finished: int, timeout: float = 60
) -> tuple[Metrics, Metrics]:
    assert queue.worker is not None
    worker = queue.worker

    def done() -> tuple[Metrics, Metrics] | None:
        w = worker.metrics().since(worker_before)
        outcomes = sum(
            w.get_value("background_task_duration_seconds_count", outcome=o, **TASK) for o in ("success", "failure")
        )
        if outcomes != finished or queue.depth() != (0, 0):
            return None
        return queue.web.metrics().since(web_before), w

    result: tuple[Metrics, Metrics] = wait_for(done, timeout=timeout, what=f"{finished} queued tasks to finish")
    return result


def test_counts_are_exact_across_web_workers_and_worker_processes(queue: Queue) -> None:
    web_before, worker_before = queue.web.metrics(), queue.default_worker().metrics()
    # RQ forks a work horse per task: five hundred of them, and the counts stay exact.
    emails = [f"count-{i}-{uuid.uuid4().hex[:6]}@example.com" for i in range(500 if queue.library == "rq" else 240)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(queue.send, emails))
    assert [r.status_code for r in responses] == [200] * len(emails)
    web, worker = settled(queue, web_before, worker_before, len(emails), timeout=240)

    assert web.get_value("background_tasks_scheduled_total", **TASK) == len(emails)
    assert worker.get_value("background_task_duration_seconds_count", outcome="success", **TASK) == len(emails)
    assert worker.get_value("background_task_start_delay_seconds_count", **TASK) == len(emails)
    assert worker.get_value("background_task_failures_total") == 0
    assert worker.get_value("background_task_redeliveries_total") == 0
    assert web.get_value("background_task_duration_seconds_count") == 0  # none ran in the web workers
    assert books(web, worker, 0, 0) == 0
    logged = [e for e in queue.web.emails_sent() if e.startswith("count-")]
    assert sorted(logged) == sorted(emails)  # each exactly once
    # One PRODUCER span per enqueue, however many threads published the first ones at once.
    traces = {trace_id_of(r) for r in responses}
    wait_for(
        lambda: sum(s.kind == PRODUCER and s.trace_id in traces for s in queue.otlp.spans) == len(emails),
        what="a PRODUCER span per enqueue",
    )

    # Both web workers enqueued, and both worker processes ran tasks (Celery's children, recycled
    # every 40, more than two).
    enqueuers = [
        path
        for path in queue.web.multiproc_dir.glob("counter_*.db")
        if any(
            '"background_tasks_scheduled_total"' in key for key, *_ in MmapedDict.read_all_values_from_file(str(path))
        )
    ]
    assert len(enqueuers) >= 2
    runners = {line["pid"] for line in queue.worker.app_logs() if line.get("message") == "background task success"}
    assert len(runners) >= (len(emails) // 40 if queue.library == "celery" else 2)
    # No line of the worker, whatever the library, carries a task's arguments.
    assert not any(email in queue.worker.stderr() for email in emails[:20])
    # However many processes ran tasks, a scrape reads the files of the live ones and the merged
    # ones: their number does not grow with the tasks run, nor does a scrape's time.
    files = list(queue.worker.multiproc_dir.glob("*.db"))
    assert len(files) <= 2 + 3 * (queue.worker.concurrency + 2), sorted(f.name for f in files)
    # The liveness probe's file is kept fresh by every library's consumer (the probe allows 60 s).
    alive = queue.worker.workdir / "consumer-alive"
    assert time.time() - alive.stat().st_mtime < 45  # touched within three heartbeats (the probe allows 60 s)
    # The worker's /metrics, whatever the library, lets in only the scrapes that carry METRICS_TOKEN.
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
        refused = httpx.get(queue.worker.metrics_url, headers=headers, timeout=10)
        assert (refused.status_code, refused.json()) == (401, {"detail": "Missing or invalid bearer token"})
        assert refused.headers["www-authenticate"] == "Bearer"
    # A child recycled after the last task is replaced a moment later.
    worker = queue.worker
    wait_for(lambda: worker.metrics().get_value("server_worker_processes") == 2, what="two live children")


def test_one_trace_from_the_request_to_the_failing_queued_task(queue: Queue) -> None:
    queue.stop_worker()
    queue.start_worker(EMAIL_FAILURE_RATE="1", EMAIL_MAX_ATTEMPTS="1")  # the worker's policy decides
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
        producer_name, consumer_name = SPAN_NAMES.get(queue.library, ("send send_email", "process send_email"))
        assert producer.name == producer_name
        assert producer.parent_span_id == server.span_id
        assert consumer.name == consumer_name
        assert consumer.parent_span_id == producer.span_id
        assert consumer.attributes["messaging.system"] == queue.library
        assert consumer.attributes["messaging.message.id"] == producer.attributes["messaging.message.id"]
        # OpenTelemetry's messaging conventions (1.44), as far as they fit a task queue.
        queue_name = importlib.import_module(f"app.queues.{queue.library}.names").QUEUE
        assert (consumer.attributes["messaging.operation.type"], consumer.attributes["messaging.operation.name"]) == (
            "process",
            "process",
        )
        assert consumer.attributes["messaging.destination.name"] == queue_name
        assert consumer.attributes["error.type"] == "EmailDeliveryError"
        if queue.library not in SPAN_NAMES:  # the PRODUCER span is ours, not the instrumentation's
            assert producer.attributes["messaging.operation.name"] == "send"
            assert producer.attributes["messaging.destination.name"] == queue_name
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
        assert event["tags"]["attempts"] == "1"
        assert event["contexts"]["trace"]["trace_id"] == trace_id
        (exception,) = event["exception"]["values"]
        assert exception["type"] == "EmailDeliveryError"
        assert exception["mechanism"] == {"type": "background_task", "handled": False}
        assert events
        failures = queue.worker.metrics().since(worker_before)
        assert failures.get_value("background_task_failures_total", exception="EmailDeliveryError", **TASK) == 1
    finally:
        queue.stop_worker()


def test_retries_are_told_apart_from_failures_in_metrics_state_spans_and_sentry(queue: Queue) -> None:
    queue.stop_worker()
    worker = queue.start_worker(EMAIL_FAILURE_RATE="0.5")  # 4 attempts, 0.1 s first backoff (the fixture's)
    try:
        web_before, worker_before = queue.web.metrics(), worker.metrics()
        events_before = len(_sentry_events(queue, "EmailDeliveryError"))
        emails = [f"retry-{i}-{uuid.uuid4().hex[:6]}@example.com" for i in range(40)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            responses = list(pool.map(queue.send, emails))
        assert [r.status_code for r in responses] == [200] * len(emails)
        ids = [r.headers["x-task-id"] for r in responses]
        assert len({str(uuid.UUID(task_id)) for task_id in ids}) == len(emails)

        def final_states() -> list[dict[str, Any]] | None:
            found = [queue.state(task_id) for task_id in ids]
            return found if all(state["state"] in FINAL for state in found) else None

        states = wait_for(final_states, timeout=120, what="every task to succeed or fail for good")
        web, after = settled(queue, web_before, worker_before, len(emails))

        sent = queue.web.emails_sent()
        succeeded = {email for email, state in zip(emails, states, strict=True) if state["state"] == "succeeded"}
        failed = [state for state in states if state["state"] == "failed"]
        assert {email for email in emails if email in sent} == succeeded
        assert all(sent.count(email) == 1 for email in succeeded)  # each sent exactly once
        retried = sum(state["attempts"] - 1 for state in states)
        assert retried > 0
        assert after.get_value("background_task_retries_total", **TASK) == retried
        assert after.get_value("background_task_retries_total", exception="EmailDeliveryError", **TASK) == retried
        assert after.get_value("background_task_duration_seconds_count", outcome="retry", **TASK) == retried
        assert after.get_value("background_task_failures_total", **TASK) == len(failed)
        assert after.get_value("background_task_duration_seconds_count", outcome="failure", **TASK) == len(failed)
        assert after.get_value("background_task_start_delay_seconds_count", **TASK) == len(emails)  # first attempts
        assert all(state["attempts"] == 4 and state["exception"] == "EmailDeliveryError" for state in failed)
        assert all(state["exception"] is None for state in states if state["state"] == "succeeded")
        assert all(state["started_at"] and state["finished_at"] >= state["started_at"] for state in states)
        assert books(web, after, 0, 0) == 0

        # Sentry: one event per task failed for good, with its attempts; none for a retried attempt.
        wait_for(lambda: len(_sentry_events(queue, "EmailDeliveryError")) - events_before == len(failed), what="events")
        time.sleep(0.5)  # one more would arrive by now
        events = _sentry_events(queue, "EmailDeliveryError")[events_before:]
        assert len(events) == len(failed)
        assert all(event["tags"]["attempts"] == "4" for event in events)

        # One trace holds a span per attempt, numbered, each a child of an enqueue in that trace.
        most = max(range(len(emails)), key=lambda i: states[i]["attempts"])
        attempts = states[most]["attempts"]
        trace_id = trace_id_of(responses[most])

        def consumers() -> list[Any]:
            return [span for span in queue.otlp.trace(trace_id) if span.kind == CONSUMER]

        wait_for(lambda: len(consumers()) == attempts, what=f"{attempts} attempt spans")
        time.sleep(0.5)
        spans = consumers()
        assert sorted(span.attributes["background_task.attempt"] for span in spans) == list(range(1, attempts + 1))
        outcomes = [span.attributes["background_task.outcome"] for span in sorted(spans, key=lambda s: s.start)]
        assert outcomes[:-1] == ["retry"] * (attempts - 1)
        assert outcomes[-1] == ("success" if states[most]["state"] == "succeeded" else "failure")
        producers = {span.span_id for span in queue.otlp.trace(trace_id) if span.kind == PRODUCER}
        assert all(span.parent_span_id in producers for span in spans)
    finally:
        queue.stop_worker()


def test_a_task_cancelled_while_queued_never_runs_and_is_counted_once(queue: Queue) -> None:
    queue.stop_worker()  # no worker: the tasks wait in the broker
    web_before = queue.web.metrics()
    emails = [f"cancel-{i}-{uuid.uuid4().hex[:6]}@example.com" for i in range(3)]
    responses = [queue.send(email) for email in emails]
    assert [r.status_code for r in responses] == [200] * 3
    ids = [r.headers["x-task-id"] for r in responses]
    queued = queue.state(ids[0])
    assert (queued["id"], queued["task"], queued["state"], queued["attempts"]) == (ids[0], "send_email", "queued", 0)
    assert queued["enqueued_at"]
    assert queued["started_at"] is None
    assert queued["finished_at"] is None

    cancelled = queue.cancel(ids[1])
    assert cancelled.status_code == 202
    assert (cancelled.json()["id"], cancelled.json()["state"]) == (ids[1], "cancelled")
    # The cancellation is an event of the DELETE's span, and a DEBUG line of the web worker.
    wait_for(lambda: queue.otlp.trace(trace_id_of(cancelled)), what="the DELETE's span")
    (delete_span,) = queue.otlp.trace(trace_id_of(cancelled))
    assert (delete_span.name, delete_span.event_names) == ("DELETE /tasks/{task_id}", ["background_task.cancelled"])
    dropped = [line for line in queue.web.app_logs() if line["message"] == "background task dropped"]
    assert [(line["level"], line["reason"], line["task"]) for line in dropped] == [("DEBUG", "cancelled", "send_email")]
    assert queue.state(ids[1])["state"] == "cancelled"
    again = queue.cancel(ids[1])
    assert (again.status_code, again.json()) == (409, {"detail": "The task was cancelled already"})
    web = queue.web.metrics().since(web_before)
    assert web.get_value("background_tasks_dropped_total", reason="cancelled", **TASK) == 1
    assert web.get_value("background_tasks_dropped_total", **TASK) == 1

    worker = queue.start_worker()
    worker_before = Metrics()  # a new worker starts from zero
    web, after = settled(queue, web_before, worker_before, 2)
    sent = queue.web.emails_sent()
    assert [sent.count(email) for email in emails] == [1, 0, 1]
    assert [queue.state(task_id)["state"] for task_id in ids] == ["succeeded", "cancelled", "succeeded"]
    assert web.get_value("background_tasks_dropped_total", reason="cancelled", **TASK) == 1
    assert after.get_value("background_tasks_dropped_total", **TASK) == 0  # counted once, by the web side
    assert after.get_value("background_task_start_delay_seconds_count", **TASK) == 2
    assert books(web, after, 0, 0) == 0  # settled: the broker is empty
    started = queue.cancel(ids[0])
    assert (started.status_code, started.json()) == (409, {"detail": "The task has started: it is succeeded"})

    def skipped() -> list[tuple[str, str]]:
        lines = worker.app_logs()
        return [
            (line["task"], line["route"]) for line in lines if line["message"] == "background task cancelled: not run"
        ]

    # Its skip may come after the other two have run: the worker takes messages on several threads.
    wait_for(skipped, what="the cancelled task's skip")
    assert skipped() == [("send_email", "/send-mail/")]
    # No task span for it: its trace holds the request and the enqueue.
    traces = [trace_id_of(response) for response in responses]
    wait_for(
        lambda: [CONSUMER in {s.kind for s in queue.otlp.trace(t)} for t in traces] == [True, False, True], what="spans"
    )
    time.sleep(0.5)  # a span for the cancelled task would arrive by now
    assert sorted(span.kind for span in queue.otlp.trace(traces[1])) == [SERVER, PRODUCER]


def test_the_task_state_api_answers_every_error_with_a_detail(queue: Queue) -> None:
    queue.default_worker()
    client = queue.web.thread_client()
    known = queue.send("api@example.com").headers["x-task-id"]
    for method in ("GET", "DELETE"):
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
            refused = client.request(method, f"/tasks/{known}", headers=headers)
            assert (refused.status_code, refused.json()) == (401, {"detail": "Missing or invalid bearer token"})
        unknown = uuid.uuid4()
        missing = client.request(method, f"/tasks/{unknown}", headers=AUTH)
        assert (missing.status_code, missing.json()) == (
            404,
            {"detail": f"No task {unknown}: unknown, or its state expired"},
        )
        malformed = client.request(method, "/tasks/not-a-uuid", headers=AUTH)
        assert malformed.status_code == 422
        assert malformed.json()["detail"][0]["loc"] == ["path", "task_id"]
    wait_for(lambda: queue.state(known)["state"] == "succeeded", what="the task to run")
    # Kept TASK_STATE_TTL_SECONDS (a day) from its last change.
    store = redis.Redis.from_url((queue.state_redis or queue.broker).url)
    assert 86_400 - 60 < store.ttl(f"background-tasks:state:{known}") <= 86_400
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths["/tasks/{task_id}"]) == {"get", "delete"}
    assert {"401", "404", "409", "422", "501", "503"} <= set(paths["/tasks/{task_id}"]["delete"]["responses"])
    if queue.state_redis is None:
        return  # the broker's Redis holds the state: the broker-down test covers it
    # Beside RabbitMQ, the state store down: 503s that say so; no task enqueued without its state.
    web_before = queue.web.metrics()
    queue.state_redis.stop()
    try:
        refused = queue.send("no-state@example.com")
        assert (refused.status_code, refused.json()) == (503, {"detail": "The task queue is unavailable; retry later."})
        assert refused.headers["retry-after"] == "2"
        for method in ("GET", "DELETE"):
            down = client.request(method, f"/tasks/{known}", headers=AUTH)
            assert (down.status_code, down.json()) == (
                503,
                {"detail": "The task state store is unavailable; retry later."},
            )
            assert down.headers["retry-after"] == "2"
    finally:
        queue.state_redis.start()
    web = queue.web.metrics().since(web_before)
    assert web.get_value("background_tasks_enqueue_failures_total", **TASK) == 1
    assert web.get_value("background_tasks_scheduled_total", **TASK) == 0
    assert "no-state@example.com" not in queue.web.emails_sent()


def test_queue_wait_is_the_start_delay_and_never_the_response_time(queue: Queue) -> None:
    web_before = queue.web.metrics()
    queue.stop_worker()
    worker_before = Metrics()  # a new worker starts from zero
    emails = [f"wait-{i}@example.com" for i in range(6)]
    began = time.perf_counter()
    for email in emails:  # each answered while no worker runs: no response waits for its task
        assert queue.send(email).status_code == 200
    time.sleep(max(0.0, 2.0 - (time.perf_counter() - began)))
    queue.start_worker()
    _web, worker = settled(queue, web_before, worker_before, len(emails))
    assert worker.get_value("background_task_start_delay_seconds_count", **TASK) == len(emails)
    assert worker.get_value("background_task_start_delay_seconds_bucket", le="1.0", **TASK) == 0
    assert worker.get_value("background_task_start_delay_seconds_sum", **TASK) >= 2.0 * len(emails)


def test_a_broker_that_is_down_gets_503s_counted_and_a_restart_loses_nothing(queue: Queue) -> None:
    web_before, worker_before = queue.web.metrics(), queue.default_worker().metrics()
    queue.broker.stop()
    down = [f"down-{i}@example.com" for i in range(10)]
    refused = []
    for email in down:
        began = time.perf_counter()
        response = queue.send(email)
        # Far above the 1 s budget, so that no load spike reaches it; a publish that waited for the
        # broker to return would.
        assert time.perf_counter() - began < 10.0
        assert response.status_code == 503
        assert response.headers["retry-after"] == "2"
        assert response.json() == {"detail": "The task queue is unavailable; retry later."}
        refused.append(trace_id_of(response))
    # The depth is unknown, not zero: NaN, and each scrape's failed read counted once.
    failures = "background_tasks_queue_depth_read_failures_total"
    first, second = queue.worker.metrics(), queue.worker.metrics()
    for scrape in (first, second):
        assert math.isnan(scrape.get_value("background_tasks_queued"))
        assert math.isnan(scrape.get_value("background_tasks_unacked"))
    assert second.get_value(failures, reason="unreachable") - first.get_value(failures, reason="unreachable") == 1
    assert second.get_value(failures) - first.get_value(failures) == 1
    # Each refused publish's PRODUCER span ends, with status ERROR, in its request's trace. (On
    # Redis the task state store is the broker: its write fails first, and nothing is published.)
    for trace_id in refused if queue.state_redis is not None else []:
        spans = wait_for(lambda t=trace_id: [s for s in queue.otlp.trace(t) if s.kind == PRODUCER], what="the span")
        assert [s.status_code for s in spans] == [2]

    # Traffic goes on while Redis comes back.
    with traffic(queue, "restart", pause=0.02) as statuses:
        time.sleep(0.5)
        queue.broker.start()
        time.sleep(1.5)
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
    # No stack trace but the broker client's own report of the connection the broker closed (pika
    # logs one, at ERROR, when RabbitMQ stops under a publish).
    traced = [line for line in log_lines(queue.web.stderr()) if "exc_info" in line]
    assert [line["logger"] for line in traced if not line["logger"].startswith("pika.")] == []
    waiting, unacked = queue.depth()
    assert (
        books(queue.web.metrics().since(web_before), queue.worker.metrics().since(worker_before), waiting, unacked) == 0
    )


def test_the_depth_on_rabbitmq_without_the_management_api_is_the_ready_count_and_unacked_unknown(
    queue: Queue,
) -> None:
    if queue.broker_name != "rabbitmq":
        pytest.skip("Redis gives both counts")
    queue.stop_worker()
    env = {k: v for k, v in queue.env.items() if k != "BROKER_MANAGEMENT_URL"}
    emails = [f"amqp-depth-{i}@example.com" for i in range(5)]
    for email in emails:
        assert queue.send(email).status_code == 200
    wait_for(lambda: queue.depth() == (len(emails), 0), what="the tasks waiting")  # the management API's
    over_amqp = waiting_and_unacked(env)
    assert over_amqp[0] == len(emails)
    assert math.isnan(over_amqp[1])
    # The worker's /metrics, as a default rabbitmq-server (no plugin) leaves it.
    worker = QueueWorker(queue.workdir / "amqp-depth-worker", {**env, **FAST, "METRICS_TOKEN": WORKER_METRICS_TOKEN})
    worker.start()
    try:
        wait_for(lambda: set(emails) <= set(queue.web.emails_sent()), what="the tasks run")
        wait_for(lambda: queue.depth() == (0, 0), what="the queue empty")
        metrics = worker.metrics()
        assert metrics.get_value("background_tasks_queued") == 0
        assert math.isnan(metrics.get_value("background_tasks_unacked"))
        assert metrics.get_value("background_tasks_queue_depth_read_failures_total") == 0
        assert "no BROKER_MANAGEMENT_URL" in worker.stderr()
    finally:
        assert worker.stop() == 0


def test_rq_jobs_stranded_in_the_intermediate_list_by_a_broker_crash_go_back_at_once(queue: Queue) -> None:
    if queue.library != "rq":
        pytest.skip("RQ's intermediate list")
    intermediate = "rq:queue:default:intermediate"
    client = queue.broker.client()
    queue.default_worker()
    first = queue.send("ran-before@example.com")
    assert first.status_code == 200
    ran = first.headers["x-task-id"]
    wait_for(lambda: "ran-before@example.com" in queue.web.emails_sent(), what="the first job run")
    queue.stop_worker()
    second = queue.send("stranded@example.com")
    assert second.status_code == 200
    # As RQ's dequeue leaves a job when the broker dies before it starts: moved, its execution
    # perhaps recorded by the worker that died, not started.
    assert client.lmove("rq:queue:default", intermediate) is not None
    client.zadd("rq:wip:default", {f"{second.headers['x-task-id']}:dead-worker-execution": time.time() + 600})
    # And the id of a job that ran, left there twice (RQ removes one occurrence as a job starts).
    client.rpush(intermediate, ran)
    worker = queue.start_worker()
    # Given back at a heartbeat (every 5 s at most) once it has sat there 10 s.
    wait_for(lambda: "stranded@example.com" in queue.web.emails_sent(), timeout=60, what="the stranded job run")
    wait_for(lambda: client.llen(intermediate) == 0, what="the intermediate list empty")
    wait_for(lambda: client.zcard("rq:wip:default") == 0, what="no execution left in the started registry")
    metrics = wait_for(
        lambda: (m := worker.metrics()).get_value("background_task_duration_seconds_count", **TASK) == 1 and m,
        what="the run counted",
    )
    assert metrics.get_value("background_task_redeliveries_total", **TASK) == 0
    assert queue.web.emails_sent().count("stranded@example.com") == 1
    assert queue.web.emails_sent().count("ran-before@example.com") == 1
    assert [line["jobs"] for line in worker.app_logs() if line["message"].startswith("jobs stranded")] == [1]


def test_a_message_celery_took_from_redis_as_the_broker_crashed_runs(queue: Queue) -> None:
    """kombu takes a message with BRPOP, then records it as unacknowledged in a second round trip:
    a crash between the two left it nowhere. The worker keeps it and gives it back."""
    if queue.backend != ("celery", "redis"):
        pytest.skip("kombu's acknowledgements emulated on Redis")
    queue.stop_worker()
    logged_before = len(queue.worker.app_logs()) if queue.worker is not None else 0  # its directory's
    with HoldingProxy(queue.broker.port) as proxy:
        worker = queue.start_worker(BROKER_URL=proxy.url)
        try:
            proxy.hold_next_delivery()
            assert queue.send("crashed@example.com").status_code == 200
            assert proxy.holding.wait(timeout=30), "the message taken"
            queue.broker.crash()
            proxy.release()  # the worker holds the message, and Redis is gone for its next command
            time.sleep(2.0)
            queue.broker.start()
            wait_for(lambda: "crashed@example.com" in queue.web.emails_sent(), timeout=60, what="the task run")
            metrics = wait_for(
                lambda: (m := worker.metrics()).get_value("background_task_duration_seconds_count", **TASK) == 1 and m,
                what="the run counted",
            )
        finally:
            queue.stop_worker()
    assert metrics.get_value("background_task_failures_total", **TASK) == 0
    assert metrics.get_value("background_task_redeliveries_total", **TASK) == 1  # given back, as a crash's are
    assert queue.web.emails_sent().count("crashed@example.com") == 1
    assert queue.depth() == (0, 0)
    logged = worker.app_logs()[logged_before:]
    assert [line["messages"] for line in logged if line["message"].startswith("messages ")] == [1]


def _sentry_events(queue: Queue, exception: str) -> list[dict[str, Any]]:
    """The task's Sentry events for ``exception``: the last of an event's chain, the one raised."""
    return [
        event
        for event in queue.sentry.events_tagged("background_task", "send_email")
        if event["exception"]["values"][-1]["type"] == exception
    ]


def _running_child(worker: QueueWorker, library: str) -> int:
    """The process running the task: the one whose in-progress gauge is 1, read from its own
    metric file, or on RQ its child the work horse (its pool worker counts the task in progress
    for it), which RQ makes a process group's leader (the other child, RQ's scheduler, is not)."""
    for path in worker.multiproc_dir.glob("gauge_livesum_*.db"):
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            if '"background_tasks_in_progress"' in key and value == 1:
                pid = int(path.stem.rsplit("_", 1)[1])
                if library != "rq":
                    return pid
                return next((child for child in children(pid) if _process_group(child) == child), 0)
    return 0


def _process_group(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except FileNotFoundError:  # exited since it was listed
        return 0


def test_a_process_killed_mid_task_runs_it_again_or_fails_it_and_says_which(queue: Queue) -> None:
    """Celery and Dramatiq run it again, counted as a redelivery; RQ moves it to its failed
    registry: a failure, with its own exception label and one Sentry event."""
    queue.stop_worker()
    worker = queue.start_worker(EMAIL_SEND_SECONDS="2")
    try:
        web_before, worker_before = queue.web.metrics(), worker.metrics()
        assert queue.send("killed@example.com").status_code == 200
        pid = wait_for(lambda: _running_child(worker, queue.library), what="the task to start")
        os.kill(pid, signal.SIGKILL)
        _web, after = settled(queue, web_before, worker_before, 1)
        if queue.library == "rq":
            assert after.get_value("background_task_redeliveries_total", **TASK) == 0
            assert after.get_value("background_task_failures_total", **TASK) == 1
            assert after.get_value("background_task_failures_total", exception="WorkerProcessLost", **TASK) == 1
            assert queue.web.emails_sent().count("killed@example.com") == 0
            lost = wait_for(lambda: _sentry_events(queue, "WorkerProcessLost"), what="the Sentry event")
            time.sleep(0.5)  # a second report would arrive by now
            assert len(lost) == len(_sentry_events(queue, "WorkerProcessLost")) == 1
            assert lost[0]["tags"]["route"] == "/send-mail/"
            assert lost[0]["tags"]["attempts"] == "1"  # its first attempt, and its last: not retried
        else:
            assert after.get_value("background_task_redeliveries_total", **TASK) == 1
            assert after.get_value("background_task_duration_seconds_count", outcome="success", **TASK) == 1
            assert queue.web.emails_sent().count("killed@example.com") == 1
        wait_for(lambda: worker.metrics().get_value("server_worker_processes") == 2, what="a replacement child")
        assert worker.metrics().get_value("background_tasks_in_progress") == 0  # the dead child's 1 is gone
        assert books(queue.web.metrics().since(web_before), worker.metrics().since(worker_before), 0, 0) == 0
    finally:
        queue.stop_worker()


def test_an_rq_work_horse_whose_pool_worker_is_killed_is_counted_once(queue: Queue) -> None:
    """A work horse hands its spans and metrics to its pool worker as it exits (job_relay.py): one
    whose pool worker was killed meanwhile runs on, and writes them itself."""
    if queue.library != "rq":
        pytest.skip("a process forked for each task is RQ's")
    queue.stop_worker()
    worker = queue.start_worker(EMAIL_SEND_SECONDS="2")
    try:
        web_before, worker_before = queue.web.metrics(), worker.metrics()
        assert queue.send("orphan@example.com").status_code == 200
        horse = wait_for(lambda: _running_child(worker, queue.library), what="the task to start")
        os.kill(int(Path(f"/proc/{horse}/stat").read_text().rsplit(")", 1)[1].split()[1]), signal.SIGKILL)
        _web, after = settled(queue, web_before, worker_before, 1)
        assert after.get_value("background_task_duration_seconds_count", outcome="success", **TASK) == 1
        assert after.get_value("background_task_failures_total", **TASK) == 0
        assert queue.web.emails_sent().count("orphan@example.com") == 1
        wait_for(lambda: worker.metrics().get_value("server_worker_processes") == 2, what="a replacement worker")
        assert worker.metrics().get_value("background_tasks_in_progress") == 0  # the killed one's 1 is gone
        assert books(queue.web.metrics().since(web_before), worker.metrics().since(worker_before), 0, 0) == 0
    finally:
        queue.stop_worker()


def test_a_revoked_queued_task_is_counted_as_dropped_with_its_task_and_route(queue: Queue) -> None:
    if queue.library != "celery":
        pytest.skip("revoking a queued task is Celery's")
    queue.stop_worker()  # no worker: the three wait in the broker
    web_before = queue.web.metrics()
    for i in range(3):
        assert queue.send(f"revoke-{i}@example.com").status_code == 200
    from app.queues.celery.client import create_celery  # noqa: PLC0415 - Celery's test, where Celery is

    control = create_celery(Settings(broker_url=queue.broker.url), {}, producer=True)
    with control.connection_for_read() as connection:
        channel = connection.default_channel
        # Held by this channel, unacknowledged, while a worker starts and runs the other two; then
        # revoked, and put back only once the worker has replied that it flagged it.
        held = wait_for(lambda: channel.basic_get("celery", no_ack=False), what="a waiting message")
        worker = queue.start_worker()
        worker_before = Metrics()  # a new worker starts from zero
        # On Redis, Celery's remote control is pub/sub: a revoke sent before the worker listens is
        # lost. A ping it answers says it listens.
        wait_for(lambda: control.control.ping(timeout=0.5), what="the worker's remote control")
        try:
            replies = control.control.revoke(held.headers["id"], reply=True, timeout=10)
            assert len(replies) == 1, replies
        finally:
            channel.basic_reject(held.delivery_tag, requeue=True)
    try:
        settled(queue, web_before, worker_before, 2)
        # Celery acknowledges a revoked message, then signals it: the count follows a moment later.
        wait_for(
            lambda: worker.metrics().since(worker_before).get_value("background_tasks_dropped_total", **TASK) == 1,
            what="the drop",
        )
        after = worker.metrics().since(worker_before)
        assert after.get_value("background_tasks_dropped_total", reason="revoked", **TASK) == 1
        assert after.get_value("background_task_duration_seconds_count", outcome="success", **TASK) == 2
        assert books(queue.web.metrics().since(web_before), worker.metrics().since(worker_before), 0, 0) == 0
        assert held.headers["argsrepr"] == held.headers["kwargsrepr"] == ""  # no arguments in the headers
        revoked = json.loads(held.body)[0][0]  # the body: args, kwargs, Celery's embed
        assert revoked.startswith("revoke-")
        assert revoked not in queue.web.emails_sent()
    finally:
        queue.stop_worker()


@pytest.mark.parametrize(("task_seconds", "shutdown_seconds", "requeued"), [(1, 5, False), (4, 1, True)])
def test_sigterm_finishes_running_tasks_within_the_deadline_or_requeues_them(
    queue: Queue, task_seconds: int, shutdown_seconds: int, requeued: bool
) -> None:
    queue.stop_worker()
    worker = queue.start_worker(EMAIL_SEND_SECONDS=str(task_seconds), WORKER_SHUTDOWN_SECONDS=str(shutdown_seconds))
    email = f"sigterm-{task_seconds}@example.com"
    assert queue.send(email).status_code == 200
    wait_for(lambda: _running_child(worker, queue.library), what="the task to start")
    assert worker.process is not None
    printed_before = len(worker.stderr())  # the worker's directory keeps earlier workers' lines
    # A stop signal that comes twice (a group kill and a parent's, a supervisor that repeats)
    # still gives the running task its deadline: every library takes a second one as "stop now".
    worker.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    # Status 0 is a stop that ended by itself: one that outlives its deadline is SIGKILLed by the
    # entry point, which logs it and exits with the kill's status. No wall-clock bound here: a busy
    # machine stretches a shutdown without any defect in it.
    status = worker.stop(timeout=shutdown_seconds + WORKER_STOP_GRACE_SECONDS + 15)
    assert status == 0, worker.stderr()[printed_before:][-4000:]  # what the stop did, if it did not end
    assert "outlived its shutdown deadline" not in worker.stderr()[printed_before:]
    # Back in the queue; on Dramatiq's Redis broker, held for the dead worker until its heartbeats
    # have stopped for the visibility timeout, then given back.
    back = (0, 1) if queue.backend == ("dramatiq", "redis") else (1, 0)
    wait_for(lambda: queue.depth() == (back if requeued else (0, 0)), what="the message requeued, or acknowledged")
    assert queue.web.emails_sent().count(email) == (0 if requeued else 1)
    worker = queue.start_worker()
    wait_for(lambda: queue.web.emails_sent().count(email) == 1, timeout=60, what="the task to have run once")
    if requeued:
        assert worker.metrics().get_value("background_task_redeliveries_total", **TASK) == 1


def test_a_task_past_the_time_limit_fails_once_as_time_limit_exceeded(queue: Queue) -> None:
    queue.stop_worker()
    worker = queue.start_worker(EMAIL_SEND_SECONDS="3", TASK_TIME_LIMIT_SECONDS="1")
    try:
        web_before, worker_before = queue.web.metrics(), worker.metrics()

        def limited() -> list[dict[str, Any]]:
            return _sentry_events(queue, "TimeLimitExceeded")

        assert limited() == []
        assert queue.send("too-slow@example.com").status_code == 200
        _web, after = settled(queue, web_before, worker_before, 1)
        assert after.get_value("background_task_failures_total", **TASK) == 1
        assert after.get_value("background_task_failures_total", exception="TimeLimitExceeded", **TASK) == 1
        assert after.get_value("background_task_redeliveries_total", **TASK) == 0
        wait_for(limited, what="the Sentry event")
        time.sleep(0.5)  # a second report would arrive by now
        (event,) = limited()
        assert event["tags"]["route"] == "/send-mail/"
        assert "too-slow@example.com" not in queue.web.emails_sent()
    finally:
        queue.stop_worker()


def test_one_then_three_workers_under_traffic_run_each_task_once_and_count_it_once(queue: Queue) -> None:
    """As separate pods would be: each worker a `make worker` of its own, with its own metrics port
    and directory. One runs; two more join under traffic; then one is stopped with SIGTERM."""
    first = queue.default_worker()
    web_before, first_before = queue.web.metrics(), first.metrics()
    env = {**queue.env, **FAST, "METRICS_TOKEN": WORKER_METRICS_TOKEN}
    joining = [QueueWorker(queue.workdir / f"worker-{n}", env) for n in (2, 3)]
    try:
        with traffic(queue, "scaled", pause=0.05) as statuses:
            wait_for(lambda: len(statuses) >= 20, what="traffic on one worker")
            start_together(joining)
            wait_for(lambda: all(_ran(w) for w in joining), what="the workers that joined running tasks")
            assert joining[0].stop() == 0  # scaled down, under traffic
            time.sleep(1.0)
        assert set(statuses.values()) == {200}
        wait_for(lambda: set(statuses) <= set(queue.web.emails_sent()), timeout=60, what="every task run")
        wait_for(lambda: queue.depth() == (0, 0), what="the broker empty")
        sent = collections.Counter(e for e in queue.web.emails_sent() if e.startswith("scaled-"))

        def totals() -> tuple[float, float] | None:
            # The stopped worker's from the files it left: what a scrape after its last task says.
            counts = [first.metrics().since(first_before), joining[0].metrics_left(), joining[1].metrics()]
            runs = sum(m.get_value("background_task_duration_seconds_count", outcome="success", **TASK) for m in counts)
            again = sum(m.get_value("background_task_redeliveries_total", **TASK) for m in counts)
            return (runs, again) if runs == sum(sent.values()) else None

        runs, redelivered = wait_for(totals, what="every run counted once, by the worker that ran it")
        twice = sum(n - 1 for n in sent.values())
        assert twice <= redelivered  # a task run twice is a counted redelivery
        scheduled = queue.web.metrics().since(web_before).get_value("background_tasks_scheduled_total", **TASK)
        assert scheduled == len(statuses) == runs - twice
        # Every instance reports the one broker's depth, the same.
        assert {w.metrics().get_value("background_tasks_queued") for w in (first, joining[1])} == {0}
        # Every panel, alert and the trigger answer on the three workers' series as on one worker's
        # (on this test's counts: earlier tests' workers are gone, their counts with them).
        web = queue.web.metrics().counted_since(web_before)
        workers = [first.metrics().counted_since(first_before), joining[0].metrics_left(), joining[1].metrics()]
        one, each = answers_on_one_worker_and_on_each(queue.workdir / "queries", web, workers)
        assert each == one
        assert one["background_tasks_lost:sum"] == {"{}": f"{-twice:.9g}"}  # balanced: a second run is one more
        assert one["KEDA trigger"] == {"{}": "0"}
    finally:
        for worker in joining:
            worker.stop()


def test_a_worker_imports_no_web_framework(queue: Queue) -> None:
    """Every process of a worker of each library, from its start through a task's run, imports
    neither FastAPI nor Starlette: Python lists each import of each process it starts under
    PYTHONPROFILEIMPORTTIME. (anyio does come in, with sentry-sdk, whose transport module checks
    whether it is there; the template's own modules import it on the web side only, as
    tests/test_layout.py checks.)"""
    if queue.broker_name != "redis":
        pytest.skip("the imports are the library's, whatever the broker")
    env = {**queue.env, **FAST, "METRICS_TOKEN": WORKER_METRICS_TOKEN, "PYTHONPROFILEIMPORTTIME": "1"}
    worker = QueueWorker(queue.workdir / "worker-imports", env).start()
    try:
        assert queue.send("imports@example.com").status_code == 200
        wait_for(lambda: "imports@example.com" in queue.web.emails_sent(), what="the task run")
    finally:
        assert worker.stop() == 0
    # Lines of a process's own, or relayed by the entry point in the message of a JSON record.
    lines = [
        part
        for line in worker.stderr().splitlines()
        for part in (json.loads(line)["message"] if line.startswith("{") else line).splitlines()
    ]
    imported = {match.group(1).split(".")[0] for line in lines if (match := IMPORT_TIME.match(line))}
    assert {"app", queue.library} <= imported  # the listing is there
    assert not imported & {"fastapi", "starlette"}


def _ran(worker: QueueWorker) -> bool:
    return worker.metrics().get_value("background_task_duration_seconds_count", **TASK) > 0


def test_broker_crashes_under_traffic_lose_nothing_count_everything_and_print_only_json(queue: Queue) -> None:
    """The broker is SIGKILLed under traffic and restarted from its own data (Redis's append-only
    file, RabbitMQ's durable queues), CRASHES times: every 200 is sent, every 503 counted, every
    second run counted as a redelivery; then a stop with the broker gone ends within its deadline.
    A crash makes libraries print past our logging (RQ's pool and scheduler processes die with raw
    tracebacks): the entry point relays each as one JSON record, its traceback in exc_info.
    Last in the module: what the crash leaves in the broker is no later test's business."""
    queue.stop_worker()
    printed_before = len(queue.worker.stderr()) if queue.worker is not None else 0
    shutdown = 5.0
    # Short tasks, and traffic that the slowest library (RQ forks a process per job) keeps up with:
    # a backlog would only make the wait for the last email longer.
    worker = queue.start_worker(EMAIL_SEND_SECONDS="0.1", WORKER_SHUTDOWN_SECONDS=str(shutdown))
    web_before, worker_before = queue.web.metrics(), worker.metrics()
    with traffic(queue, "crash", pause=0.2, clients=CRASH_CLIENTS) as statuses:
        for _ in range(CRASHES):
            wait_for(lambda: sum(s == 200 for s in statuses.values()) > len(statuses) // 2, what="traffic accepted")
            time.sleep(1.0)
            queue.broker.crash()
            time.sleep(3.0)
            queue.broker.start()
        time.sleep(1.0)

    accepted = {email for email, status in statuses.items() if status == 200}
    assert set(statuses.values()) == {200, 503}
    web_change = queue.web.wait_for_metrics(
        lambda m: (
            m.get_value("background_tasks_enqueue_failures_total", **TASK)
            == sum(status == 503 for status in statuses.values())
        ),
        "every 503 counted",
        since=web_before,
    )
    assert web_change.get_value("background_tasks_scheduled_total", **TASK) == len(accepted)

    def sent() -> collections.Counter[str]:
        return collections.Counter(e for e in queue.web.emails_sent() if e.startswith("crash-"))

    # RQ's retries of runs the crash cut wait for its scheduler, which the crash killed too (its
    # lock expires after 61 s), and its stranded jobs for a heartbeat: longer on a busy machine.
    try:
        wait_for(lambda: accepted <= set(sent()), timeout=180, what="every accepted email sent")
    except AssertionError as lost:
        raise AssertionError(f"{lost}: not sent {sorted(accepted - set(sent()))}, broker {queue.depth()}") from None

    def counted() -> Metrics | None:
        change = worker.metrics().since(worker_before)
        runs = change.get_value("background_task_duration_seconds_count", outcome="success", **TASK)
        return change if runs == sum(sent().values()) and queue.depth() == (0, 0) else None

    # RQ's retries of runs that the crash cut wait for its scheduler, which the crash killed: its
    # lock expires after 61 s, and the next heartbeat (every 5 s) starts it again.
    worker_change: Metrics = wait_for(counted, timeout=120, what="every run counted, the broker empty")
    counts = sent()
    assert set(counts) <= set(statuses)  # nothing sent that was not asked for
    # A publish cut by the crash may have reached the broker while its client got a 503: that task
    # runs (the client was told to retry, so make tasks idempotent), unscheduled.
    refused_but_sent = set(counts) - accepted
    assert all(statuses[email] == 503 for email in refused_but_sent)
    twice = sum(n - 1 for n in counts.values())
    # Each email sent twice is a message that came back after a crash: a counted redelivery, or a
    # run whose start the task state store could not record (it is the broker that crashed), which
    # is counted too: a failed state write.
    seen_twice = worker_change.get_value("background_task_redeliveries_total", **TASK)
    assert twice <= seen_twice + worker_change.get_value("background_task_telemetry_errors_total", part="state")
    assert worker_change.get_value("background_task_duration_seconds_count", outcome="failure", **TASK) == 0
    # The books: scheduled - finished - dropped = - (runs never scheduled, and second runs).
    assert books(web_change, worker_change, 0, 0) == -(twice + len(refused_but_sent))
    restarts = worker.stderr()[printed_before:].count("the queue worker died: starting it again")
    assert worker_change.get_value("background_task_worker_restarts_total") == restarts

    # A stop with the broker gone ends within the worker's deadline, every process with it.
    assert worker.process is not None
    pids = {worker.process.pid, worker.library_pid(), *worker.child_pids()}
    queue.broker.crash()
    began = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    worker.process.wait(timeout=shutdown + WORKER_STOP_GRACE_SECONDS + 10)
    assert time.monotonic() - began < shutdown + WORKER_STOP_GRACE_SECONDS + 5
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), timeout=5, what="every process gone")
    queue.broker.start()

    lines = log_lines(worker.stderr()[printed_before:])  # each one a JSON object, or it fails here
    relayed = [line for line in lines if line["logger"] == "worker.output"]
    assert not [line for line in relayed if "Traceback (most recent call last)" in line["message"]]
    tracebacks = [line for line in relayed if "exc_info" in line]
    assert all(line["exc_info"].startswith("Traceback (most recent call last):") for line in tracebacks), relayed
    if queue.library == "rq":
        # Its pool's and scheduler's processes die on the crash, printing past logging.
        assert any(line["message"].startswith("Process ") for line in tracebacks), relayed
