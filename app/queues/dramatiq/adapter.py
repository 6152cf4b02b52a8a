"""Dramatiq behind the seam (app/queues/adapters.py): its producer, its worker command and the
broker's depth."""

import sys
from collections.abc import Callable

from app.observability.worker_metrics import DEPTH_READ_TIMEOUT_SECONDS, Depth
from app.queues import rabbitmq
from app.queues.adapters import Adapter, Producer
from app.queues.dramatiq.names import DELAY_QUEUE, QUEUE
from app.queues.redis_depth import depth_client
from app.settings import Settings
from app.task_registry import TaskRegistry


class DramatiqAdapter(Adapter):
    QUEUE = QUEUE

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def producer(self, tasks: TaskRegistry) -> Producer:  # noqa: ARG002 - sent by name
        from app.queues.dramatiq.producer import DramatiqProducer  # noqa: PLC0415 - Dramatiq loads only when chosen

        return DramatiqProducer(self.settings)

    def worker_command(self, argv: list[str]) -> list[str]:
        settings = self.settings
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

    def worker_env(self) -> dict[str, str]:
        # As many messages prefetched as threads: a busy process never sits on one another could start.
        return {"dramatiq_queue_prefetch": str(self.settings.worker_threads)}

    def depth_reader(self) -> Callable[[], Depth]:
        # A retry waits for its backoff in Dramatiq's delay queue: counted as the queue's.
        if not self.settings.broker_on_redis:
            return rabbitmq.depth_reader(self.settings, _ready_over_amqp(self.settings), QUEUE, DELAY_QUEUE)
        client = depth_client(self.settings)

        def read() -> Depth:
            # Dramatiq's Redis layout, per queue: a list of waiting ids, and a hash of every message
            # not yet acked.
            with client.pipeline() as pipe:
                for name in (QUEUE, DELAY_QUEUE):
                    pipe.llen(f"dramatiq:{name}")
                    pipe.hlen(f"dramatiq:{name}.msgs")
                waiting, stored, delay_waiting, delay_stored = (int(n) for n in pipe.execute())
            return Depth(waiting + delay_waiting, stored - waiting + delay_stored - delay_waiting)

        return read


def _ready_over_amqp(settings: Settings) -> Callable[[tuple[str, ...]], int]:
    """The messages ready in queues, by a passive declare on a connection of each read's own (one
    per scrape: nothing to keep alive between them)."""
    import pika  # noqa: PLC0415 - Dramatiq's AMQP client
    from pika.exceptions import AMQPConnectionError, ChannelClosedByBroker  # noqa: PLC0415

    from app.queues.dramatiq.client import pika_url  # noqa: PLC0415

    parameters = pika.URLParameters(pika_url(settings, DEPTH_READ_TIMEOUT_SECONDS))

    def ready(queues: tuple[str, ...]) -> int:
        try:
            connection = pika.BlockingConnection(parameters)
        except AMQPConnectionError as error:  # pika wraps the socket's error without chaining it
            raise ConnectionError(f"RabbitMQ did not answer: {error!r}") from error
        total = 0
        try:
            for queue in queues:
                try:
                    total += connection.channel().queue_declare(queue, passive=True).method.message_count
                except ChannelClosedByBroker as error:
                    if error.reply_code != 404:
                        raise
                    # not declared yet: no worker has started, nothing was sent
        finally:
            connection.close()
        return total

    return ready
