"""RQ's queue as both sides build it from settings: the web side to enqueue, the worker's /metrics
to read its depth."""

import redis
from rq import Queue

from app.queues.redis_client import redis_client
from app.queues.rq.names import QUEUE, SERIALIZER
from app.settings import Settings


def job_queue(connection: redis.Redis) -> Queue:
    return Queue(QUEUE, connection=connection, serializer=SERIALIZER)


def producer_connection(settings: Settings) -> redis.Redis:
    attempt = settings.enqueue_attempt_seconds
    return redis_client(
        str(settings.broker_url), socket_timeout=attempt, socket_connect_timeout=attempt, max_connections=64
    )
