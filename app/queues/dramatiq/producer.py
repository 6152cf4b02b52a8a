"""The web side's Dramatiq: publishes a task with its envelope, in a PRODUCER span."""

from typing import Any

import pika.exceptions
import redis
from dramatiq import Message
from dramatiq.errors import BrokerError
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer

from app.queues.dramatiq.client import make_broker
from app.queues.dramatiq.names import DESTINATION, ENVELOPE, QUEUE
from app.queues.envelope import Envelope
from app.queues.spans import publish_span, tracer
from app.settings import Settings


class DramatiqProducer:
    errors: tuple[type[BaseException], ...] = (BrokerError, redis.RedisError, pika.exceptions.AMQPError)
    max_senders = 10

    def __init__(self, settings: Settings) -> None:
        self.broker = make_broker(settings, [], producer=True)
        self._tracer: Tracer = tracer(None)

    def instrument(self, tracer_provider: TracerProvider) -> None:
        self._tracer = tracer(tracer_provider)

    def publish(self, name: str, args: tuple[Any, ...], envelope: Envelope) -> None:
        with publish_span(self._tracer, DESTINATION, name, envelope.task_id):
            options = {ENVELOPE: envelope.headers(with_trace=True)}
            message: Message[None] = Message(QUEUE, name, args, {}, options, message_id=envelope.task_id)
            self.broker.enqueue(message)
