"""The queue's real parts: Debian's redis-server and the worker as `make worker` starts it."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import redis

from harness.logs import app_lines
from harness.processes import children, free_port, spawn, wait_for
from harness.prometheus import Metrics


class RedisServer:
    """Debian's redis-server on a free port, appending every write to disk (fsync always), as
    a broker that must survive its own restart should."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        assert binary is not None, "make test installs Debian's redis-server"
        args = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.workdir)]
        persistence = ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        self.process = spawn(args + persistence, None, self.workdir / "redis.log", append=True)
        wait_for(self._answers, what="redis-server to answer")
        return self

    def _answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def client(self) -> "redis.Redis":
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)

    def waiting_and_unacked(self) -> tuple[int, int]:
        client = self.client()
        return int(client.llen("celery")), int(client.hlen("unacked"))


class CeleryWorker:
    """`python -m app.worker_main`, as `make worker` starts it: prefork, the web side's settings."""

    def __init__(self, workdir: Path, env: dict[str, str], concurrency: int = 2) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.concurrency = concurrency
        self.metrics_port = free_port()
        self.multiproc_dir = workdir / "prometheus"
        self.multiproc_dir.mkdir(exist_ok=True)
        self.stderr_path = workdir / "worker.stderr"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SENTRY_"))},
            "WORKER_METRICS_PORT": str(self.metrics_port),
            "WORKER_ALIVE_FILE": str(workdir / "consumer-alive"),
            "PROMETHEUS_MULTIPROC_DIR": str(self.multiproc_dir),
            **env,
        }
        self.args = [sys.executable, "-m", "app.worker_main", f"--concurrency={concurrency}"]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "CeleryWorker":
        self.process = spawn(self.args, self.env, self.stderr_path, append=True)
        wait_for(self._ready, timeout=60, what="the celery worker to be ready")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"celery exited with {self.process.returncode}:\n{self.stderr()}")
        if len(self.child_pids()) < self.concurrency or " ready." not in self.stderr():
            return False
        try:
            return httpx.get(self.metrics_url, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def celery_pid(self) -> int:
        """Celery's main process: the entry point's one child (0 between a death and its restart)."""
        assert self.process is not None
        return next(iter(children(self.process.pid)), 0)

    def child_pids(self) -> set[int]:
        """Celery's prefork children."""
        pid = self.celery_pid()
        return children(pid) if pid else set()

    def metrics(self) -> "Metrics":
        response = httpx.get(self.metrics_url, timeout=10)
        assert response.status_code == 200
        return Metrics.parse(response.text)

    def stop(self, timeout: float = 60) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def app_logs(self) -> list[dict[str, Any]]:
        return app_lines(self.stderr())
