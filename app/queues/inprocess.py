"""The in-process backend: the task runs in the web worker after the response, under the task
wrapper like any other background task (app/observability/task_wrapper.py)."""

from typing import Any

from fastapi import BackgroundTasks
from opentelemetry.sdk.trace import TracerProvider

from app.task_registry import TaskRegistry


class InProcess:
    def __init__(self, tasks: TaskRegistry) -> None:
        self._tasks = tasks

    def instrument(self, tracer_provider: TracerProvider) -> None:
        pass  # the task wrapper makes its spans

    async def schedule(
        self,
        background_tasks: BackgroundTasks,
        name: str,
        args: tuple[Any, ...],
        route: str,  # noqa: ARG002 - the wrapper reads the route from the request
    ) -> None:  # no task id: nothing outlives the worker to ask about
        background_tasks.add_task(self._tasks[name], *args)
