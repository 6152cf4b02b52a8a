"""Where heavy tasks run, chosen once from settings.

Without a broker they run in the web worker after the response; with one, on its queue library.
Adding a backend is one package under app/queues/ and one line in each function below. Only an
adapter imports its library, and only when settings choose it.
"""

from pydantic import ValidationError

from app.observability.books import Books
from app.observability.logging import exit_with
from app.queues.backend import Backend
from app.queues.inprocess import InProcess
from app.settings import Settings, describe_error
from app.task_registry import TaskRegistry


def backend_for(settings: Settings, tasks: TaskRegistry, books: Books) -> Backend:
    if settings.celery_broker_url is None:
        return InProcess(tasks)
    from app.queues.broker import BrokerBackend  # noqa: PLC0415 - the queue stack loads only when chosen
    from app.queues.celery.producer import CeleryProducer  # noqa: PLC0415

    return BrokerBackend(CeleryProducer(settings, tasks), books, timeout=settings.enqueue_timeout_seconds)


def worker_settings() -> Settings:
    """The worker's settings, or an exit naming what is wrong: checked here before the first start,
    so that a mistake stops the entry point rather than restarting the worker for ever."""
    try:
        settings = Settings()
    except ValidationError as error:
        exit_with(describe_error(error))
    if settings.celery_broker_url is None:
        exit_with("Invalid settings:\n  CELERY_BROKER_URL: required by the worker, e.g. redis://127.0.0.1:6379/0")
    return settings


def worker_command(argv: list[str]) -> list[str]:
    """The configured library's own worker, as `make worker` runs it under app/worker_main.py."""
    from app.queues.celery.worker_command import command  # noqa: PLC0415

    return command(argv)
