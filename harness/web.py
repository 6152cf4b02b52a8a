"""The real service: gunicorn with uvicorn workers, as `make run` starts it, and what talks to it."""

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.observability.multiprocess import exposition
from harness.logs import app_lines
from harness.processes import ROOT, children, free_port, spawn, wait_for
from harness.prometheus import Metrics
from harness.receivers import OtlpReceiver, SentryIngest

TOKEN = "tok-" + "x" * 12 + "-e2e-secret"  # a valid API_TOKEN that no placeholder check refuses


def post_scope(path: str, query: bytes) -> dict[str, Any]:
    """The ASGI scope of a POST as uvicorn hands it to an app, for calling one with no HTTP."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8000")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


class Gunicorn:
    """The real service: gunicorn, uvicorn workers, deploy/gunicorn.conf.py."""

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str],
        app: str | None = None,
        workers: int = 2,
        options: tuple[str, ...] = (),
        *,
        root: Path = ROOT,
    ) -> None:
        self.workdir = workdir
        self.root = root  # the tree it runs from
        workdir.mkdir(parents=True, exist_ok=True)
        self.workers = workers
        self.port = free_port()
        self.log_file = workdir / "tasks.log"
        self.multiproc_dir = workdir / "prometheus"
        self.stderr_path = workdir / "gunicorn.stderr"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SENTRY_"))},
            "PORT": str(self.port),
            "WEB_CONCURRENCY": str(workers),
            "LOG_FILE": str(self.log_file),
            "PROMETHEUS_MULTIPROC_DIR": str(self.multiproc_dir),
            **env,
        }
        self.args = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "deploy/gunicorn.conf.py",
            *options,
            *([app] if app else []),
        ]
        self.process: subprocess.Popen[bytes] | None = None
        self._scraper = self.connection_per_request_client()
        self._thread_clients = threading.local()
        self._all_thread_clients: list[httpx.Client] = []

    def start(self) -> "Gunicorn":
        self.process = spawn(self.args, self.env, self.stderr_path, root=self.root)
        wait_for(self._all_workers_up, timeout=60, what="all gunicorn workers to finish startup")
        return self

    def _all_workers_up(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"gunicorn exited with {self.process.returncode}:\n{self.stderr()}")
        return self.started_workers() >= self.workers

    def started_workers(self) -> int:
        """Workers that finished startup since gunicorn started, replacements included."""
        return self.stderr().count("Application startup complete.")

    def stop(self) -> None:
        for client in [self._scraper, *self._all_thread_clients]:
            client.close()
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)

    def worker_pids(self) -> set[int]:
        assert self.process is not None
        return children(self.process.pid)

    def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def metrics_left_behind(self) -> "Metrics":
        """The totals in the multiprocess directory, read as /metrics would, once gunicorn is gone."""
        return Metrics.parse(exposition(str(self.multiproc_dir)).decode())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def connection_per_request_client(self) -> httpx.Client:
        """A new connection per request lets the kernel spread them over the workers."""
        return self.client(limits=httpx.Limits(max_keepalive_connections=0))

    def thread_client(self) -> httpx.Client:
        """This thread's connection-per-request client: one shared by many threads saw EBADF."""
        client: httpx.Client | None = getattr(self._thread_clients, "client", None)
        if client is None:
            client = self._thread_clients.client = self.connection_per_request_client()
            self._all_thread_clients.append(client)
        return client

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def app_logs(self) -> list[dict[str, Any]]:
        return app_lines(self.stderr())

    def log_file_lines(self) -> list[str]:
        return self.log_file.read_text().splitlines() if self.log_file.exists() else []

    def emails_sent(self) -> list[str]:
        """The address of each "Sent email to" line, one per run of send_email (repeats included)."""
        return [line.split()[3].rstrip(":") for line in self.log_file_lines() if line.startswith("Sent email to")]

    def median_scrape_seconds(self, scrapes: int) -> float:
        """How long GET /metrics takes, the median of `scrapes` in a row on one connection."""
        timings = []
        with self.client() as client:
            for _ in range(scrapes):
                began = time.perf_counter()
                assert client.get("/metrics").status_code == 200
                timings.append(time.perf_counter() - began)
        return statistics.median(timings)

    def metrics(self) -> "Metrics":
        response = self._scraper.get("/metrics")
        assert response.status_code == 200
        return Metrics.parse(response.text)

    def wait_for_metrics(
        self, until: Callable[["Metrics"], bool], what: str, since: "Metrics | None" = None
    ) -> "Metrics":
        """Scrapes until `until` holds for the totals, or for their change `since` a scrape, in two
        scrapes in a row; returns the second. One scrape reads the workers' files one after another
        while they are written, so it can show pending at 0 before a count that the app wrote
        earlier; the next scrape shows everything written before it began."""

        def holds() -> Metrics | None:
            metrics = self.metrics()
            change = metrics.since(since) if since is not None else metrics
            return change if until(change) else None

        def check() -> Metrics | None:
            return None if holds() is None else holds()

        result: Metrics = wait_for(check, what=what)
        return result


def trace_id_of(response: httpx.Response) -> str:
    """The trace id from the traceparent header the service returns."""
    version, trace_id, _span_id, _flags = response.headers["traceparent"].split("-")
    assert version == "00"
    return trace_id


@dataclass
class Stack:
    server: Gunicorn
    sentry: SentryIngest
    otlp: OtlpReceiver


def started(server: Gunicorn) -> Iterator[Gunicorn]:
    server.start()
    try:
        yield server
    finally:
        server.stop()
