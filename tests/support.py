"""Real parts for the tests: gunicorn, a Sentry ingest stand-in and an OTLP receiver.

Every server listens on 127.0.0.1 only. gunicorn gets SIGTERM if the test process dies
(PR_SET_PDEATHSIG), so nothing outlives a crashed run.
"""

import ctypes
import gzip
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client.parser import text_string_to_metric_families

from app.observability.multiprocess import exposition

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
TOKEN = "tok-" + "x" * 12 + "-e2e-secret"  # a valid API_TOKEN that no placeholder check refuses


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


LOG_KEYS = {"time", "level", "logger", "pid", "message"}


def log_lines(output: str) -> list[dict[str, Any]]:
    """Every line of a process's output as a JSON object with the common keys; fails on one that is not."""
    lines = []
    for number, line in enumerate(output.splitlines(), 1):
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"line {number} is not JSON: {line!r}") from None
        assert isinstance(parsed, dict), line
        assert parsed.keys() >= LOG_KEYS, line
        lines.append(parsed)
    return lines


def app_lines(output: str) -> list[dict[str, Any]]:
    """The app's own log lines in a process's output (every line is a JSON object: test_logs.py)."""
    lines = (json.loads(line) for line in output.splitlines() if line.startswith("{"))
    return [line for line in lines if line["logger"] == "app" or line["logger"].startswith("app.")]


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- local HTTP receivers -------------------------------------------------------------------


class _Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, on_post: Callable[[str, dict[str, str], bytes], bytes]) -> None:
        self.on_post = on_post

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                reply = on_post(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                self.send_response(200)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


@dataclass
class SentryIngest:
    """Stands in for Sentry's envelope endpoint and keeps every byte it received."""

    raw: list[bytes] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.server = _Recorder(self._record)

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.server.port}/1"

    def _record(self, path: str, headers: dict[str, str], body: bytes) -> bytes:
        lines = body.split(b"\n")
        events = []
        # An envelope: a header line, then (item header, payload) pairs.
        for item_header, payload in zip(lines[1::2], lines[2::2], strict=False):
            if json.loads(item_header).get("type") == "event":
                events.append(json.loads(payload))
        with self.lock:
            self.raw.append(path.encode() + b"\n" + json.dumps(headers).encode() + b"\n" + body)
            self.events.extend(events)
        return b"{}"

    def events_tagged(self, key: str, value: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events if e.get("tags", {}).get(key) == value]

    def everything(self) -> bytes:
        with self.lock:
            return b"\n".join(self.raw)


@dataclass(frozen=True)
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    status_code: int  # 0 unset, 1 ok, 2 error
    attributes: dict[str, Any]
    event_names: list[str]


class OtlpReceiver:
    """Accepts OTLP/HTTP protobuf trace exports, as a collector would."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.paths: set[str] = set()
        self.lock = threading.Lock()
        self.server = _Recorder(self._record)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def _record(self, path: str, headers: dict[str, str], body: bytes) -> bytes:
        with self.lock:
            self.paths.add(path)
        if path != "/v1/traces":
            return b""
        assert headers.get("content-type") == "application/x-protobuf"
        request = ExportTraceServiceRequest.FromString(body)
        spans = [
            Span(
                name=s.name,
                trace_id=s.trace_id.hex(),
                span_id=s.span_id.hex(),
                parent_span_id=s.parent_span_id.hex(),
                kind=s.kind,
                status_code=s.status.code,
                attributes={a.key: _any_value(a.value) for a in s.attributes},
                event_names=[e.name for e in s.events],
            )
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for s in ss.spans
        ]
        with self.lock:
            self.spans.extend(spans)
        return ExportTraceServiceResponse().SerializeToString()

    def trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]


def _any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


# --- prometheus ------------------------------------------------------------------------------


@dataclass
class Prometheus:
    url: str
    at: float | None = None  # evaluation time; None: now

    def query(self, expr: str) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr} if self.at is None else {"query": expr, "time": self.at}
        response = httpx.get(self.url + "/api/v1/query", params=params, timeout=30)
        body = response.json()
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def label_values(self, label: str, match: str) -> list[str]:
        response = httpx.get(self.url + f"/api/v1/label/{label}/values", params={"match[]": match}, timeout=30)
        values: list[str] = response.json()["data"]
        return values


def start_prometheus(workdir: Path, targets: dict[str, str]) -> Iterator[Prometheus]:
    """Debian's prometheus with the repo's config and rules, scraping each job's target every second."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS_DIR / "alerts.yml")]
    config.pop("alerting")  # no Alertmanager here
    config["scrape_configs"] = [
        {**job, "static_configs": [{"targets": [targets[job["job_name"]]]}]}
        for job in config["scrape_configs"]
        if job["job_name"] in targets
    ]
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    binary = shutil.which("prometheus")
    assert binary is not None, "make test installs Debian's prometheus"
    args = [
        binary,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    process = spawn(args, None, workdir / "prometheus.log")
    prometheus = Prometheus(f"http://127.0.0.1:{port}")
    try:
        wait_for(lambda: _prometheus_ready(prometheus), what="prometheus to be ready")
        yield prometheus
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def _prometheus_ready(prometheus: Prometheus) -> bool:
    try:
        return httpx.get(prometheus.url + "/-/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


# --- gunicorn -------------------------------------------------------------------------------


def die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(args: list[str], env: dict[str, str] | None, log: Path, *, append: bool = False) -> "subprocess.Popen[bytes]":
    """A server process from the project root, its output in `log`, stopped if the tests die."""
    with log.open("ab" if append else "wb") as out:
        return subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=out,
            preexec_fn=die_with_parent,  # noqa: PLW1509
        )


def children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(child) for child in path.read_text().split()} if path.exists() else set()


class Gunicorn:
    """The real service: gunicorn, uvicorn workers, deploy/gunicorn.conf.py."""

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str],
        app: str | None = None,
        workers: int = 2,
        options: tuple[str, ...] = (),
    ) -> None:
        self.workdir = workdir
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
        self.process = spawn(self.args, self.env, self.stderr_path)
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


class Metrics(dict[tuple[str, frozenset[tuple[str, str]]], float]):
    @classmethod
    def parse(cls, text: str) -> "Metrics":
        metrics = cls()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                metrics[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return metrics

    def since(self, before: "Metrics") -> "Metrics":
        return Metrics({key: self.get(key, 0.0) - before.get(key, 0.0) for key in self.keys() | before.keys()})

    def get_value(self, name: str, **labels: str) -> float:
        """The sum over every series of `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.items() if n == name and wanted <= ls)

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(ls)[label] for (n, ls) in self if n == name and label in dict(ls)}


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


# --- the queue: redis-server and a Celery worker ------------------------------------------------


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
