"""The queue's real parts: Debian's redis-server and rabbitmq-server, and the worker as
`make worker` starts it."""

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from _pytest.mark import ParameterSet

from app.observability import multiprocess
from app.queues.adapters import adapter
from app.queues.registry import QUEUE_LIBRARIES
from app.settings import Settings
from harness.logs import app_lines
from harness.processes import children, die_with_parent, free_port, spawn, wait_for
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

    def crash(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def remove(self) -> None:
        self.stop()  # its directory is the test's

    def waiting_and_unacked(self, task_queue: str = "celery") -> tuple[float, float]:
        return waiting_and_unacked({"BROKER_URL": self.url, "TASK_QUEUE": task_queue})


class RabbitMQServer:
    """Debian's rabbitmq-server as its own node on free ports, with the management plugin (where
    the worker reads the queue depth), in directories its `rabbitmq` user owns. Its process group
    is stopped: stopping the wrapper alone would leave the Erlang VM running."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port, self.management_port, self.dist_port = free_port(), free_port(), free_port()
        self.process: subprocess.Popen[bytes] | None = None
        user = pwd.getpwnam("rabbitmq")
        # Its own directory, outside pytest's (which only root may enter); removed at the end.
        self.home = home = Path(tempfile.mkdtemp(prefix="rabbitmq-test-"))
        (home / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.management_port}\n"
            "collect_statistics_interval = 500\n"  # the depth the management API reports, within 0.5 s
        )
        (home / "enabled_plugins").write_text("[rabbitmq_management].\n")
        for path in (home, *home.iterdir()):
            os.chown(path, user.pw_uid, user.pw_gid)
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "RABBITMQ_NODENAME": f"test-{self.port}@localhost",
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def management_url(self) -> str:
        return f"http://guest:guest@127.0.0.1:{self.management_port}"

    def start(self) -> "RabbitMQServer":
        binary = "/usr/lib/rabbitmq/bin/rabbitmq-server"
        assert os.path.exists(binary), "make test installs Debian's rabbitmq-server"
        with (self.workdir / "rabbitmq.out").open("ab") as out:
            self.process = subprocess.Popen(
                ["runuser", "-u", "rabbitmq", "--", "env", *(f"{k}={v}" for k, v in self.env.items()), binary],
                cwd=self.home,
                env=self.env,
                stdout=out,
                stderr=out,
                start_new_session=True,  # its own process group, the Erlang VM in it
                preexec_fn=die_with_parent,  # noqa: PLW1509
            )
        wait_for(self._answers, timeout=60, what="rabbitmq-server to answer")
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError((self.workdir / "rabbitmq.out").read_text(errors="replace"))
        try:
            url = f"http://127.0.0.1:{self.management_port}/api/overview"
            return httpx.get(url, auth=("guest", "guest"), timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def _signal_group(self, signum: int) -> None:
        process = self.process
        assert process is not None
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return
        # Our child reaped (a zombie keeps its group), then the rest of the group gone.
        wait_for(
            lambda: process.poll() is not None and not _group_alive(process.pid), timeout=60, what="rabbitmq to stop"
        )

    def stop(self) -> None:
        if self.process is not None and _group_alive(self.process.pid):
            self._signal_group(signal.SIGTERM)

    def crash(self) -> None:
        """SIGKILL to the Erlang VM and everything beside it; its data directory stays for a restart."""
        self._signal_group(signal.SIGKILL)

    def remove(self) -> None:
        """Stopped for good: its directory goes too."""
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    def waiting_and_unacked(self, task_queue: str = "celery") -> tuple[float, float]:
        env = {"BROKER_URL": self.url, "TASK_QUEUE": task_queue, "BROKER_MANAGEMENT_URL": self.management_url}
        return waiting_and_unacked(env)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


Broker = RedisServer | RabbitMQServer


def queue_settings(env: dict[str, str]) -> Settings:
    return Settings(
        **{k.lower(): v for k, v in env.items() if k in ("BROKER_URL", "TASK_QUEUE", "BROKER_MANAGEMENT_URL")}
    )


def waiting_and_unacked(env: dict[str, str]) -> tuple[float, float]:
    """The broker's depth as the worker's /metrics reports it, read here at once."""
    settings = queue_settings(env)
    depth = adapter(settings).depth_reader()()
    return depth.waiting, depth.unacked


class QueueWorker:
    """`python -m app.worker_main`, as `make worker` starts it: the TASK_QUEUE library's own
    worker with `concurrency` processes, the web side's settings."""

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
        self.env.setdefault("WORKER_CONCURRENCY", str(concurrency))
        self.args = [sys.executable, "-m", "app.worker_main"]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "QueueWorker":
        return start_together([self])[0]

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the worker exited with {self.process.returncode}:\n{self.stderr()}")
        try:
            response = httpx.get(self.metrics_url, headers=self._authorization, timeout=2)
        except httpx.TransportError:
            return False
        # Every process has started, and its consumer with it.
        return bool(
            response.status_code == 200
            and Metrics.parse(response.text).get_value("server_worker_processes") == self.concurrency
            and any(line.get("message") == "consumer ready" for line in self.app_logs())
        )

    @property
    def _authorization(self) -> dict[str, str]:
        token = self.env.get("METRICS_TOKEN")
        return {"Authorization": f"Bearer {token}"} if token else {}

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def library_pid(self) -> int:
        """The library's main process: the entry point's one child (0 between a death and its restart)."""
        assert self.process is not None
        return next(iter(children(self.process.pid)), 0)

    def child_pids(self) -> set[int]:
        """The library's worker processes."""
        pid = self.library_pid()
        return children(pid) if pid else set()

    def metrics(self) -> "Metrics":
        response = httpx.get(self.metrics_url, headers=self._authorization, timeout=10)
        assert response.status_code == 200
        return Metrics.parse(response.text)

    def metrics_left(self) -> "Metrics":
        """A stopped worker's values, from the metric files its processes left."""
        return Metrics.of(multiprocess.collect_live(str(self.multiproc_dir)))

    def stop(self, timeout: float = 60) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def app_logs(self) -> list[dict[str, Any]]:
        return app_lines(self.stderr())


def start_together(workers: list[QueueWorker]) -> list[QueueWorker]:
    """Starts every worker at once, then waits for each to be ready, as pods scaled out would."""
    for worker in workers:
        worker.process = spawn(worker.args, worker.env, worker.stderr_path, append=True)
    for worker in workers:
        wait_for(worker._ready, timeout=60, what="the queue worker to be ready")
    return workers


def backend_params(backends: list[tuple[str, str]]) -> list[ParameterSet]:
    """Each (library, broker) as a test parameter, skipped where the library is not registered
    (app/queues/registry.py): a removed backend's cases are skipped, not failed."""
    return [
        pytest.param(
            (library, broker),
            id=f"{library}-{broker}",
            marks=pytest.mark.skipif(
                library not in QUEUE_LIBRARIES, reason=f"{library} is not registered (app/queues/registry.py)"
            ),
        )
        for library, broker in backends
    ]
