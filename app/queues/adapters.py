"""The seam every queue library plugs into: its adapter (app/queues/<library>/adapter.py, a class
that mypy checks against ``Adapter``) gives the web side's producer, the worker's command (as
app/worker_main.py runs it) and the depth of its queue for the worker's /metrics. Only an adapter
imports its library, and only when settings choose it; nothing here imports a web framework, so a
worker process loads none."""

import importlib
from collections.abc import Callable
from typing import Any, Protocol

from opentelemetry.sdk.trace import TracerProvider
from pydantic import ValidationError

from app.observability.logging import exit_with
from app.observability.worker_metrics import Depth
from app.queues.envelope import Envelope
from app.queues.registry import QUEUE_LIBRARIES
from app.settings import Settings, describe_error
from app.task_registry import TaskRegistry


class Producer(Protocol):
    """The web side's publisher of one library."""

    errors: tuple[type[BaseException], ...]  # what the library raises when the broker fails
    max_senders: int  # publishes at once: its connection pool's size

    def publish(self, name: str, args: tuple[Any, ...], envelope: Envelope) -> None: ...
    def instrument(self, tracer_provider: TracerProvider) -> None: ...


class Adapter(Protocol):
    QUEUE: str  # the queue its tasks go to: a label of the depth, and the spans' destination

    def __init__(self, settings: Settings) -> None: ...
    def producer(self, tasks: TaskRegistry) -> Producer: ...
    def worker_command(self, argv: list[str]) -> list[str]: ...
    def worker_env(self) -> dict[str, str]: ...
    def depth_reader(self) -> Callable[[], Depth]: ...


def adapter(settings: Settings) -> Adapter:
    module, _, name = QUEUE_LIBRARIES[settings.task_queue].adapter.partition(":")
    try:
        found: type[Adapter] = getattr(importlib.import_module(module), name)
    except ImportError as error:  # its package deleted, its line kept; or its library not installed
        exit_with(f"TASK_QUEUE={settings.task_queue}: its adapter {module} cannot be imported ({error})")
    return found(settings)


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
