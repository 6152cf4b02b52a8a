"""The heavy tasks, by name: on a queue when a broker is set, in the web worker otherwise.

Each entry is a ``RegisteredTask``: a plain function of JSON arguments, bound here to what it
needs from settings, so the web side and the worker build the same table from their own settings;
its one name, the metric label, the span attribute, the Sentry tag and the log line, in every mode;
and its retry policy (app/retry_policy.py), or None, which says which failures get another attempt.
Add your own heavy task with one entry below, then schedule it with
``await schedule(background_tasks, name, …)``.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.retry_policy import RetryPolicy
from app.settings import Settings
from app.tasks import EmailDeliveryError, LogFile, send_email


@dataclass(frozen=True, slots=True)
class RegisteredTask:
    """A heavy task as every runner sees it: its one name, its function of JSON arguments, and its
    retry policy (None: no failure is retried)."""

    name: str
    run: Callable[..., None]
    retry: RetryPolicy | None = None

    def __call__(self, *args: Any) -> None:  # in process, as FastAPI's background task
        self.run(*args)


TaskRegistry = dict[str, RegisteredTask]


def task_registry(settings: Settings) -> TaskRegistry:
    log = LogFile(settings.log_file)
    tasks = [
        RegisteredTask(
            "send_email",
            functools.partial(
                send_email, log, delay_seconds=settings.email_send_seconds, failure_rate=settings.email_failure_rate
            ),
            RetryPolicy(
                max_attempts=settings.email_max_attempts,
                first_backoff_seconds=settings.email_retry_backoff_seconds,
                retry_on=(EmailDeliveryError,),
            ),
        ),
    ]
    return {task.name: task for task in tasks}
