"""The heavy tasks, by name: on a queue when a broker is set, in the web worker otherwise.

Each entry is a plain function of JSON arguments, bound here to what it needs from settings, so
the web side and the worker build the same table from their own settings. Its key is its one
name: the metric label, the span attribute, the Sentry tag and the log line, in every mode. Add
your own heavy task with one line below, then schedule it with
``await schedule(background_tasks, name, …)``.
"""

import functools
from collections.abc import Callable
from typing import Any

from app.settings import Settings
from app.tasks import LogFile, send_email

TaskRegistry = dict[str, Callable[..., None]]


def task_registry(settings: Settings) -> TaskRegistry:
    log = LogFile(settings.log_file)
    tasks: TaskRegistry = {
        "send_email": functools.partial(
            send_email, log, delay_seconds=settings.email_send_seconds, failure_rate=settings.email_failure_rate
        ),
    }
    return {name: named(func, name) for name, func in tasks.items()}


def named(func: Callable[..., None], name: str) -> Callable[..., None]:
    """The function under its registry name: a partial has none, and a function's own name may
    differ from its key (``"welcome": partial(send_email, …)``). Queue libraries read a task's
    name and module off it; the in-process wrapper reads its qualified name."""

    def run(*args: Any, **kwargs: Any) -> None:
        func(*args, **kwargs)

    run.__name__ = run.__qualname__ = name
    return run
