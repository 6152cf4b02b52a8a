"""The gunicorn worker: uvicorn's, with a drain deadline and a shutdown the app can see.

uvicorn-worker does not pass gunicorn's graceful timeout on to uvicorn, so a stopping worker
would wait for its background tasks until the master kills it, and they would vanish
uncounted. This worker gives uvicorn a deadline (DRAIN_SECONDS, below gunicorn's
graceful_timeout) and marks the app's backlog as draining when the shutdown starts, so tasks
cancelled at the deadline are counted as dropped with reason "shutdown".
"""

import asyncio
import socket
import sys
from typing import TYPE_CHECKING, Any, ClassVar

import httptools
from gunicorn.arbiter import Arbiter
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from app.settings import Settings

if TYPE_CHECKING:  # the master loads this class: it must not import prometheus_client
    from app.observability.backlog import Backlog

_LATE_REQUEST_GRACE_SECONDS = 0.2
INVALID_REQUEST = "Invalid HTTP request received."


class _HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, whose 400 for a malformed request is logged with the parser's
    reason and the client's address. The request's bytes stay out: they may hold credentials."""

    def data_received(self, data: bytes) -> None:
        # uvicorn's own data_received, with the reason and the client in the refusal's line.
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            client = f"{self.client[0]}:{self.client[1]}" if self.client else None
            self.logger.warning(INVALID_REQUEST, extra={"reason": str(error), "client": client})
            self.send_400_response(INVALID_REQUEST)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()


class _DrainingServer(Server):
    def __init__(self, config: Config, backlog: "Backlog | None") -> None:
        super().__init__(config)
        self._backlog = backlog

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._backlog is not None:
            self._backlog.draining = True
        # uvicorn closes every connection without a request in progress at once, including
        # ones accepted a moment ago whose request is still on its way: the client gets a reset
        # for a request that was never read. Stop accepting first and give those a moment.
        for server in self.servers:
            server.close()
        await asyncio.sleep(_LATE_REQUEST_GRACE_SECONDS)
        await super().shutdown(sockets)


class DrainingUvicornWorker(UvicornWorker):
    # No uvicorn access log (its line has the query string): ACCESS_LOG=true logs the route.
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        **UvicornWorker.CONFIG_KWARGS,
        "http": _HttpProtocol,
        "access_log": False,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.timeout_graceful_shutdown = Settings().drain_seconds

    async def _serve(self) -> None:
        # uvicorn-worker's own _serve, with the server above and the sockets below.
        self.config.app = self.wsgi
        server = _DrainingServer(self.config, getattr(getattr(self.wsgi, "state", None), "backlog", None))
        self._install_sigquit_handler()
        # The bare sockets, not gunicorn's wrappers: uvloop closes a wrapped socket's fd at once
        # and the wrapper's fd again a loop turn later, by then maybe a file another thread just
        # opened (seen: a log line lost to EBADF). A bare socket is detached, and closed once.
        await server.serve(sockets=[listener.sock for listener in self.sockets])
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
