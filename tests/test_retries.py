"""Retries in the web worker (no broker): each attempt observed, a retry told apart from a failure,
a retry still waiting at the drain deadline dropped and counted; and the task state API, which
in-process tasks do not have."""

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from app.retry_policy import RetryPolicy
from app.tasks import EmailDeliveryError
from harness import TOKEN, Gunicorn, OtlpReceiver, SentryIngest, Stack, trace_id_of, wait_for

TASK = {"task": "send_email", "route": "/send-mail/"}
RETRYING = {
    "EMAIL_SEND_SECONDS": "0.02",
    "EMAIL_FAILURE_RATE": "0.5",
    "EMAIL_MAX_ATTEMPTS": "4",
    "EMAIL_RETRY_BACKOFF_SECONDS": "0.1",
    "LOG_LEVEL": "DEBUG",  # a line per attempt, successes included
}


def test_a_policy_retries_its_exceptions_while_attempts_remain_after_a_capped_jittered_backoff() -> None:
    policy = RetryPolicy(
        max_attempts=3, first_backoff_seconds=1.0, retry_on=(EmailDeliveryError,), max_backoff_seconds=3
    )
    assert [policy.retries(attempt, EmailDeliveryError()) for attempt in (1, 2, 3)] == [True, True, False]
    assert not policy.retries(1, TimeoutError())  # not one of its exceptions
    assert not RetryPolicy(max_attempts=1, first_backoff_seconds=1.0, retry_on=(EmailDeliveryError,)).retries(
        1, EmailDeliveryError()
    )
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 3.0), (10, 3.0)]:  # doubled, then capped
        waits = [policy.backoff(attempt) for _ in range(200)]
        assert ceiling / 2 <= min(waits) < max(waits) <= ceiling
        assert max(waits) - min(waits) > ceiling / 4  # jittered, not one value


def test_in_process_retries_are_counted_apart_from_failures(tmp_path: Path) -> None:
    sentry, otlp = SentryIngest(), OtlpReceiver()
    env = {**RETRYING, "SENTRY_DSN": sentry.dsn, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint}
    env["OTEL_BSP_SCHEDULE_DELAY"] = "100"
    server = Gunicorn(tmp_path, env=env).start()
    try:
        emails = [f"retry-{i}@example.com" for i in range(40)]

        def send(email: str) -> str:
            response = server.thread_client().post("/send-mail/", params={"email": email})
            assert response.status_code == 200
            assert "x-task-id" not in response.headers  # an in-process task has no id
            return trace_id_of(response)

        with ThreadPoolExecutor(max_workers=8) as pool:
            traces = list(pool.map(send, emails))
        metrics = server.wait_for_metrics(
            lambda m: (
                m.get_value("background_tasks_pending") == 0
                and m.get_value("background_task_duration_seconds_count", outcome="success", **TASK)
                + m.get_value("background_task_duration_seconds_count", outcome="failure", **TASK)
                == len(emails)
            ),
            "every task to succeed or fail for good",
        )
        # Each task's last attempt, from its log line: the number of attempts it took.
        last = [
            line
            for line in server.app_logs()
            if line.get("message") in ("background task success", "background task failure")
        ]
        assert len(last) == len(emails)
        failed = [line for line in last if line["outcome"] == "failure"]
        retried = sum(line["attempt"] - 1 for line in last)
        assert retried > 0
        assert metrics.get_value("background_task_retries_total", exception="EmailDeliveryError", **TASK) == retried
        assert metrics.get_value("background_task_duration_seconds_count", outcome="retry", **TASK) == retried
        assert metrics.get_value("background_task_failures_total", **TASK) == len(failed)
        assert all(line["attempt"] == 4 for line in failed)
        assert metrics.get_value("background_task_start_delay_seconds_count", **TASK) == len(emails)
        assert metrics.get_value("background_tasks_dropped_total") == 0
        assert metrics.get_value("background_tasks_scheduled_total", **TASK) == len(emails)
        sent = server.emails_sent()
        assert len(sent) == len(set(sent)) == len(emails) - len(failed)  # each sent once, or failed
        retry_lines = [line for line in server.app_logs() if line.get("message") == "background task retry"]
        assert len(retry_lines) == retried
        assert {line["exception"] for line in retry_lines} == {"EmailDeliveryError"}

        wait_for(lambda: len(sentry.events_tagged("background_task", "send_email")) == len(failed), what="events")
        time.sleep(0.5)  # one more would arrive by now
        events = sentry.events_tagged("background_task", "send_email")
        assert len(events) == len(failed)
        assert all(event["tags"]["attempts"] == "4" for event in events)

        # The trace of a task that took most attempts: one span per attempt, under the request's.
        def attempt_spans(trace_id: str) -> list[int]:
            return sorted(
                span.attributes["background_task.attempt"]
                for span in otlp.trace(trace_id)
                if span.name == "BackgroundTask send_email"
            )

        most = max(line["attempt"] for line in last)
        wait_for(lambda: any(len(attempt_spans(t)) == most for t in traces), what="a retried task's spans")
        (trace_id, *_) = [t for t in traces if len(attempt_spans(t)) == most]
        assert attempt_spans(trace_id) == list(range(1, most + 1))
        (request,) = [span for span in otlp.trace(trace_id) if span.name == "POST /send-mail/"]
        attempts = [span for span in otlp.trace(trace_id) if span.name == "BackgroundTask send_email"]
        assert {span.parent_span_id for span in attempts} == {request.span_id}
    finally:
        server.stop()
        sentry.server.stop()
        otlp.server.stop()


def test_a_retry_waiting_at_the_drain_deadline_is_dropped_and_counted(tmp_path: Path) -> None:
    env = {**RETRYING, "EMAIL_FAILURE_RATE": "1", "EMAIL_RETRY_BACKOFF_SECONDS": "120", "DRAIN_SECONDS": "1"}
    server = Gunicorn(tmp_path, env=env).start()
    try:
        assert server.thread_client().post("/send-mail/", params={"email": "later@example.com"}).status_code == 200
        server.wait_for_metrics(
            lambda m: m.get_value("background_task_retries_total", **TASK) == 1, "the first attempt to fail"
        )
        assert server.process is not None
        stopping = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.wait_exit(timeout=60) == 0
        assert time.monotonic() - stopping < 60  # the 60 to 120 s backoff was not waited for
    finally:
        server.stop()
    metrics = server.metrics_left_behind()
    assert metrics.get_value("background_tasks_dropped_total", reason="shutdown", **TASK) == 1
    assert metrics.get_value("background_tasks_dropped_total") == 1
    assert metrics.get_value("background_task_retries_total", **TASK) == 1
    assert metrics.get_value("background_task_failures_total") == 0
    assert metrics.get_value("background_tasks_scheduled_total", **TASK) == 1
    assert metrics.get_value("background_tasks_pending") == 0
    assert server.emails_sent() == []


def test_in_process_tasks_have_no_state_to_ask_about(stack: Stack) -> None:
    client = stack.server.thread_client()
    task_id = "6f1c1d2e-0000-4000-8000-000000000000"
    for method in ("GET", "DELETE"):
        off = client.request(method, f"/tasks/{task_id}", headers={"Authorization": f"Bearer {TOKEN}"})
        assert off.status_code == 501
        assert off.json() == {
            "detail": "Task state tracking is off: tasks run in process (no BROKER_URL), or TASK_STATE_URL is not set"
        }
        refused = client.request(method, f"/tasks/{task_id}")
        assert (refused.status_code, refused.json()) == (401, {"detail": "Missing or invalid bearer token"})
