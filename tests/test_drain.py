"""Stopping and recycling workers loses nothing uncounted (gunicorn signals, max_requests)."""

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from harness import Gunicorn, wait_for

DRAIN_SECONDS = 4
MESSAGES = 2000


def test_sigterm_finishes_running_tasks_and_counts_the_one_past_the_deadline(tmp_path: Path) -> None:
    server = Gunicorn(
        tmp_path, env={"DRAIN_SECONDS": str(DRAIN_SECONDS), "EMAIL_SEND_SECONDS": "2"}, app="tests.user_app:create()"
    ).start()
    try:
        with server.client() as client:
            for i in range(5):
                assert client.post("/send-mail/", params={"email": f"drain{i}@example.com"}).status_code == 200
            assert client.post("/reports/", params={"seconds": 60}).status_code == 200
        server.wait_for_metrics(lambda m: m.get_value("background_tasks_in_progress") == 6, "all six tasks to run")
        assert server.process is not None
        stopping = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.wait_exit(timeout=60) == 0
        took = time.monotonic() - stopping
    finally:
        server.stop()

    assert took >= DRAIN_SECONDS, "the running tasks were given the drain"
    # Given up at the deadline, not killed later: gunicorn logs each SIGKILL past graceful_timeout.
    # (No upper bound on the time: a busy machine stretches a shutdown without any defect in it.)
    assert "SIGKILL" not in server.stderr()
    assert sorted(server.log_file_lines()) == [f"Sent email to drain{i}@example.com: Welcome!" for i in range(5)]
    metrics = server.metrics_left_behind()
    assert metrics.get_value("background_task_duration_seconds_count", task="send_email", outcome="success") == 5
    assert metrics.get_value("background_tasks_dropped_total", task="build_report", reason="shutdown") == 1
    assert metrics.get_value("background_tasks_dropped_total") == 1
    assert metrics.get_value("background_tasks_scheduled_total") == 6
    dropped = [line for line in server.app_logs() if line["message"] == "background task dropped"]
    assert [(line["task"], line["reason"]) for line in dropped] == [("build_report", "shutdown")]


def test_hup_and_max_requests_recycle_workers_without_losing_a_message(tmp_path: Path) -> None:
    server = Gunicorn(tmp_path, env={}, options=("--max-requests", "150"))
    statuses: dict[int, int | str] = {}

    def post(i: int) -> None:
        if i in (MESSAGES // 3, 2 * MESSAGES // 3):
            assert server.process is not None
            server.process.send_signal(signal.SIGHUP)
        # A connection per request: a kept-alive one that a recycled worker closes at the moment a
        # request goes out on it loses that request before any worker reads it (the client's race,
        # which a busy machine widens); a new one reaches a live worker through the shared socket.
        try:
            response = server.thread_client().post(
                "/log/", params={"msg": f"drain {i}"}, headers={"Connection": "close"}
            )
            statuses[i] = response.status_code
        except httpx.TransportError as error:
            statuses[i] = repr(error)

    server.start()
    try:
        first_workers = server.worker_pids()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(post, range(MESSAGES)))
        assert set(statuses.values()) == {200}
        wait_for(lambda: len(server.log_file_lines()) >= MESSAGES, what="every message to be logged")
        metrics = server.wait_for_metrics(
            lambda m: m.get_value("http_request_lifetime_seconds_count", route="/log/") == MESSAGES,
            "every request's lifetime",
        )
        assert not server.worker_pids() & first_workers
    finally:
        server.stop()

    lines = server.log_file_lines()
    assert len(lines) == MESSAGES
    assert set(lines) == {f"drain {i}" for i in range(MESSAGES)}
    assert metrics.get_value("background_tasks_scheduled_total", route="/log/") == MESSAGES
    assert metrics.get_value("background_task_duration_seconds_count", outcome="success") == MESSAGES
    assert metrics.get_value("background_tasks_dropped_total") == 0
    assert server.stderr().count("Handling signal: hup") == 2
    assert server.stderr().count("Maximum request limit of 150 exceeded") >= 5
