"""Telemetry never changes what it observes: with its metrics, its log line or its Sentry report
broken in turn, a task's outcome, the response and the sibling tasks stay as they were, and the
failure is counted."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from starlette.background import BackgroundTask, BackgroundTasks
from starlette.responses import JSONResponse
from starlette.types import Message

from app.main import create_app
from app.observability import task_telemetry
from app.settings import Settings
from app.tasks import LogFile, write_log
from harness import Metrics


class Broken(Exception):
    pass


def boom(*_: Any, **__: Any) -> None:
    raise Broken("telemetry is broken")


def fails() -> None:
    raise ValueError("the task's own failure")


def _app(tmp_path: Path) -> tuple[FastAPI, LogFile]:
    app = create_app(Settings(log_file=tmp_path / "tasks.log", otel_sdk_disabled=True))
    log = LogFile(tmp_path / "tasks.log")

    @app.post("/three/")
    async def three() -> JSONResponse:
        tasks = [BackgroundTask(write_log, log, "first"), BackgroundTask(fails), BackgroundTask(write_log, log, "last")]
        return JSONResponse({"status": "ok"}, background=BackgroundTasks(tasks))

    return app, log


def _call(app: FastAPI, method: str, path: str) -> tuple[int, bytes]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": [], "query_string": b"", "root_path": ""}

    anyio.run(app, scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def _break_metrics(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.state.telemetry.metrics.task_start_delay, "labels", boom)


def _break_logging(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.state.telemetry.logger, "log", boom)


def _break_sentry(_app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(task_telemetry, "report_exception", boom)


@pytest.mark.parametrize(
    ("part", "breaks", "times"),
    [
        ("metrics", _break_metrics, 3),  # every task's start delay
        ("log", _break_logging, 1),  # the failure's ERROR line (successes log at DEBUG, not enabled)
        ("sentry", _break_sentry, 1),  # the failure's report
    ],
)
def test_broken_telemetry_changes_no_outcome_no_response_and_no_sibling(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    part: str,
    breaks: Callable[[FastAPI, pytest.MonkeyPatch], None],
    times: int,
) -> None:
    app, log = _app(tmp_path)
    breaks(app, monkeypatch)
    status, body = _call(app, "POST", "/three/")
    assert (status, body) == (200, b'{"status":"ok"}')
    assert log.path.read_text() == "first\nlast\n"  # the siblings ran, in order

    monkeypatch.undo()
    status, body = _call(app, "GET", "/metrics")
    assert status == 200
    metrics = Metrics.parse(body.decode())
    outcomes = {"task": "write_log", "route": "/three/"}
    assert metrics.get_value("background_task_duration_seconds_count", outcome="success", **outcomes) == 2
    failed = {"task": "fails", "route": "/three/"}
    assert metrics.get_value("background_task_duration_seconds_count", outcome="failure", **failed) == 1
    assert metrics.get_value("background_task_failures_total", exception="ValueError", **failed) == 1
    assert metrics.get_value("background_tasks_pending") == 0
    assert metrics.get_value("background_task_telemetry_errors_total", part=part) == times
    assert metrics.get_value("background_task_telemetry_errors_total") == times
