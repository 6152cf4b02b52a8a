"""How fast one worker process drains a full queue: the library bare, with the template's
telemetry, and with its ecosystem's stock instrumentation (bench/queue_peers/).

Each variant's worker runs on a Redis database of its own, concurrency 1. It is stopped (SIGSTOP,
its whole process tree) while its queue is filled, then let go, and timed until the broker holds
nothing of it: the fill, the worker's start and its imports are outside the figure. Variants are
alternated round by round, and compared by the median of the per-round ratios. The CPU is that
of the worker's process tree over the drain, the children it reaped included (RQ's work horses).
"""

import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.queues.adapters import Producer, adapter
from app.queues.envelope import Envelope
from app.queues.task_states import TaskStates, task_states
from app.settings import Settings
from app.task_registry import task_registry
from harness import OtlpReceiver, QueueWorker, RedisServer, SentryIngest, wait_for
from harness.processes import children, free_port, spawn

BACKENDS = ("celery", "dramatiq", "rq")
VARIANTS = ("bare", "template", "stock")
TASK_SECONDS = {"no-op": "0", "1 ms": "0.001"}
ROUNDS = int(os.environ.get("BENCH_QUEUE_ROUNDS", "3"))
# Enough for the bare worker to run several seconds: RQ forks a work horse per job.
TASKS = {"celery": 1000, "dramatiq": 800, "rq": 100}
ARGS = ("bench@example.com", "Welcome!", "Thanks for joining")
ROUTE = "/send-mail/"


def database_url(server: RedisServer, db: int) -> str:
    """The server's database `db`: a variant's own, so that no queue or state is shared."""
    return f"{server.url.rsplit('/', 1)[0]}/{db}"


def _tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        below = children(pid)
    except FileNotFoundError:  # exited since its parent listed it: an RQ work horse
        return pids
    for child in below:
        pids += _tree(child)
    return pids


