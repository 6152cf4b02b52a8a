"""A closed-loop HTTP/1.1 load generator that keeps every latency it measures.

wrk corrects for coordinated omission by filling its histogram with synthetic samples, so
its percentiles are not what any client saw. This one records each request's own time, from
writing it to reading the last byte of its response, over keep-alive connections.
"""

import asyncio
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import uvloop


@dataclass
class Result:
    seconds: float
    latencies: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))  # by status

    @property
    def statuses(self) -> Counter[int]:
        return Counter({status: len(times) for status, times in self.latencies.items()})

    @property
    def responses(self) -> int:
        return sum(self.statuses.values())

    def percentile(self, q: float, status: int = 200) -> float:
        ordered = sorted(self.latencies[status])
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Connection(asyncio.Protocol):
    def __init__(self, request: bytes, result: Result, deadline: float, done: asyncio.Future[None]) -> None:
        self.request, self.result, self.deadline, self.done = request, result, deadline, done
        self.buffer = b""
        self.sent = 0.0
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        self._send()

    def _send(self) -> None:
        self.sent = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[: end + 2].lower()
            at = head.find(b"content-length:")  # every response of the app has one
            length = int(head[at + 15 : head.find(b"\r\n", at)])
            if len(self.buffer) < end + 4 + length:
                return
            now = time.perf_counter()
            self.result.latencies[int(head[9:12])].append(now - self.sent)
            self.buffer = self.buffer[end + 4 + length :]
            if now >= self.deadline:
                self.transport.close()
                return
            self._send()

    def connection_lost(self, _exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _run(host: str, port: int, request: bytes, connections: int, seconds: float) -> Result:
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    result = Result(seconds=seconds)
    deadline = started + seconds
    waits = []
    for _ in range(connections):
        done: asyncio.Future[None] = loop.create_future()
        await loop.create_connection(lambda d=done: _Connection(request, result, deadline, d), host, port)
        waits.append(done)
    await asyncio.gather(*waits)
    result.seconds = time.perf_counter() - started
    return result


def run(
    host: str,
    port: int,
    method: str,
    target: str,
    *,
    connections: int,
    seconds: float,
    headers: dict[str, str] | None = None,
) -> Result:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", "Content-Length: 0"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return uvloop.run(_run(host, port, request, connections, seconds))
