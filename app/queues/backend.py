"""The seam between scheduling a task and what runs it.

The scheduler hands a task over by its registry name, with its JSON arguments, to a ``Backend``.
A backend runs it in process (after the response) or puts it on a broker before the response;
a broker that does not take it in time raises ``QueueUnavailable``, and the client gets a 503.
"""

from typing import Any, Protocol

from fastapi import BackgroundTasks
from opentelemetry.sdk.trace import TracerProvider


class QueueUnavailable(Exception):
    """The broker was down, refused the task, or did not answer within ENQUEUE_TIMEOUT_SECONDS."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


class Backend(Protocol):
    def instrument(self, tracer_provider: TracerProvider) -> None:
        """Starts the library's own spans in this process (the PRODUCER span of each enqueue)."""

    async def schedule(
        self, background_tasks: BackgroundTasks, name: str, args: tuple[Any, ...], route: str
    ) -> str | None:
        """The task's id on a queue (X-Task-Id); None in process, where a task has none."""
