"""RQ behind the seam (app/queues/__init__.py): its producer, its worker command and the
broker's depth. RQ runs on Redis only (settings refuse it with an amqp:// BROKER_URL)."""

import sys
from collections.abc import Callable

from app.observability.worker_metrics import DEPTH_READ_TIMEOUT_SECONDS, Depth
from app.queues.broker import Producer
from app.settings import Settings
from app.task_registry import TaskRegistry

QUEUE = "default"  # RQ's default queue
SERIALIZER = "rq.serializers.JSONSerializer"  # JSON arguments, as on every backend (RQ's default is pickle)


def producer(settings: Settings, tasks: TaskRegistry) -> Producer:
    from app.queues.rq.producer import RQProducer  # noqa: PLC0415 - RQ loads only when chosen

    return RQProducer(settings, tasks)


def worker_command(settings: Settings, argv: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rq.cli",
        "worker-pool",
        f"--num-workers={settings.worker_concurrency}",
        "--config=app.queues.rq.config",
        "--worker-class=app.queues.rq.worker.ObservedWorker",
        f"--serializer={SERIALIZER}",
        f"--logging-level={settings.log_level}",
        *argv,
        QUEUE,
    ]


def worker_env(settings: Settings) -> dict[str, str]:  # noqa: ARG001 - its config module reads them
    return {}


def depth_reader(settings: Settings) -> Callable[[], Depth]:
    import redis  # noqa: PLC0415
    from rq import Queue  # noqa: PLC0415

    timeout = DEPTH_READ_TIMEOUT_SECONDS
    client = redis.Redis.from_url(str(settings.broker_url), socket_timeout=timeout, socket_connect_timeout=timeout)
    queue = Queue(QUEUE, connection=client)

    def read() -> Depth:
        # Waiting: in the queue, or a retry in the scheduled-job registry until its backoff ends;
        # running: in the started-job registry until it ends.
        waiting = queue.count + queue.scheduled_job_registry.count
        return Depth(waiting, queue.started_job_registry.count)

    return read
