"""The depth of a queue on RabbitMQ, for every library that uses it: read from the management
API (as Flower does), since AMQP tells the messages ready but not those delivered and unacked.
Standard library only."""

import base64
import json
import urllib.parse
import urllib.request
from collections.abc import Callable

from app.observability.worker_metrics import Depth
from app.settings import Settings

MANAGEMENT_PORT = 15672


def management_url(settings: Settings) -> str:
    """BROKER_MANAGEMENT_URL, or BROKER_URL's host and credentials on the management port."""
    if settings.broker_management_url is not None:
        return str(settings.broker_management_url).rstrip("/")
    broker = settings.broker_url
    assert broker is not None
    scheme = "https" if broker.scheme == "amqps" else "http"
    credentials = f"{broker.username or 'guest'}:{broker.password or 'guest'}@"
    return f"{scheme}://{credentials}{broker.host}:{MANAGEMENT_PORT}"


def virtual_host(settings: Settings) -> str:
    """BROKER_URL's virtual host as Celery's kombu reads it: no path, `/` or `//` is the default `/`."""
    path = settings.broker_url.path if settings.broker_url is not None else None
    return urllib.parse.unquote(path[1:]) if path and path not in ("/", "//") else "/"


def depth_reader(settings: Settings, queue: str, *also: str) -> Callable[[], Depth]:
    """``queue``'s depth, with the queues in ``also`` counted in it (Dramatiq's delay queue, where
    a retry waits for its backoff)."""
    parts = urllib.parse.urlsplit(management_url(settings))
    base = f"{parts.scheme}://{parts.hostname}:{parts.port or MANAGEMENT_PORT}{parts.path.rstrip('/')}"
    vhost = urllib.parse.quote(virtual_host(settings), safe="")
    urls = [f"{base}/api/queues/{vhost}/{urllib.parse.quote(name, safe='')}" for name in (queue, *also)]
    user = urllib.parse.unquote(parts.username or "guest")
    password = urllib.parse.unquote(parts.password or "guest")
    authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def read_one(url: str) -> tuple[int, int]:
        request = urllib.request.Request(url, headers={"Authorization": authorization})  # noqa: S310 - http(s) only
        try:
            with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
                body = json.load(response)
        except urllib.error.HTTPError as error:
            if error.code == 404:  # not declared yet: no worker has started, nothing was sent
                return 0, 0
            raise
        return int(body.get("messages_ready", 0)), int(body.get("messages_unacknowledged", 0))

    def read() -> Depth:
        counts = [read_one(url) for url in urls]
        return Depth(queue, sum(ready for ready, _ in counts), sum(unacked for _, unacked in counts))

    return read
