"""Exporters that refuse, hang or crawl, and floods of failures: requests stay fast, and the loss shows."""

import socket
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import pytest

from harness import Gunicorn, OtlpReceiver, SentryIngest, free_port, started

REQUESTS = 200
SPANS = 2 * 2 * REQUESTS  # a server span and a task span per request, over the warm-up and the run
EVENTS = 2 * REQUESTS
PER_KIND = 500
KINDS = 4
FAILURES = KINDS * PER_KIND
SLOW_SENTRY_SECONDS = 5


def _median_of_failing_sends(server: Gunicorn) -> float:
    """Each request schedules a task that fails: two spans and one Sentry event per request."""
    timings = []
    with server.client() as client:
        for i in range(REQUESTS):
            began = time.perf_counter()
            response = client.post("/send-mail/", params={"email": f"loss{i}@example.com"})
            timings.append(time.perf_counter() - began)
            assert response.status_code == 200  # no client sees an exporter's trouble
    return statistics.median(timings)


class _Hanging:
    """A port that accepts connections (the kernel completes them) and never answers."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(1024)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"


class _SlowSentry(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                time.sleep(SLOW_SENTRY_SECONDS)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        Thread(target=self.serve_forever, daemon=True).start()
        self.dsn = f"http://key@127.0.0.1:{self.server_address[1]}/1"

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the SDK gave up on a 5 s answer and closed the connection: expected here


@pytest.fixture(scope="module")
def healthy() -> Iterator[tuple[str, str]]:
    otlp, sentry = OtlpReceiver(), SentryIngest()
    yield otlp.endpoint, sentry.dsn
    otlp.server.stop()
    sentry.server.stop()


def _env(otlp: str, sentry: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp,
        "SENTRY_DSN": sentry,
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "EMAIL_SEND_SECONDS": "0",
        "EMAIL_FAILURE_RATE": "1",
        "EMAIL_MAX_ATTEMPTS": "1",
        "DRAIN_SECONDS": "1",
    }


@pytest.mark.parametrize("case", ["otlp refuses", "otlp hangs", "sentry refuses", "sentry takes 5 s"])
def test_a_broken_exporter_slows_no_request_and_its_loss_is_counted(
    tmp_path: Path, healthy: tuple[str, str], case: str
) -> None:
    otlp, sentry = healthy
    hanging, slow = _Hanging(), None
    if case == "otlp refuses":
        otlp = f"http://127.0.0.1:{free_port()}"
    elif case == "otlp hangs":
        otlp = hanging.url
    elif case == "sentry refuses":
        sentry = f"http://key@127.0.0.1:{free_port()}/1"
    else:
        slow = _SlowSentry()
        sentry = slow.dsn
    try:
        for server in started(Gunicorn(tmp_path, env=_env(otlp, sentry))):
            _median_of_failing_sends(server)  # warm-up: its spans and events are counted below too
            median = _median_of_failing_sends(server)
            server.wait_for_metrics(lambda m: m.get_value("background_task_failures_total") == EVENTS, "every task")
            if case.startswith("otlp"):
                metrics = server.wait_for_metrics(
                    lambda m: (
                        m.get_value("otel_spans_exported_total", result="failure")
                        + m.get_value("otel_spans_dropped_total")
                        == SPANS
                    ),
                    "every span to be counted",
                )
                assert metrics.get_value("otel_spans_exported_total", result="success") == 0
            elif case == "sentry refuses":
                # The spans too: the last batch may still be on its way to the receiver.
                metrics = server.wait_for_metrics(
                    lambda m: (
                        m.get_value("sentry_events_lost_total") == EVENTS
                        and m.get_value("otel_spans_exported_total", result="success") == SPANS
                    ),
                    "the events lost and every span exported",
                )
                assert metrics.get_value("sentry_events_lost_total", reason="network_error") > 0  # the rest overflowed
            else:
                # One event in flight, the SDK's queue of 100 waiting: the rest overflow, counted.
                metrics = server.wait_for_metrics(lambda m: m.get_value("sentry_events_lost_total") > 0, "a lost event")
                assert 0 < metrics.get_value("sentry_events_lost_total", reason="queue_overflow") < EVENTS
            assert metrics.get_value("background_task_failures_total") == EVENTS
    finally:
        hanging.socket.close()
        if slow is not None:
            slow.shutdown()
            slow.server_close()
    print(f"{case}: median {median * 1000:.1f} ms")
    # An exporter in the request path would add its 1 s timeout, or Sentry's 5 s, to every request;
    # a healthy request takes milliseconds. Half a second, far from both, is a bound that no load
    # spike reaches (a median needs most requests slow). The speed is the bench's.
    assert median < 0.5


def test_a_flood_of_failures_is_counted_exactly_and_every_kind_reaches_sentry(tmp_path: Path) -> None:
    sentry = SentryIngest()
    env = {"SENTRY_DSN": sentry.dsn, "EMAIL_SEND_SECONDS": "0", "EMAIL_FAILURE_RATE": "1", "EMAIL_MAX_ATTEMPTS": "1"}
    kinds = {
        ("send_email", "EmailDeliveryError"): ("/send-mail/", {"email": "flood@example.com"}),
        ("charge_card", "PaymentDeclinedError"): ("/orders/", {"email": "flood@example.com", "order_id": "f"}),
        ("reserve_stock", "WarehouseOfflineError"): ("/reservations/", {"order_id": "f"}),
        ("import_rows", "ValueError"): ("/imports/", {"count": "-1"}),
    }
    try:
        for server in started(Gunicorn(tmp_path, env=env, app="tests.user_app:create()")):
            workers = server.worker_pids()

            def send(kind: tuple[str, str]) -> list[int]:
                path, params = kinds[kind]
                with server.client() as client:  # noqa: B023
                    return [client.post(path, params=params).status_code for _ in range(PER_KIND)]

            began = time.monotonic()
            with ThreadPoolExecutor(len(kinds)) as pool:
                statuses = [status for batch in pool.map(send, kinds) for status in batch]
            took = time.monotonic() - began
            metrics = server.wait_for_metrics(
                lambda m: m.get_value("background_task_failures_total") == FAILURES, "every failure"
            )
            books = server.wait_for_metrics(
                lambda m: len(sentry.events) + m.get_value("sentry_events_lost_total") == FAILURES,
                "every event to reach Sentry or be counted as lost",
            )
            with server.client() as client:
                assert client.get("/healthz").status_code == 200
            assert server.worker_pids() == workers
    finally:
        sentry.server.stop()
    assert len(kinds) == KINDS
    print(f"{FAILURES} failures in {took:.1f} s; Sentry got {len(sentry.events)}, lost {FAILURES - len(sentry.events)}")
    assert statuses == [200] * FAILURES
    for (task, exception), _ in kinds.items():
        assert metrics.get_value("background_task_failures_total", task=task, exception=exception) == PER_KIND
        received = sentry.events_tagged("background_task", task)
        assert received, task
        assert received[0]["exception"]["values"][-1]["type"] == exception
    assert books.get_value("sentry_events_lost_total") == FAILURES - len(sentry.events)
