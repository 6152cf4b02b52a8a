"""The Celery app both sides build from settings: the web side to publish, the worker to run.

Nothing connects until a task is sent or a worker starts. The settings below are the ones that
make a queue lose nothing silently (docs/queues.md, "Celery in detail"):

- late acks: a message leaves the broker only after its task ended, so a worker that dies mid-task
  leaves it there;
- reject on worker lost: a child killed mid-task (SIGKILL, out of memory) puts its message back at
  once, rather than acknowledging it as failed;
- prefetch of 1: a busy child never sits on messages another child could start;
- a visibility timeout above the longest task: Redis redelivers a message unacknowledged for that
  long, so a shorter one would run long tasks twice (after a broker crash, the worker gives back
  at once what the crash left unacknowledged: consumer.RestoreOrphans);
- a time limit (TASK_TIME_LIMIT_SECONDS): Celery has none by default, and a hung task would hold
  its child for ever;
- a bounded warm shutdown: on SIGTERM, running tasks get up to WORKER_SHUTDOWN_SECONDS, then a
  cold shutdown gives their messages back to the queue for another worker (consumer.py);
- publisher confirms on RabbitMQ: a publish returns once the broker holds the message.
"""

from typing import Any

from celery import Celery

from app.queues.celery.consumer import ObservedTask
from app.settings import Settings
from app.task_registry import TaskRegistry

HARD_LIMIT_GRACE_SECONDS = 10


def create_celery(settings: Settings, tasks: TaskRegistry, *, producer: bool) -> Celery:
    if settings.broker_url is None:
        raise ValueError("BROKER_URL is not set")
    celery = Celery("background-tasks", broker=str(settings.broker_url), set_as_current=False)
    transport: dict[str, Any] = {"visibility_timeout": settings.queue_visibility_timeout_seconds}
    # On the web side each attempt to reach the broker gets a third of the request's budget: a
    # refused or hung connection fails in time for one retry, and the request still answers
    # within it. The worker keeps kombu's defaults, made for its long blocking reads.
    attempt = settings.enqueue_timeout_seconds / 3
    if producer:
        transport |= {"socket_timeout": attempt, "socket_connect_timeout": attempt}
        if not settings.broker_on_redis:
            # Without confirms, a publish returns once the bytes are sent: a crash in the next
            # moment lost accepted tasks (tests/test_broker_crash.py). The wait for a confirm gets
            # the whole budget: a slow one ends in a 503, not in a second publish of the task.
            budget = settings.enqueue_timeout_seconds
            transport |= {"confirm_publish": True, "read_timeout": budget, "write_timeout": budget}
    celery.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        worker_concurrency=settings.worker_concurrency,
        worker_max_tasks_per_child=settings.worker_max_tasks_per_child,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_ignore_result=True,  # no result backend: the outcome is in metrics, spans and Sentry
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": attempt},
    )
    if not producer:
        # The worker's own: a limit the web side wrote into each message would override it. The
        # soft limit raises inside the task (ObservedTask makes it TimeLimitExceeded); the hard
        # one kills a child that did not stop, later, for a task stuck where no exception reaches.
        celery.conf.task_soft_time_limit = settings.task_time_limit_seconds
        celery.conf.task_time_limit = settings.task_time_limit_seconds + HARD_LIMIT_GRACE_SECONDS
    for name, func in tasks.items():
        celery.task(name=name, base=ObservedTask)(func)
    return celery
