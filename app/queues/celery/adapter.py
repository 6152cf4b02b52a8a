"""Celery behind the seam (app/queues/__init__.py): its producer, its worker command and the
broker's depth."""

import sys
from collections.abc import Callable

from app.observability.worker_metrics import Depth
from app.queues import rabbitmq
from app.queues.broker import Producer
from app.settings import Settings
from app.task_registry import TaskRegistry

QUEUE = "celery"  # Celery's default queue
# Celery's cluster features, which this template does not use: each keeps one more consumer on the
# broker whose reconnect or shutdown path breaks when the broker dies (the heartbeat's publish to a
# dead broker held a soft shutdown for ever; gossip failed to restart after a crash).
SWITCHES = ("--without-gossip", "--without-mingle", "--without-heartbeat")


def producer(settings: Settings, tasks: TaskRegistry) -> Producer:
    from app.queues.celery.producer import CeleryProducer  # noqa: PLC0415 - Celery loads only when chosen

    return CeleryProducer(settings, tasks)


def worker_command(settings: Settings, argv: list[str]) -> list[str]:  # noqa: ARG001 - the app reads them
    return [sys.executable, "-m", "celery", "-A", "app.queues.celery.worker", "worker", *SWITCHES, *argv]


def worker_env(settings: Settings) -> dict[str, str]:  # noqa: ARG001 - the same for every setting
    return {"REMAP_SIGTERM": "SIGQUIT"}  # SIGTERM as a soft shutdown: running tasks get their deadline


def depth_reader(settings: Settings) -> Callable[[], Depth]:
    if not settings.broker_on_redis:
        return rabbitmq.depth_reader(settings, QUEUE)
    import redis  # noqa: PLC0415

    client = redis.Redis.from_url(str(settings.broker_url), socket_timeout=2, socket_connect_timeout=2)

    def read() -> Depth:
        # kombu's Redis layout: a list per queue, and one hash of delivered, unacknowledged messages.
        with client.pipeline() as pipe:
            pipe.llen(QUEUE)
            pipe.hlen("unacked")
            waiting, unacked = pipe.execute()
        return Depth(QUEUE, int(waiting), int(unacked))

    return read
