"""Celery behind the seam (app/queues/adapters.py): its producer, its worker command and the
broker's depth."""

import os
import sys
from collections.abc import Callable

from app.observability.worker_metrics import DEPTH_READ_TIMEOUT_SECONDS, Depth
from app.queues import rabbitmq
from app.queues.adapters import Adapter, Producer
from app.queues.celery.names import QUEUE
from app.queues.redis_depth import depth_client
from app.settings import Settings
from app.task_registry import TaskRegistry

# Celery's cluster features, which this template does not use: each keeps one more consumer on the
# broker whose reconnect or shutdown path breaks when the broker dies (the heartbeat's publish to a
# dead broker held a shutdown for ever; gossip failed to restart after a crash).
SWITCHES = ("--without-gossip", "--without-mingle", "--without-heartbeat")


class CeleryAdapter(Adapter):
    QUEUE = QUEUE

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def producer(self, tasks: TaskRegistry) -> Producer:
        from app.queues.celery.producer import CeleryProducer  # noqa: PLC0415 - Celery loads only when chosen

        return CeleryProducer(self.settings, tasks)

    def worker_command(self, argv: list[str]) -> list[str]:
        # A node name of its own: Celery's default (celery@<host>) is the same for every worker on
        # one host, and RabbitMQ gives the node's remote-control queue to one connection only, so a
        # second worker there dies at start (RESOURCE_LOCKED). The entry point's pid survives the
        # restarts.
        node = f"--hostname=worker{os.getpid()}@%h"
        return [sys.executable, "-m", "celery", "-A", "app.queues.celery.worker", "worker", *SWITCHES, node, *argv]

    def worker_env(self) -> dict[str, str]:
        return {}

    def depth_reader(self) -> Callable[[], Depth]:
        if not self.settings.broker_on_redis:
            return rabbitmq.depth_reader(self.settings, _ready_over_amqp(self.settings), QUEUE)
        client = depth_client(self.settings)

        def read() -> Depth:
            # kombu's Redis layout: a list per queue, and one hash of delivered, unacknowledged messages.
            with client.pipeline() as pipe:
                pipe.llen(QUEUE)
                pipe.hlen("unacked")
                waiting, unacked = pipe.execute()
            return Depth(int(waiting), int(unacked))

        return read


def _ready_over_amqp(settings: Settings) -> Callable[[tuple[str, ...]], int]:
    """The messages ready in queues, by a passive declare on a connection of each read's own (one
    per scrape: nothing to keep alive between them)."""
    from kombu.connection import Connection  # noqa: PLC0415

    timeout = DEPTH_READ_TIMEOUT_SECONDS
    options = {"read_timeout": timeout, "write_timeout": timeout}

    def ready(queues: tuple[str, ...]) -> int:
        total = 0
        connection = Connection(str(settings.broker_url), connect_timeout=timeout, transport_options=options)  # type: ignore[no-untyped-call]
        with connection:
            for queue in queues:
                try:
                    with connection.channel() as channel:  # type: ignore[no-untyped-call]
                        total += channel.queue_declare(queue=queue, passive=True).message_count
                except connection.channel_errors as error:
                    if getattr(error, "code", None) != 404:
                        raise
                    # not declared yet: no worker has started, nothing was sent
        return total

    return ready
