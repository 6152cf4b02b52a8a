"""The web side's Celery: publishes a task with its envelope. The trace context travels in the
headers that opentelemetry-instrumentation-celery writes, so the envelope leaves it out."""

from typing import Any

from kombu.exceptions import OperationalError
from opentelemetry.sdk.trace import TracerProvider

from app.queues.celery.client import create_celery, end_producer_span, instrument_celery, share_span_table
from app.queues.envelope import Envelope
from app.settings import Settings
from app.task_registry import TaskRegistry


class CeleryProducer:
    errors: tuple[type[BaseException], ...] = (OperationalError,)
    max_senders = 10  # kombu's producer pool holds 10 connections: more threads would only wait

    def __init__(self, settings: Settings, tasks: TaskRegistry) -> None:
        self.celery = create_celery(settings, tasks, producer=True)
        share_span_table(tasks)
        # Celery copies the arguments' repr into every message's headers, where broker tools
        # (Flower) show them: an email address, a message. None makes it, "" leaves them out.
        self._repr = None if settings.telemetry_include_pii else ""

    def instrument(self, tracer_provider: TracerProvider) -> None:
        instrument_celery(tracer_provider)

    def publish(self, name: str, args: tuple[Any, ...], envelope: Envelope) -> None:
        task = self.celery.tasks[name]
        try:
            task.apply_async(
                args,
                task_id=envelope.task_id,
                headers=envelope.headers(with_trace=False),
                argsrepr=self._repr,
                kwargsrepr=self._repr,
            )
        except BaseException as exc:
            end_producer_span(name, envelope.task_id, exc)
            raise
