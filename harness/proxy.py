"""A TCP proxy to Redis that holds a message on its way to a worker (a BRPOP's reply), so that a
test can crash Redis at the worst moment for the worker: when the message has left Redis, before
the worker's next command. Deterministic where a crash under traffic is a race."""

import contextlib
import socket
import threading
from collections.abc import Callable
from types import TracebackType

from harness.processes import free_port


class HoldingProxy:
    """127.0.0.1:<port> → 127.0.0.1:``target``. Armed, it holds the next BRPOP reply that carries a
    message until ``release``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.holding = threading.Event()
        self._armed = threading.Event()
        self._released = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def hold_next_delivery(self) -> None:
        self._armed.set()

    def release(self) -> None:
        self._released.set()

    def __enter__(self) -> "HoldingProxy":
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._listener.close()
        self._released.set()
        for open_socket in list(self._sockets):
            with contextlib.suppress(OSError):
                open_socket.shutdown(socket.SHUT_RDWR)
            open_socket.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                if self._listener.fileno() == -1:
                    return  # closed
                continue  # a client gone before it was accepted
            try:
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()  # Redis down: refused, as it would be
                continue
            self._sockets |= {client, server}
            brpop_sent = threading.Event()
            threading.Thread(target=self._pump, args=(client, server, brpop_sent.set, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, None, brpop_sent), daemon=True).start()

    def _pump(
        self,
        source: socket.socket,
        sink: socket.socket,
        on_brpop: Callable[[], None] | None,
        brpop_sent: threading.Event | None,
    ) -> None:
        try:
            while data := source.recv(65536):
                if on_brpop is not None and b"BRPOP" in data:
                    on_brpop()
                if (
                    brpop_sent is not None
                    and brpop_sent.is_set()
                    and data.startswith(b"*2\r\n")
                    and self._armed.is_set()
                ):
                    # The rest of the reply, if it came apart, waits in this socket, crash or not.
                    self._armed.clear()
                    self.holding.set()
                    self._released.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end_socket in (source, sink):
                end_socket.close()
                self._sockets.discard(end_socket)