def _tree_cpu_seconds(pid: int) -> float:
    """User and system time of the tree, with its reaped children's."""
    total = 0
    for each in _tree(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # exited between the listing and the read
            continue
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def _signal_tree(pid: int, signum: int) -> None:
    for each in _tree(pid):
        try:
            os.kill(each, signum)
        except ProcessLookupError:
            continue


class Filler:
    """Puts tasks in a variant's queue as its own producer would."""

    def __init__(self, backend: str, variant: str, settings: Settings) -> None:
        self.fill: Callable[[int], None]
        if variant == "template":
            producer: Producer = adapter(settings).producer(task_registry(settings))
            states: TaskStates | None = task_states(settings)

            def fill(n: int) -> None:
                for _ in range(n):  # as the web side's BrokerBackend: its state, then the message
                    envelope = Envelope.new(ROUTE)
                    assert states is not None
                    states.queued(envelope.task_id, "send_email", ROUTE, envelope.enqueued_at)
                    producer.publish("send_email", ARGS, envelope)

            self.fill = fill
        else:
            self.fill = getattr(self, f"_{backend}")(str(settings.broker_url))

    @staticmethod
    def _celery(url: str) -> Callable[[int], None]:
        from celery import Celery  # noqa: PLC0415

        client = Celery("bench", broker=url, set_as_current=False)
        client.conf.task_serializer = "json"

        def fill(n: int) -> None:
            for _ in range(n):
                client.send_task("send_email", args=ARGS)

        return fill

    @staticmethod
    def _dramatiq(url: str) -> Callable[[int], None]:
        from dramatiq import Message  # noqa: PLC0415
        from dramatiq.brokers.redis import RedisBroker  # noqa: PLC0415

        broker = RedisBroker(url=url, middleware=[])
        broker.declare_queue("default")

        def fill(n: int) -> None:
            for _ in range(n):
                broker.enqueue(Message(queue_name="default", actor_name="send_email", args=ARGS, kwargs={}, options={}))

        return fill

    @staticmethod
    def _rq(url: str) -> Callable[[int], None]:
        from redis import Redis  # noqa: PLC0415
        from rq import Queue  # noqa: PLC0415
        from rq.serializers import JSONSerializer  # noqa: PLC0415

        queue = Queue("default", connection=Redis.from_url(url), serializer=JSONSerializer)

        def fill(n: int) -> None:
            jobs = [Queue.prepare_data("bench.queue_peers.rq_worker.send_email", args=ARGS) for _ in range(n)]
            for start in range(0, n, 500):
                queue.enqueue_many(jobs[start : start + 500])

        return fill


class VariantWorker:
    """One variant's worker, stopped except while it drains."""

    def __init__(self, backend: str, variant: str, work: Path, env: dict[str, str], settings: Settings) -> None:
        self.backend, self.variant, self.work = backend, variant, work
        self.filler = Filler(backend, variant, settings)
        self.depth = adapter(settings).depth_reader()
        self.template: QueueWorker | None = None
        self.process: subprocess.Popen[bytes] | None = None
        if variant == "template":
            self.template = QueueWorker(work, {**env, "TASK_QUEUE": backend, "WORKER_THREADS": "1"}, concurrency=1)
        else:
            self.env = {**os.environ, **env, "BENCH_VARIANT": variant, "dramatiq_queue_prefetch": "1"}
            self.env["dramatiq_prom_db"] = str(work / "dramatiq-prometheus")
            self.env["dramatiq_prom_host"] = "127.0.0.1"
            self.env["dramatiq_prom_port"] = str(free_port())

    def _command(self) -> list[str]:
        python = sys.executable
        return {
            "celery": [
                python,
                "-m",
                "celery",
                "-A",
                "bench.queue_peers.celery_app",
                "worker",
                "--concurrency=1",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel=WARNING",
            ],
            "dramatiq": [
                python,
                "-m",
                "dramatiq",
                "bench.queue_peers.dramatiq_app:broker",
                "--processes=1",
                "--threads=1",
            ],
            "rq": [
                python,
                "-m",
                "rq.cli",
                "worker-pool",
                "--num-workers=1",
                "--logging-level=WARNING",
                f"--url={self.env['BROKER_URL']}",
                "--worker-class=bench.queue_peers.rq_worker.BenchWorker",
                "--serializer=rq.serializers.JSONSerializer",
                "default",
            ],
        }[self.backend]

    @property
    def pid(self) -> int:
        if self.template is not None:
            assert self.template.process is not None
            return self.template.process.pid
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        if self.template is not None:
            self.template.start()
        else:
            self.process = spawn(self._command(), self.env, self.work / "worker.stderr")
        self.drain(TASKS[self.backend] // 5)  # warm: imports done, connections open, the first tasks run

    def pending(self) -> int:
        depth = self.depth()
        return depth.waiting + depth.unacked

    def _drained(self) -> bool:
        process = self.template.process if self.template is not None else self.process
        assert process is not None
        if process.poll() is not None:
            raise RuntimeError(f"{self.backend} {self.variant} exited: see {self.work}")
        return self.pending() == 0

    def drain(self, tasks: int) -> tuple[float, float]:
        """Fills the queue with the worker stopped, lets it go; its seconds and CPU seconds."""
        _signal_tree(self.pid, signal.SIGSTOP)
        self.filler.fill(tasks)
        cpu = _tree_cpu_seconds(self.pid)
        started = time.perf_counter()
        _signal_tree(self.pid, signal.SIGCONT)
        wait_for(self._drained, timeout=300, what=f"{self.backend} {self.variant} to drain")
        seconds = time.perf_counter() - started
        return seconds, _tree_cpu_seconds(self.pid) - cpu

    def stop(self) -> None:
        _signal_tree(self.pid, signal.SIGCONT)
        if self.template is not None:
            self.template.stop()
        elif self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _signal_tree(self.process.pid, signal.SIGKILL)


@contextmanager
def _workers(
    backend: str, task: str, work: Path, *, redis: RedisServer, otlp: OtlpReceiver, sentry: SentryIngest
) -> Iterator[dict[str, VariantWorker]]:
    workers: dict[str, VariantWorker] = {}
    try:
        for db, variant in enumerate(VARIANTS, start=1):
            url = database_url(redis, db)
            home = work / f"{backend}-{task.replace(' ', '')}-{variant}"
            env = {
                "BROKER_URL": url,
                "EMAIL_SEND_SECONDS": TASK_SECONDS[task],
                "LOG_FILE": str(home / "tasks.log"),
                "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
                "SENTRY_DSN": sentry.dsn,
            }
            settings = Settings(task_queue=backend, broker_url=url, log_file=home / "tasks.log")  # type: ignore[arg-type]
            workers[variant] = worker = VariantWorker(backend, variant, home, env, settings)
            worker.start()
        yield workers
    finally:
        for worker in workers.values():
            worker.stop()


def _profile(worker: VariantWorker, tasks: int, out: Path) -> dict[str, float]:
    """Shares of the template worker's CPU samples, from py-spy over one drain."""
    spy = subprocess.Popen(  # noqa: S603 - the venv's py-spy, on our own worker
        [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(worker.pid),
            "--subprocesses",
            "--nonblocking",
            "--full-filenames",
            "--rate",
            "250",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # py-spy attaches
    worker.drain(tasks)
    spy.send_signal(signal.SIGINT)
    spy.wait(timeout=60)
    return split_samples(out.read_text())


# The first that a sample's stack matches names its part: the exporter's thread, then metrics,
# then the task state store, then spans (the SDK, the API, the instrumentation).
PARTS = (
    (
        "export",
        ("/opentelemetry/exporter/", "/opentelemetry/sdk/trace/export/", "/opentelemetry/sdk/_shared_internal/"),
    ),
    ("metrics", ("/prometheus_client/", "/app/observability/metrics.py", "/app/observability/books.py")),
    ("state store", ("/app/queues/task_states.py",)),
    ("span", ("/opentelemetry/",)),
)


def split_samples(raw: str) -> dict[str, float]:
    counts = dict.fromkeys([name for name, _ in PARTS] + ["rest"], 0)
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        part = next((name for name, needles in PARTS if any(n in stack for n in needles)), "rest")
        counts[part] += int(count)
    total = sum(counts.values()) or 1
    return {part: n / total for part, n in counts.items()}


def worker_throughput(work: Path, otlp: OtlpReceiver, sentry: SentryIngest) -> dict[str, Any]:
    redis = RedisServer(work / "queue-redis").start()
    results: dict[str, Any] = {}
    try:
        for backend in BACKENDS:
            results[backend] = {}
            for task in TASK_SECONDS:
                print(f"  {backend}, {task} task …", flush=True)
                with _workers(backend, task, work, redis=redis, otlp=otlp, sentry=sentry) as workers:
                    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
                    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
                    for _ in range(ROUNDS):
                        for variant, worker in workers.items():
                            seconds, cpu_seconds = worker.drain(TASKS[backend])
                            rates[variant].append(TASKS[backend] / seconds)
                            cpu[variant].append(cpu_seconds / TASKS[backend] * 1e6)
                    figures = _figures(rates, cpu)
                    if task == "no-op":
                        shares = _profile(workers["template"], TASKS[backend], work / f"{backend}.spy")
                        us = figures["variants"]["template"]["cpu_us_per_task"]
                        figures["by_part_us"] = {p: s * us for p, s in shares.items()}
                results[backend][task] = figures
    finally:
        redis.stop()
    return results


def _figures(rates: dict[str, list[float]], cpu: dict[str, list[float]]) -> dict[str, Any]:
    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))

    return {
        "variants": {
            v: {"tasks_per_s": statistics.median(rates[v]), "cpu_us_per_task": statistics.median(cpu[v])}
            for v in VARIANTS
        },
        "template_vs_bare": ratio("template", "bare"),
        "template_vs_stock": ratio("template", "stock"),
        # Bare over template: 1.0 is no cost, as the throughput ratios read.
        "cpu_bare_vs_template": statistics.median(b / t for b, t in zip(cpu["bare"], cpu["template"], strict=True)),
    }
