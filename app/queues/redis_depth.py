"""The Redis client a worker reads its queue's depth with, whatever the library: each read one
attempt, bounded like every depth read (a scrape must not hang on the broker)."""

import redis

from app.observability.worker_metrics import DEPTH_READ_TIMEOUT_SECONDS
from app.queues.redis_client import redis_client
from app.settings import Settings


def depth_client(settings: Settings) -> redis.Redis:
    timeout = DEPTH_READ_TIMEOUT_SECONDS
    return redis_client(str(settings.broker_url), socket_timeout=timeout, socket_connect_timeout=timeout)
