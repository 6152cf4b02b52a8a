"""The Dramatiq broker both sides build from settings: the web side to publish, the worker to run.

The settings below are the ones that make it lose nothing silently (docs/queues.md,
"What each library guarantees"):
- acknowledgements after processing (Dramatiq's only mode): a message leaves the broker only
  when its task ended, so a process that dies mid-task leaves it there;
- on Redis, a dead worker's messages are given back by the next maintenance after its heartbeats
  stop for QUEUE_VISIBILITY_TIMEOUT_SECONDS (Dramatiq's heartbeat timeout, above the time limit:
  a process busy with its longest task sends none). On RabbitMQ, the broker redelivers them as
  soon as the connection closes, with its `redelivered` flag;
- publisher confirms on RabbitMQ: a 200 means the broker holds the message;
- retries only as a task's retry policy says (Dramatiq retries any failure 20 times by default);
- TASK_TIME_LIMIT_SECONDS for Dramatiq's 10-minute default.
"""

from typing import Any
from urllib.parse import quote, urlencode

from dramatiq import Broker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware, default_middleware

from app.queues.rabbitmq import virtual_host
from app.settings import Settings

# Of a million broker commands, how many also run Dramatiq's maintenance, which gives back the
# messages of workers whose heartbeats stopped (Dramatiq's default is a thousand: on an idle worker,
# minutes after the visibility timeout). It reads one sorted set unless a worker is dead: cheap.
MAINTENANCE_CHANCE = 100_000


def make_broker(settings: Settings, middleware: list[Middleware], *, producer: bool) -> Broker:
    assert settings.broker_url is not None
    url = str(settings.broker_url)
    attempt = settings.enqueue_attempt_seconds
    stack = middleware if producer else [m() for m in default_middleware] + middleware
    if settings.broker_on_redis:
        options: dict[str, Any] = {"socket_timeout": attempt, "socket_connect_timeout": attempt} if producer else {}
        return RedisBroker(  # type: ignore[no-untyped-call]
            url=url,
            middleware=stack,
            heartbeat_timeout=int(settings.queue_visibility_timeout_seconds * 1000),
            maintenance_chance=MAINTENANCE_CHANCE,
            **options,
        )
    url = pika_url(settings, attempt if producer else None)
    return RabbitmqBroker(url=url, middleware=stack, confirm_delivery=True)


def pika_url(settings: Settings, timeout: float | None) -> str:
    """BROKER_URL as pika reads it; with ``timeout``, one attempt to connect, bounded by it."""
    broker = settings.broker_url
    assert broker is not None
    # pika names the virtual host in the path, quoted (the default `/` is `%2F`).
    credentials = f"{broker.username or 'guest'}:{broker.password or 'guest'}"
    url = (
        f"{broker.scheme}://{credentials}@{broker.host}:{broker.port or 5672}/{quote(virtual_host(settings), safe='')}"
    )
    if timeout is not None:
        url += "?" + urlencode({"socket_timeout": timeout, "stack_timeout": timeout * 2, "connection_attempts": 1})
    return url
