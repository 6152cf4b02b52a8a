"""The web side's RQ: enqueues a task by its registry name (a function of app/queues/rq/worker.py)
with its envelope in the job's meta and its retry policy as RQ's Retry, in a PRODUCER span."""

from typing import Any

import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer
from rq import Retry

from app.queues.envelope import Envelope
from app.queues.rq.client import job_queue, producer_connection
from app.queues.rq.names import DESTINATION, ENVELOPE, function_path
from app.queues.spans import publish_span, tracer
from app.retry_policy import RetryPolicy
from app.settings import Settings
from app.task_registry import TaskRegistry


class RQProducer:
    errors: tuple[type[BaseException], ...] = (redis.RedisError,)
    max_senders = 10

    def __init__(self, settings: Settings, tasks: TaskRegistry) -> None:
        self._policies = {name: task.retry for name, task in tasks.items()}
        self._queue = job_queue(producer_connection(settings))
        self._tracer: Tracer = tracer(None)

    def instrument(self, tracer_provider: TracerProvider) -> None:
        self._tracer = tracer(tracer_provider)

    def publish(self, name: str, args: tuple[Any, ...], envelope: Envelope) -> None:
        with publish_span(self._tracer, DESTINATION, name, envelope.task_id):
            self._queue.enqueue_call(
                function_path(name),
                args=args,
                job_id=envelope.task_id,
                meta={ENVELOPE: envelope.headers(with_trace=True)},
                # Kept a second: the outcome is in metrics, spans and Sentry. (RQ deletes a job kept for
                # none on a connection of its own, which its work horse opens for that: 3 ms a job.)
                result_ttl=1,
                retry=rq_retry(self._policies.get(name)),
            )


def rq_retry(policy: RetryPolicy | None) -> Retry | None:
    """The policy as RQ's Retry: its waits in whole seconds (RQ's scheduler, which every pool
    worker runs, moves a job back to the queue once a second), at least one, each drawn now."""
    if policy is None or policy.max_attempts == 1:
        return None
    waits = [max(1, round(policy.backoff(attempt))) for attempt in range(1, policy.max_attempts)]
    return Retry(max=policy.max_attempts - 1, interval=waits)
