"""The web side's RQ: enqueues a task by its registry name (a function of app/queues/rq/jobs.py)
with its envelope in the job's meta and its retry policy as RQ's Retry, in a PRODUCER span."""

from typing import Any

import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer
from rq import Queue, Retry

from app.queues.backend import Envelope
from app.queues.rq.adapter import QUEUE
from app.queues.rq.jobs import ENVELOPE, SYSTEM, function_path
from app.queues.spans import publish_span, tracer
from app.retry_policy import RetryPolicy, retry_policy
from app.settings import Settings
from app.task_registry import TaskRegistry


class RQProducer:
    errors: tuple[type[BaseException], ...] = (redis.RedisError,)
    max_senders = 10

    def __init__(self, settings: Settings, tasks: TaskRegistry) -> None:
        self._policies = {name: retry_policy(func) for name, func in tasks.items()}
        # Each attempt to reach Redis gets a third of the request's budget.
        attempt = settings.enqueue_timeout_seconds / 3
        client = redis.Redis.from_url(
            str(settings.broker_url), socket_timeout=attempt, socket_connect_timeout=attempt, max_connections=64
        )
        self._queue = Queue(QUEUE, connection=client, serializer="rq.serializers.JSONSerializer")
        self._tracer: Tracer = tracer(None)

    def instrument(self, tracer_provider: TracerProvider) -> None:
        self._tracer = tracer(tracer_provider)

    def publish(self, name: str, args: tuple[Any, ...], envelope: Envelope) -> None:
        with publish_span(self._tracer, SYSTEM, name, envelope.task_id):
            self._queue.enqueue_call(
                function_path(name),
                args=args,
                job_id=envelope.task_id,
                meta={ENVELOPE: envelope.headers(with_trace=True)},
                result_ttl=0,  # no results kept: the outcome is in metrics, spans and Sentry
                retry=rq_retry(self._policies.get(name)),
            )


def rq_retry(policy: RetryPolicy | None) -> Retry | None:
    """The policy as RQ's Retry: its waits in whole seconds (RQ's scheduler, which every pool
    worker runs, moves a job back to the queue once a second), at least one, each drawn now."""
    if policy is None or policy.max_attempts == 1:
        return None
    waits = [max(1, round(policy.backoff(attempt))) for attempt in range(1, policy.max_attempts)]
    return Retry(max=policy.max_attempts - 1, interval=waits)
