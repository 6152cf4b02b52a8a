"""A task's retry policy: a heavy task's is part of its registration (app/task_registry.py); a
light task's (a function of your own handed to FastAPI's BackgroundTasks) is given once with
``with_policy``.

It says which failures are worth another attempt and how long to wait before it. Each runner
applies it with its own machinery (Celery's retry with a countdown, Dramatiq's Retries, RQ's
Retry, the in-process wrapper's sleep), and the task's telemetry asks it the same question, so a
retry is counted as one exactly when the runner retries.
"""

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int  # the first attempt included
    first_backoff_seconds: float
    retry_on: tuple[type[Exception], ...]
    max_backoff_seconds: float = 300.0

    def retries(self, attempt: int, exc: BaseException) -> bool:
        """Whether the failure of attempt ``attempt`` (1-based) is followed by another attempt."""
        return attempt < self.max_attempts and isinstance(exc, self.retry_on)

    def backoff(self, attempt: int) -> float:
        """The wait after attempt ``attempt`` failed: exponential, capped, with jitter (between half
        of it and all of it, so that tasks failed together do not come back together)."""
        ceiling = min(self.max_backoff_seconds, self.first_backoff_seconds * 2.0 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not a secret


_POLICY = "retry_policy"  # the attribute a light task's function carries it in


def with_policy(func: Callable[..., Any], policy: RetryPolicy | None) -> None:
    setattr(func, _POLICY, policy)


def retry_policy(func: object) -> RetryPolicy | None:
    policy = getattr(func, _POLICY, None)
    return policy if isinstance(policy, RetryPolicy) else None
