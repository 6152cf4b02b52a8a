"""The seam between scheduling a task and what runs it, and what travels with a queued task.

The scheduler hands a task over by its registry name, with its JSON arguments, to a ``Backend``.
A backend runs it in process (after the response) or puts it on a broker before the response;
a broker that does not take it in time raises ``QueueUnavailable``, and the client gets a 503.
"""

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import BackgroundTasks
from opentelemetry import propagate
from opentelemetry.sdk.trace import TracerProvider

NO_ROUTE = "none"  # scheduled outside a request
_ROUTE, _ENQUEUED_AT = "origin_route", "enqueued_at"


class QueueUnavailable(Exception):
    """The broker was down, refused the task, or did not answer within ENQUEUE_TIMEOUT_SECONDS."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


class TimeLimitExceeded(Exception):
    """A queued task ran past TASK_TIME_LIMIT_SECONDS: one exception class (and so one label and
    one Sentry issue) whatever library stopped it."""


class WorkerProcessLost(Exception):
    """The process running a queued task died (SIGKILL, out of memory) where the library does not
    run the task again (RQ moves it to its failed registry): a failure, reported as one."""


class Backend(Protocol):
    def instrument(self, tracer_provider: TracerProvider) -> None:
        """Starts the library's own spans in this process (the PRODUCER span of each enqueue)."""

    async def schedule(
        self, background_tasks: BackgroundTasks, name: str, args: tuple[Any, ...], route: str
    ) -> str | None:
        """The task's id on a queue (X-Task-Id); None in process, where a task has none."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """What travels with a queued task besides its arguments, defined once: its id, the route that
    scheduled it (its label on the worker), when it was enqueued (the queue wait is measured from
    it), and the trace context for a library whose instrumentation does not carry it itself (its
    consumer reads it with ``opentelemetry.propagate.extract``). Every adapter writes it with
    ``headers()`` and reads it back with ``Envelope.read()``."""

    task_id: str
    route: str
    enqueued_at: float

    @classmethod
    def new(cls, route: str) -> "Envelope":
        return cls(str(uuid.uuid4()), route, time.time())

    def headers(self, *, with_trace: bool) -> dict[str, Any]:
        headers: dict[str, Any] = {_ROUTE: self.route, _ENQUEUED_AT: self.enqueued_at}
        if with_trace:  # the current context: the publish runs in the request's
            propagate.inject(headers)
        return headers

    @classmethod
    def read(cls, headers: Mapping[str, Any] | None, task_id: str) -> "Envelope":
        headers = headers or {}
        enqueued_at = headers.get(_ENQUEUED_AT)
        return cls(
            task_id,
            str(headers.get(_ROUTE) or NO_ROUTE),
            float(enqueued_at) if enqueued_at is not None else time.time(),
        )

    def waited(self) -> float:
        # Wall clocks of two machines: a skewed clock shows as a wait of zero, never negative.
        return max(0.0, time.time() - self.enqueued_at)
