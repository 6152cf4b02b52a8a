"""The Celery app both sides build from settings (the web side to publish, the worker to run), and
its spans: opentelemetry-instrumentation-celery, on both sides.

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

from collections.abc import Callable, Iterable
from typing import Any

from celery import Celery, Task
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.instrumentation.celery import utils as celery_tracing
from opentelemetry.sdk.trace import TracerProvider

from app.settings import Settings
from app.task_registry import RegisteredTask, TaskRegistry

HARD_LIMIT_GRACE_SECONDS = 10


def create_celery(settings: Settings, tasks: TaskRegistry, *, producer: bool, task_class: type[Task] = Task) -> Celery:
    """Celery with ``tasks`` registered by name, each of ``task_class`` (the worker's observes its run)."""
    if settings.broker_url is None:
        raise ValueError("BROKER_URL is not set")
    celery = Celery("background-tasks", broker=str(settings.broker_url), set_as_current=False)
    transport: dict[str, Any] = {"visibility_timeout": settings.queue_visibility_timeout_seconds}
    # The worker keeps kombu's defaults, made for its long blocking reads.
    attempt = settings.enqueue_attempt_seconds
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
    for task in tasks.values():
        # Celery makes a class of a function, named after it; the policy rides on that class.
        celery.task(name=task.name, base=task_class, task_retry=task.retry)(_function(task))
    return celery


def _function(task: RegisteredTask) -> Callable[..., None]:
    def run(*args: Any) -> None:
        task.run(*args)

    run.__name__ = run.__qualname__ = task.name
    return run


def instrument_celery(tracer_provider: TracerProvider) -> None:
    """The PRODUCER span of each enqueue (web side) or the CONSUMER span of each run (worker).
    Under ``opentelemetry-instrument``, the global provider's instrumentation is replaced, so
    nothing is instrumented twice."""
    instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    instrumentor.instrument(tracer_provider=tracer_provider)


def _instrumented(name: str) -> Any:
    """The task object the instrumentation keeps a publish's span on: it looks a task up by name
    in Celery's current app, which is not the app that publishes (made with
    ``set_as_current=False``) but Celery's default app, where a shared task is registered too."""
    return celery_tracing.retrieve_task_from_sender({"sender": name})


def end_producer_span(name: str, task_id: str, exc: BaseException) -> None:
    """The instrumentation ends its PRODUCER span only after a successful publish; a failed one
    would stay open, and its context would be detached when it is collected, in another context
    ("Failed to detach context")."""
    task = _instrumented(name)
    context = celery_tracing.retrieve_context(task, task_id, is_publish=True)
    if context is not None:
        _span, activation, _token = context
        activation.__exit__(type(exc), exc, exc.__traceback__)  # records it, status ERROR, ends it
        celery_tracing.detach_context(task, task_id, is_publish=True)


def share_span_table(names: Iterable[str]) -> None:
    """The instrumentation keeps each task's open spans in a dict it makes on the task object at the
    first publish, unlocked: two threads publishing the first time both make one, and the spans
    stored in the dict that lost stay open for ever (a PRODUCER span lost, and "Failed to detach
    context" when they are collected). Made here, before any thread publishes."""
    for name in names:
        task = _instrumented(name)
        if task is not None and getattr(task, celery_tracing.CTX_KEY, None) is None:
            setattr(task, celery_tracing.CTX_KEY, {})
