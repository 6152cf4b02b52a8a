"""A backend on a broker: the task is published before the response, so a 200 means the broker
holds it. The publish blocks (every library's client does), so it runs on a thread of its own,
within ENQUEUE_TIMEOUT_SECONDS; a broker that is down or slow raises QueueUnavailable. Where task
state is tracked, its ``queued`` state is written first, in the same budget. What is particular to
a library is its ``Producer``."""

from contextlib import suppress
from typing import Any

from anyio import CapacityLimiter, fail_after, to_thread
from fastapi import BackgroundTasks
from opentelemetry.sdk.trace import TracerProvider

from app.observability.books import Books
from app.queues.adapters import Producer
from app.queues.backend import QueueUnavailable
from app.queues.envelope import Envelope
from app.queues.task_states import TaskStates


class BrokerBackend:
    def __init__(self, producer: Producer, books: Books, states: TaskStates | None, *, timeout: float) -> None:
        self.producer = producer
        self._books = books
        self._states = states
        self._timeout = timeout
        self._senders = CapacityLimiter(producer.max_senders)
        self._unavailable: tuple[type[BaseException], ...] = (
            TimeoutError,
            OSError,
            *producer.errors,
            *(states.errors if states else ()),
        )

    def instrument(self, tracer_provider: TracerProvider) -> None:
        self.producer.instrument(tracer_provider)

    async def schedule(
        self,
        background_tasks: BackgroundTasks,  # noqa: ARG002 - nothing runs here after the response
        name: str,
        args: tuple[Any, ...],
        route: str,
    ) -> str:
        envelope = Envelope.new(route)
        try:
            with fail_after(self._timeout):
                await to_thread.run_sync(
                    self._send, name, args, envelope, limiter=self._senders, abandon_on_cancel=True
                )
        except self._unavailable as exc:
            raise QueueUnavailable(type(exc).__name__) from None
        return envelope.task_id

    def _send(self, name: str, args: tuple[Any, ...], envelope: Envelope) -> None:
        # Its state first: a worker may start the task before the publish returns.
        if self._states is not None:
            self._states.queued(envelope.task_id, name, envelope.route, envelope.enqueued_at)
        try:
            self.producer.publish(name, args, envelope)
        except BaseException:
            if self._states is not None:
                with suppress(*self._states.errors):  # it expires anyway
                    self._states.forget(envelope.task_id)
            raise
        # Counted once the broker holds it, even if the request gave up waiting: the task will run.
        self._books.enqueued(name, envelope.route)
