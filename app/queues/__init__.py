"""Where heavy tasks run, chosen once from settings.

Without a broker they run in the web worker after the response; with one, on the TASK_QUEUE
library. Adding a library is one package under app/queues/ with an ``adapter.py`` holding the
functions below, and its name in settings.TASK_QUEUES. Only an adapter imports its library, and
only when settings choose it.
"""

import importlib
from collections.abc import Callable
from typing import Protocol

from pydantic import ValidationError

from app.observability.books import Books
from app.observability.logging import exit_with
from app.observability.worker_metrics import Depth
from app.queues.backend import Backend
from app.queues.broker import BrokerBackend, Producer
from app.queues.inprocess import InProcess
from app.queues.task_states import TaskStates
from app.settings import Settings, describe_error
from app.task_registry import TaskRegistry


class Adapter(Protocol):
    """What app/queues/<library>/adapter.py gives: the web side's producer, the worker's command
    (as app/worker_main.py runs it), and the depth of its queue for the worker's /metrics."""

    QUEUE: str

    def producer(self, settings: Settings, tasks: TaskRegistry) -> Producer: ...
    def worker_command(self, settings: Settings, argv: list[str]) -> list[str]: ...
    def worker_env(self, settings: Settings) -> dict[str, str]: ...
    def depth_reader(self, settings: Settings) -> Callable[[], Depth]: ...


def adapter(settings: Settings) -> Adapter:
    module: Adapter = importlib.import_module(f"app.queues.{settings.task_queue}.adapter")
    return module


def backend_for(settings: Settings, tasks: TaskRegistry, books: Books, states: TaskStates | None) -> Backend:
    if settings.broker_url is None:
        return InProcess(tasks)
    producer = adapter(settings).producer(settings, tasks)
    return BrokerBackend(producer, books, states, timeout=settings.enqueue_timeout_seconds)


def worker_settings() -> Settings:
    """The worker's settings, or an exit naming what is wrong: checked here before the first start,
    so that a mistake stops the entry point rather than restarting the worker for ever."""
    try:
        settings = Settings()
    except ValidationError as error:
        exit_with(describe_error(error))
    if settings.broker_url is None:
        exit_with("Invalid settings:\n  BROKER_URL: required by the worker, e.g. redis://127.0.0.1:6379/0")
    return settings
