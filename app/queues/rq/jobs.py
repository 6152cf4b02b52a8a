"""What RQ runs: each task is ``app.queues.rq.jobs.<registry name>``, a path RQ imports in the
worker (and shows in its own tools). The function behind it is the task observed, from the
worker (app/queues/rq/worker.py)."""

from collections.abc import Callable
from typing import Any

SYSTEM = "rq"
ENVELOPE = "envelope"  # the job's meta key that carries it


def function_path(name: str) -> str:
    return f"{__name__}.{name}"


def __getattr__(name: str) -> Callable[..., Any]:
    if name.startswith("__"):  # the import system's own questions (__path__, …): not a task
        raise AttributeError(name)
    from app.queues.rq.worker import observed  # noqa: PLC0415 - only a worker resolves a job

    return observed(name)
