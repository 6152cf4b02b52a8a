"""One log format for every process: each line gunicorn, uvicorn, the app and Celery write is JSON."""

import os
import re
import signal
import socket
from pathlib import Path

from app.gunicorn_worker import INVALID_REQUEST
from harness import TOKEN, Gunicorn, QueueWorker, RedisServer, log_lines, wait_for

SECRET = "secret-in-a-malformed-request"
TRACE_ID = re.compile(r"[0-9a-f]{32}")


def malformed_request(port: int) -> tuple[bytes, str]:
    """A header value with a NUL, which the parser refuses; the request also carries secrets."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        host, local_port = sock.getsockname()
        client = f"{host}:{local_port}"
        sock.sendall(
            f"POST /log/?msg={SECRET} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\x00\r\n\r\n".encode()
        )
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    return response, client


def test_every_line_of_gunicorn_uvicorn_and_the_app_is_one_json_object(tmp_path: Path) -> None:
    server = Gunicorn(
        tmp_path,
        env={"API_TOKEN": TOKEN, "EMAIL_SEND_SECONDS": "0", "EMAIL_FAILURE_RATE": "1", "EMAIL_MAX_ATTEMPTS": "1"},
        options=("--max-requests", "10"),
    ).start()
    try:
        with server.connection_per_request_client() as client:
            failed = client.post("/send-mail/", params={"email": "failing@example.com"})
            server.wait_for_metrics(
                lambda m: m.get_value("background_task_failures_total", task="send_email") == 1, "the failure"
            )
            refused, client_address = malformed_request(server.port)
            assert server.process is not None
            # The scrapes above count towards max_requests too, so a worker may already have been recycled.
            started = server.started_workers()
            server.process.send_signal(signal.SIGHUP)
            wait_for(lambda: server.started_workers() == started + 2, what="the workers HUP replaces")
            for i in range(25):  # more than max_requests on either worker: at least one is recycled
                assert client.post("/log/", params={"msg": f"recycle {i}"}).status_code == 200
            wait_for(lambda: server.started_workers() >= started + 3, what="a recycled worker's replacement")
        server.process.send_signal(signal.SIGTERM)
        assert server.wait_exit(timeout=60) == 0
    finally:
        server.stop()

    assert failed.status_code == 200
    assert refused.startswith(b"HTTP/1.1 400 ")
    output = server.stderr()
    lines = log_lines(output)
    messages = [line["message"] for line in lines]
    for expected in (
        "Starting gunicorn",
        "Handling signal: hup",
        "Maximum request limit of 10",
        "Shutting down: Master",
    ):
        assert any(message.startswith(expected) for message in messages), expected
    assert messages.count("Application startup complete.") >= 5
    assert {"gunicorn.error", "uvicorn.error", "app"} <= {line["logger"] for line in lines}

    (failure,) = [line for line in lines if line["level"] == "ERROR"]
    assert (failure["logger"], failure["task"], failure["outcome"]) == ("app", "send_email", "failure")
    assert failure["exc_info"].startswith("Traceback (most recent call last):")
    assert "EmailDeliveryError: simulated: the mail server refused the message" in failure["exc_info"]
    assert TRACE_ID.fullmatch(failure["trace_id"])
    assert failure["trace_id"] == failed.headers["traceparent"].split("-")[1]

    (refusal,) = [line for line in lines if line["message"] == INVALID_REQUEST]
    assert (refusal["logger"], refusal["level"], refusal["client"]) == ("uvicorn.error", "WARNING", client_address)
    assert refusal["reason"] == "Invalid header value char"
    for secret in (SECRET, TOKEN):
        assert secret not in output
    assert "color_message" not in output
    assert not [line for line in lines if line["logger"] == "uvicorn.access"], "the access log is off by default"


def test_access_log_when_switched_on_has_the_route_status_and_duration_but_no_query(tmp_path: Path) -> None:
    server = Gunicorn(tmp_path, env={"ACCESS_LOG": "true", "API_TOKEN": TOKEN}, workers=1).start()
    try:
        with server.client() as client:
            response = client.post("/log/", params={"msg": SECRET})
            missing = client.get(f"/no/such/{SECRET}")
        server.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert server.wait_exit(timeout=60) == 0
    finally:
        server.stop()
    assert (response.status_code, missing.status_code) == (200, 404)
    output = server.stderr()
    access = [line for line in log_lines(output) if line["logger"] == "app.access"]
    assert [(line["message"], line["method"], line["route"], line["status"]) for line in access] == [
        ("POST /log/ 200", "POST", "/log/", 200),
        ("GET unmatched 404", "GET", "unmatched", 404),
    ]
    assert all(0 < line["duration_seconds"] < 5 for line in access)
    assert access[0]["trace_id"] == response.headers["traceparent"].split("-")[1]
    assert SECRET not in output


def test_log_format_text_is_one_readable_line_per_record(tmp_path: Path) -> None:
    server = Gunicorn(tmp_path, env={"LOG_FORMAT": "text", "API_TOKEN": TOKEN}, workers=1).start()
    try:
        with server.client() as client:
            assert client.post("/log/", params={"msg": "hello"}).status_code == 200
    finally:
        server.stop()
    lines = server.stderr().splitlines()
    assert not [line for line in lines if line.startswith("{")]
    started = [line for line in lines if line.endswith("Application startup complete.")]
    assert len(started) == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO    uvicorn\.error \[\d+\] .+", started[0])


def test_every_line_of_the_celery_worker_and_its_children_is_one_json_object(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    env = {
        "CELERY_BROKER_URL": redis.url,
        "EMAIL_SEND_SECONDS": "0",
        "EMAIL_FAILURE_RATE": "1",
        "EMAIL_MAX_ATTEMPTS": "1",
        "WORKER_MAX_TASKS_PER_CHILD": "1",  # each task recycles its child
    }
    web = Gunicorn(tmp_path / "web", env=env, workers=1).start()
    worker = QueueWorker(tmp_path / "worker", env).start()
    try:
        with web.client() as client:
            sent = [client.post("/send-mail/", params={"email": f"queued{i}@example.com"}) for i in range(3)]
        wait_for(
            lambda: worker.metrics().get_value("background_task_failures_total", task="send_email") == 3,
            what="three failures in the worker",
        )
        assert worker.stop() == 0
    finally:
        worker.stop()
        web.stop()
        redis.stop()
    assert [response.status_code for response in sent] == [200, 200, 200]
    lines = log_lines(worker.stderr())
    failures = [line for line in lines if line["logger"] == "app" and line["level"] == "ERROR"]
    assert len(failures) == 3
    assert len({line["pid"] for line in failures}) == 3, "each in a new child"
    assert all("EmailDeliveryError" in line["exc_info"] for line in failures)
    assert {line["trace_id"] for line in failures} == {r.headers["traceparent"].split("-")[1] for r in sent}
    messages = [line["message"] for line in lines]
    assert any(message.endswith(" ready.") for message in messages)
    assert any("Warm shutdown (MainProcess)" in message for message in messages)
    if os.geteuid() == 0:
        assert any(line["logger"] == "py.warnings" for line in lines), "Celery's warning about root, as a line"
    assert "@example.com" not in worker.stderr(), "Celery's records carry the task's arguments"
