"""The heavy tasks: on Celery when CELERY_BROKER_URL is set, in the web worker otherwise.

Each entry is a plain function of JSON arguments, bound here to what it needs from settings, so
the web side and the Celery worker build the same table from their own settings. Add your own
heavy task with one line below, then schedule it with ``await schedule(background_tasks, name, …)``.
"""

import functools
from collections.abc import Callable

from app.settings import Settings
from app.tasks import LogFile, send_email

QueuedTasks = dict[str, Callable[..., None]]


def queued_tasks(settings: Settings) -> QueuedTasks:
    log = LogFile(settings.log_file)
    return {
        "send_email": functools.partial(
            send_email, log, delay_seconds=settings.email_send_seconds, failure_rate=settings.email_failure_rate
        ),
    }
