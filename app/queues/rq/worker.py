"""What `rq worker-pool` loads, which `python -m app.worker_main` (`make worker`, the image,
compose, k8s) starts and keeps running, with PROMETHEUS_MULTIPROC_DIR set:

- its settings (`--config app.queues.rq.worker`): the Redis URL (not on the command line, where
  `ps` shows it) and the logging of every process, pool and workers, as JSON lines like every
  other (app/observability/logging.py);
- its worker class (`--worker-class app.queues.rq.worker.ObservedWorker`, app/queues/rq/consumer.py);
- its jobs: each task is `app.queues.rq.worker.<registry name>`, the task observed.

RQ imports this module in the pool and in each worker; nothing here connects on import.
"""

from collections.abc import Callable
from typing import Any

from app.observability.logging import logging_config
from app.queues.adapters import worker_settings
from app.queues.rq.consumer import ObservedWorker, observed

__all__ = ["DICT_CONFIG", "REDIS_URL", "ObservedWorker"]

_settings = worker_settings()
REDIS_URL = str(_settings.broker_url)
DICT_CONFIG = logging_config(_settings.log_level, _settings.log_format)


def __getattr__(name: str) -> Callable[..., Any]:
    if name.startswith("__"):  # the import system's own questions (__path__, …): not a task
        raise AttributeError(name)
    return observed(name)
