"""Where heavy tasks run, chosen once from settings.

Without a broker they run in the web worker after the response; with one, on its queue library.
Adding a backend is one package under app/queues/ and one line in each function below. Only an
adapter imports its library, and only when settings choose it.
"""

from app.observability.books import Books
from app.queues.backend import Backend
from app.queues.inprocess import InProcess
from app.settings import Settings
from app.task_registry import TaskRegistry


def backend_for(settings: Settings, tasks: TaskRegistry, books: Books) -> Backend:
    if settings.celery_broker_url is None:
        return InProcess(tasks)
    from app.queues.broker import BrokerBackend  # noqa: PLC0415 - the queue stack loads only when chosen
    from app.queues.celery.producer import CeleryProducer  # noqa: PLC0415

    return BrokerBackend(CeleryProducer(settings, tasks), books, timeout=settings.enqueue_timeout_seconds)


def worker_command(argv: list[str]) -> list[str]:
    """The configured library's own worker, as `make worker` runs it under app/worker_main.py."""
    from app.queues.celery.worker_command import command  # noqa: PLC0415

    return command(argv)
