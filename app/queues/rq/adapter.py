"""RQ behind the seam (app/queues/adapters.py): its producer, its worker command and the broker's
depth. RQ runs on Redis only (app/queues/registry.py)."""

import sys
from collections.abc import Callable

from app.observability.worker_metrics import Depth
from app.queues.adapters import Adapter, Producer
from app.queues.redis_depth import depth_client
from app.queues.rq.names import JOBS, QUEUE, SERIALIZER
from app.settings import Settings
from app.task_registry import TaskRegistry


class RQAdapter(Adapter):
    QUEUE = QUEUE

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def producer(self, tasks: TaskRegistry) -> Producer:
        from app.queues.rq.producer import RQProducer  # noqa: PLC0415 - RQ loads only when chosen

        return RQProducer(self.settings, tasks)

    def worker_command(self, argv: list[str]) -> list[str]:
        return [
            sys.executable,
            "-m",
            "rq.cli",
            "worker-pool",
            f"--num-workers={self.settings.worker_concurrency}",
            f"--config={JOBS}",
            f"--worker-class={JOBS}.ObservedWorker",
            "--connection-class=app.queues.redis_client.Redis",
            f"--serializer={SERIALIZER}",
            f"--logging-level={self.settings.log_level}",
            *argv,
            QUEUE,
        ]

    def worker_env(self) -> dict[str, str]:
        return {}  # its worker module reads the settings

    def depth_reader(self) -> Callable[[], Depth]:
        from app.queues.rq.client import job_queue  # noqa: PLC0415 - RQ loads only when chosen

        queue = job_queue(depth_client(self.settings))

        def read() -> Depth:
            # Waiting: in the queue; a retry in the scheduled-job registry until its backoff ends;
            # or taken into the intermediate list and not started (for milliseconds, or stranded
            # until a worker gives it back). Running: in the started-job registry until it ends.
            running = set(queue.started_job_registry.get_job_ids())
            taken = set(queue.intermediate_queue.get_job_ids()) - running
            waiting = queue.count + queue.scheduled_job_registry.count + len(taken)
            return Depth(waiting, len(running))

        return read
