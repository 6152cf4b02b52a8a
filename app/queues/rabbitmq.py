"""The depth of a queue on RabbitMQ, for every library that uses it.

With BROKER_MANAGEMENT_URL, from the management API (as Flower does): the messages ready and those
delivered and unacknowledged. Without it (a default rabbitmq-server has no management plugin),
over AMQP, with a passive declare given by the library's adapter: the messages ready, and the
unacknowledged count unknown, since AMQP does not tell it. Standard library only.
"""

import base64
import json
import logging
import urllib.parse
import urllib.request
from collections.abc import Callable

from app.observability.worker_metrics import DEPTH_READ_TIMEOUT_SECONDS, UNKNOWN, Depth
from app.settings import Settings


def virtual_host(settings: Settings) -> str:
    """BROKER_URL's virtual host as Celery's kombu reads it: no path, `/` or `//` is the default `/`."""
    path = settings.broker_url.path if settings.broker_url is not None else None
    return urllib.parse.unquote(path[1:]) if path and path not in ("/", "//") else "/"


def depth_reader(settings: Settings, ready: Callable[[tuple[str, ...]], int], *queues: str) -> Callable[[], Depth]:
    """The depth of ``queues`` together (Dramatiq's delay queue, where a retry waits for its
    backoff, counts as its queue's). ``ready``: the messages ready in them, over AMQP."""
    if settings.broker_management_url is None:
        logging.getLogger(__name__).warning(
            "no BROKER_MANAGEMENT_URL: the queue depth is read over AMQP, without the unacknowledged count "
            "(NaN), so the Lost panel and BackgroundTasksLost cannot count on this broker"
        )
        return lambda: Depth(ready(queues), UNKNOWN)
    parts = urllib.parse.urlsplit(str(settings.broker_management_url))
    base = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path.rstrip('/')}"
    vhost = urllib.parse.quote(virtual_host(settings), safe="")
    urls = [f"{base}/api/queues/{vhost}/{urllib.parse.quote(name, safe='')}" for name in queues]
    user = urllib.parse.unquote(parts.username or "guest")
    password = urllib.parse.unquote(parts.password or "guest")
    authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def read_one(url: str) -> tuple[int, int]:
        request = urllib.request.Request(url, headers={"Authorization": authorization})  # noqa: S310 - http(s) only
        try:
            with urllib.request.urlopen(request, timeout=DEPTH_READ_TIMEOUT_SECONDS) as response:  # noqa: S310
                body = json.load(response)
        except urllib.error.HTTPError as error:
            if error.code == 404:  # not declared yet: no worker has started, nothing was sent
                return 0, 0
            raise
        return int(body.get("messages_ready", 0)), int(body.get("messages_unacknowledged", 0))

    def read() -> Depth:
        counts = [read_one(url) for url in urls]
        return Depth(sum(ready for ready, _ in counts), sum(unacked for _, unacked in counts))

    return read
