"""The wrapper's edges, in process: names, and apps that are not ours."""

import functools

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
