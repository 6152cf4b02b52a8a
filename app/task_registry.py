"""The heavy tasks, by name: on a queue when a broker is set, in the web worker otherwise.

Each entry is a plain function of JSON arguments, bound here to what it needs from settings, so
the web side and the worker build the same table from their own settings. Its key is its one
name: the metric label, the span attribute, the Sentry tag and the log line, in every mode. Its
retry policy (app/retry_policy.py), or None, says which failures get another attempt. Add your own
heavy task with one entry below, then schedule it with ``await schedule(background_tasks, name, …)``.
"""

import functools
from collections.abc import Callable
from typing import Any

from app.retry_policy import RetryPolicy, with_policy
from app.settings import Settings
from app.tasks import EmailDeliveryError, LogFile, send_email

TaskRegistry = dict[str, Callable[..., None]]


def task_registry(settings: Settings) -> TaskRegistry:
    log = LogFile(settings.log_file)
    tasks: dict[str, tuple[Callable[..., None], RetryPolicy | None]] = {
        "send_email": (
            functools.partial(
                send_email, log, delay_seconds=settings.email_send_seconds, failure_rate=settings.email_failure_rate
            ),
            RetryPolicy(
                max_attempts=settings.email_max_attempts,
                first_backoff_seconds=settings.email_retry_backoff_seconds,
                retry_on=(EmailDeliveryError,),
            ),
        ),
    }
    return {name: named(func, name, policy) for name, (func, policy) in tasks.items()}


def named(func: Callable[..., None], name: str, retry: RetryPolicy | None = None) -> Callable[..., None]:
    """The function under its registry name: a partial has none, and a function's own name may
    differ from its key (``"welcome": partial(send_email, …)``). Queue libraries read a task's
    name and module off it; the in-process wrapper reads its qualified name."""

    def run(*args: Any, **kwargs: Any) -> None:
        func(*args, **kwargs)

    run.__name__ = run.__qualname__ = name
    with_policy(run, retry)  # app.retry_policy.retry_policy(run) reads it
    return run
