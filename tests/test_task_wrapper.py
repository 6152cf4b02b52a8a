"""The wrapper's edges, in process: names, and apps that are not ours."""

import functools
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.background import BackgroundTask, BackgroundTasks
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Message

from app.main import create_app
from app.observability.task_wrapper import task_name
from app.settings import Settings
from app.tasks import write_log
from harness import Metrics, post_scope


def test_task_name_is_the_qualified_name_through_partials() -> None:
    assert task_name(write_log) == "write_log"
    assert task_name(functools.partial(functools.partial(write_log), None)) == "write_log"
    assert task_name(Settings.model_dump) == "BaseModel.model_dump"


def test_an_app_that_is_not_ours_keeps_starlettes_semantics() -> None:
    create_app(Settings())  # installs the wrapper in this process
    ran: list[str] = []

    async def first() -> None:
        ran.append("first")

    def second() -> None:
        ran.append("second")

    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse({}, background=BackgroundTasks([BackgroundTask(first), BackgroundTask(second)]))

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b"", "root_path": ""}
    anyio.run(Starlette(routes=[Route("/", endpoint)]), scope, receive, send)
    assert sent[0]["status"] == 200
    assert ran == ["first", "second"]


async def wait_forever(started: anyio.Event) -> None:
    started.set()
    await anyio.sleep(3600)


def test_a_cancelled_batch_counts_its_unfinished_tasks_as_dropped(tmp_path: Path) -> None:
    """Cancelled outside a shutdown (another server, a client gone): reason "cancelled"."""
    app = create_app(Settings(log_file=tmp_path / "tasks.log"))
    started = anyio.Event()

    @app.post("/slow/")
    async def slow_endpoint() -> JSONResponse:
        tasks = [BackgroundTask(wait_forever, started), BackgroundTask(write_log, None)]
        return JSONResponse({}, background=BackgroundTasks(tasks))

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/slow/",
        "headers": [],
        "query_string": b"",
        "root_path": "",
        "app": app,
    }

    async def cancel_mid_task() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(app, scope, receive, send)
            await started.wait()
            group.cancel_scope.cancel()

    anyio.run(cancel_mid_task)
    sent.clear()
    anyio.run(app, {**scope, "method": "GET", "path": "/metrics"}, receive, send)
    metrics = Metrics.parse(b"".join(m.get("body", b"") for m in sent).decode())
    assert metrics.get_value("background_tasks_scheduled_total", route="/slow/") == 2
    assert metrics.get_value("background_tasks_dropped_total", task="wait_forever", reason="cancelled") == 1
    assert metrics.get_value("background_tasks_dropped_total", task="write_log", reason="cancelled") == 1
    assert metrics.get_value("background_task_duration_seconds_count", outcome="cancelled") == 1
    assert metrics.get_value("background_task_duration_seconds_count") == 1
    assert metrics.get_value("background_tasks_pending") == 0
    assert app.state.backlog.depth == 0


def test_with_the_sdk_disabled_tasks_still_run_and_nothing_is_traced(tmp_path: Path) -> None:
    app = create_app(Settings(otel_sdk_disabled=True, log_file=tmp_path / "tasks.log"))
    sent: list[Message] = []

    async def run() -> None:
        scope = post_scope("/log/", b"msg=untraced")

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        await app(scope, receive, send)

    anyio.run(run)
    assert sent[0]["status"] == 200
    assert b"traceparent" not in dict(sent[0]["headers"])
    assert (tmp_path / "tasks.log").read_text() == "untraced\n"
