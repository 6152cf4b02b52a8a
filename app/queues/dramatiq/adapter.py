"""Dramatiq behind the seam (app/queues/__init__.py): its producer, its worker command and the
broker's depth."""

import sys
from collections.abc import Callable

from app.observability.worker_metrics import Depth
from app.queues import rabbitmq
from app.queues.broker import Producer
from app.settings import Settings
from app.task_registry import TaskRegistry

QUEUE = "default"  # Dramatiq's default queue (as broker.QUEUE, without importing Dramatiq here)


def producer(settings: Settings, tasks: TaskRegistry) -> Producer:  # noqa: ARG001 - sent by name
    from app.queues.dramatiq.producer import DramatiqProducer  # noqa: PLC0415 - Dramatiq loads only when chosen

    return DramatiqProducer(settings)


def worker_command(settings: Settings, argv: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dramatiq",
        "app.queues.dramatiq.worker:broker",
        f"--processes={settings.worker_concurrency}",
        f"--threads={settings.worker_threads}",
        # SIGTERM: running tasks get this long, then their messages stay with the broker.
        f"--worker-shutdown-timeout={int(settings.worker_shutdown_seconds * 1000)}",
        "--skip-logging",  # each process logs as every other (app/observability/logging.py)
        *argv,
    ]


def worker_env(settings: Settings) -> dict[str, str]:
    # As many messages prefetched as threads: a busy process never sits on one another could start.
    return {"dramatiq_queue_prefetch": str(settings.worker_threads)}


def depth_reader(settings: Settings) -> Callable[[], Depth]:
    if not settings.broker_on_redis:
        return rabbitmq.depth_reader(settings, QUEUE)
    import redis  # noqa: PLC0415

    client = redis.Redis.from_url(str(settings.broker_url), socket_timeout=2, socket_connect_timeout=2)

    def read() -> Depth:
        # Dramatiq's Redis layout: a list of waiting ids, and a hash of every message not yet acked.
        with client.pipeline() as pipe:
            pipe.llen(f"dramatiq:{QUEUE}")
            pipe.hlen(f"dramatiq:{QUEUE}.msgs")
            waiting, stored = pipe.execute()
        return Depth(QUEUE, int(waiting), int(stored) - int(waiting))

    return read
