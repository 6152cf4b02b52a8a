"""make bench: what observability costs, as ratios to bare FastAPI measured in one run.

Every server is real gunicorn with uvicorn workers (deploy/gunicorn.conf.py); the load comes
from bench/loadgen.py in a process of its own, and every percentile is of latencies a client
really saw. Variants are measured in alternation (A/B/C, A/B/C, ...) and compared round by
round, because this machine is shared and noisy. A run in which one worker did most of the
work (it accepted most of the keep-alive connections) measures the kernel, not the app, and
is run again.
"""

import asyncio
import json
import logging
import multiprocessing
import os
import platform
import signal
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any
from unittest import mock

# The wrapper benchmark's metrics must be multiprocess ones, as in a worker: prometheus_client
# picks its storage when first imported.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="bench-metrics-"))

from anyio import CapacityLimiter
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NoOpTracer
from starlette.background import BackgroundTask

from app.main import create_app
from app.observability.backlog import Backlog
from app.observability.context import RequestRecord, WebTelemetry
from app.observability.errors import start_sentry
from app.observability.instrumentation import instrument_app
from app.observability.logging import LOGGER_NAME, configure_logging
from app.observability.metrics import Metrics
from app.observability.task_wrapper import run_batch
from app.observability.tracing import make_tracer_provider, start_export
from app.settings import Settings
from bench import bare_app, loadgen
from bench.enqueue_cost import enqueue_breakdown
from bench.queue_throughput import BACKENDS, TASKS, VARIANTS, worker_throughput
from bench.queue_throughput import ROUNDS as QUEUE_ROUNDS
from docs.generate import main as generate_docs
from harness import (
    TOKEN,
    Gunicorn,
    OtlpReceiver,
    QueueWorker,
    RedisServer,
    SentryIngest,
    post_scope,
    wait_for,
)

OUT = Path(__file__).resolve().parent
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "6"))
CONNECTIONS = 32
SAMPLING_RATES = ("1.0", "0.1", "0.01")  # full_vs_bare_by_sampling's keys; 1.0 is the full variant
MAX_WORKER_SHARE = 0.7  # of the workers' CPU in a run; above it, the run is repeated
TARGETS = {
    "metrics_only_vs_pfi": (">=", 1.00),
    "metrics_only_vs_bare": (">=", 0.90),
    "full_vs_stock": (">=", 2.5),
    "full_vs_bare": (">=", 0.60),
    "wrapper_us_per_task": ("<=", 60.0),
    "scrape_ratio_500_vs_0": ("<=", 1.5),
    "sync_p99_ratio_200_pending": ("<=", 2.0),
    "tasks_completed_per_response_at_saturation": (">=", 0.99),  # or the excess shed with 503s
}
QUEUE_TARGETS = {  # each per backend
    "worker_vs_bare": (">=", 0.85),
    "worker_cpu_vs_bare": (">=", 0.85),
    "worker_vs_stock": (">=", 1.2),
    "enqueue_vs_inprocess": (">=", 0.6),
}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _load(
    pool: ProcessPoolExecutor,
    server: Gunicorn,
    target: str,
    seconds: float,
    *,
    method: str = "POST",
    connections: int = CONNECTIONS,
) -> loadgen.Result:
    return pool.submit(
        loadgen.run, "127.0.0.1", server.port, method, target, connections=connections, seconds=seconds
    ).result()


@dataclass
class Run:
    responses_per_s: float
    tasks_per_s: float
    cpu_us_per_response: float
    worker_share: float
    p50_ms: float
    p99_ms: float


def _throughput_run(pool: ProcessPoolExecutor, server: Gunicorn) -> Run:
    workers = sorted(server.worker_pids())
    for _ in range(5):
        lines_before = len(server.log_file_lines())
        cpu_before = [_cpu_seconds(pid) for pid in workers]
        result = _load(pool, server, "/log/?msg=bench", SECONDS)
        cpu = [_cpu_seconds(pid) - before for pid, before in zip(workers, cpu_before, strict=True)]
        tasks = len(server.log_file_lines()) - lines_before  # finished within the window
        ok = result.statuses[200]
        wait_for(lambda n=lines_before + ok: len(server.log_file_lines()) == n, timeout=60, what="the run's tasks")
        share = max(cpu) / sum(cpu)
        if share <= MAX_WORKER_SHARE:
            return Run(
                responses_per_s=ok / result.seconds,
                tasks_per_s=tasks / result.seconds,
                cpu_us_per_response=sum(cpu) / result.responses * 1e6,
                worker_share=share,
                p50_ms=result.percentile(0.50) * 1e3,
                p99_ms=result.percentile(0.99) * 1e3,
            )
        print(f"  one worker took {share:.0%} of the CPU: run again", flush=True)
    raise SystemExit("every run was lopsided: the kernel gave one worker the connections")


def throughput(pool: ProcessPoolExecutor, work: Path) -> dict[str, Any]:
    sentry, otlp, otlp_sampled, otlp_stock = SentryIngest(), OtlpReceiver(), OtlpReceiver(), OtlpReceiver()
    everything = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "SENTRY_DSN": sentry.dsn, "API_TOKEN": TOKEN}
    servers = {
        "bare": Gunicorn(work / "bare", env={}, app="bench.bare_app:create()"),
        "pfi": Gunicorn(work / "pfi", env={}, app="bench.peer_apps:pfi()"),
        "stock": Gunicorn(
            work / "stock",
            env={"BENCH_OTLP_ENDPOINT": otlp_stock.endpoint, "BENCH_SENTRY_DSN": sentry.dsn},
            app="bench.peer_apps:stock()",
        ),
        "metrics_only": Gunicorn(work / "metrics", env={"OTEL_SDK_DISABLED": "true"}),
        "full": Gunicorn(work / "full", env=everything),
        # What a busy service would run: one trace in ten, or in a hundred, decided at the edge.
        **{
            f"full_sampled_{rate}": Gunicorn(
                work / f"sampled-{rate}",
                env={
                    **everything,
                    "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_sampled.endpoint,
                    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                    "OTEL_TRACES_SAMPLER_ARG": rate,
                },
            )
            for rate in SAMPLING_RATES[1:]
        },
    }
    runs: dict[str, list[Run]] = {name: [] for name in servers}
    try:
        for server in servers.values():
            server.start()
            _load(pool, server, "/log/?msg=warm-up", 1.0)
        for round_ in range(ROUNDS):
            for name, server in servers.items():
                runs[name].append(run := _throughput_run(pool, server))
                print(f"  round {round_ + 1} {name}: {run}", flush=True)
        # A span per request (503s included) and one per task.
        full = servers["full"].metrics()
        expected_spans = full.get_value("http_server_request_duration_seconds_count", route="/log/") + full.get_value(
            "background_tasks_scheduled_total"
        )
        wait_for(lambda: len(otlp.spans) >= expected_spans, timeout=30, what="the full variant's spans")
        time.sleep(1)  # a span too many would arrive in the next export
        spans = len(otlp.spans)
    finally:
        for server in servers.values():
            server.stop()
        for receiver in (sentry, otlp, otlp_sampled, otlp_stock):
            receiver.server.stop()

    def ratios(name: str, field: str, to: str = "bare") -> list[float]:
        return [getattr(a, field) / getattr(b, field) for a, b in zip(runs[name], runs[to], strict=True)]

    table = {
        name: {
            "responses_per_s": statistics.median(r.responses_per_s for r in rs),
            "tasks_completed_per_s": statistics.median(r.tasks_per_s for r in rs),
            "server_cpu_us_per_response": statistics.median(r.cpu_us_per_response for r in rs),
            "p50_ms": statistics.median(r.p50_ms for r in rs),
            "p99_ms": statistics.median(r.p99_ms for r in rs),
            "throughput_vs_bare": statistics.median(ratios(name, "responses_per_s")),
            "cpu_per_response_vs_bare": statistics.median(ratios(name, "cpu_us_per_response")),
        }
        for name, rs in runs.items()
    }
    return {
        "variants": table,
        "metrics_only_vs_pfi": statistics.median(ratios("metrics_only", "responses_per_s", to="pfi")),
        "full_vs_stock": statistics.median(ratios("full", "responses_per_s", to="stock")),
        "full_spans_exported": spans,
        "full_spans_expected": int(expected_spans),
        "rounds": ROUNDS,
        "seconds_per_run": SECONDS,
        "connections": CONNECTIONS,
    }


async def _noop() -> None:
    pass


def _request_cpu_us(variant: str, log_file: str, requests: int) -> float:
    """CPU per POST /log/ (its task included) in a fresh process, the ASGI app called with no HTTP."""
    os.environ["LOG_FILE"] = log_file
    app: FastAPI
    if variant in ("bare", "instrumentation_alone"):
        app = bare_app.create()
        if variant == "instrumentation_alone":
            instrument_app(app, TracerProvider())  # the template's own configuration of it
    else:
        app = create_app(Settings(otel_sdk_disabled=variant == "template_metrics_only"))
    scope = post_scope("/log/", b"msg=bench")

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        pass

    async def run(count: int) -> None:
        for _ in range(count):
            await app(dict(scope), receive, send)

    asyncio.run(run(200))  # warm-up: routes, imports, first metric files
    started = time.process_time()
    asyncio.run(run(requests))
    return (time.process_time() - started) / requests * 1e6


def request_cost(work: Path, requests: int = 3000, rounds: int = 3) -> dict[str, Any]:
    """What each layer adds per request in one process: bare FastAPI, the instrumentation's server
    span alone, the template with metrics only, and with spans (no export). Each variant in a fresh
    process per round (the task wrapper patches Starlette), median of the rounds."""
    variants = ("bare", "instrumentation_alone", "template_metrics_only", "template_spans_no_export")
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name in variants:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
                samples[name].append(fresh.submit(_request_cpu_us, name, str(work / "cost.log"), requests).result())
    cpu = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "cpu_us_per_request": cpu,
        "added_over_bare_us": {name: cpu[name] - cpu["bare"] for name in variants},
        "requests": requests,
        "rounds": rounds,
    }


def wrapper_cost(otlp_endpoint: str, sentry_dsn: str, tasks: int = 5_000, repeats: int = 9) -> dict[str, Any]:
    """In one process: a no-op async task awaited as Starlette would, then through the wrapper.

    The wrapper's own cost is the CPU of the thread that runs it: what a worker's event loop
    pays. The CPU of all threads adds the exporter's thread. The span queue holds a whole run,
    so none is dropped; the spans still queued at a run's end are flushed outside the loop
    thread's clock (the flush exports on the calling thread, which in a worker is never the
    event loop's) and inside the all-threads clock. Three setups show what each part costs.
    """
    metrics = Metrics()
    settings = Settings(otel_exporter_otlp_endpoint=otlp_endpoint)
    sdk = make_tracer_provider(settings)
    with mock.patch.dict(os.environ, {"OTEL_BSP_MAX_QUEUE_SIZE": str(tasks)}):  # read by the processor it makes
        start_export(sdk, settings, metrics)
    start_sentry(Settings(sentry_dsn=sentry_dsn), metrics)
    configure_logging("INFO", "json")
    logging.getLogger().handlers[0].setStream(open(os.devnull, "w"))  # type: ignore[attr-defined]  # noqa: SIM115
    logger = logging.getLogger(LOGGER_NAME)
    setups = {
        "metrics": (NoOpTracer(), logging.WARNING),
        "metrics_and_log_line": (NoOpTracer(), logging.DEBUG),  # a success's line is DEBUG
        "everything": (sdk.get_tracer("bench"), logging.INFO),
    }
    task = BackgroundTask(_noop)

    async def bare() -> None:
        for _ in range(tasks):
            await task.func(*task.args, **task.kwargs)

    def measure(run: Callable[[], Awaitable[None]]) -> tuple[float, float]:
        thread, process = time.thread_time(), time.process_time()
        asyncio.run(run())  # type: ignore[arg-type]
        thread = time.thread_time() - thread
        sdk.force_flush()
        return thread / tasks * 1e6, (time.process_time() - process) / tasks * 1e6

    results: dict[str, Any] = {}
    for name, (tracer, level) in setups.items():
        logger.setLevel(level)
        backlog = Backlog(metrics, logger, limit=10**9, retry_after_seconds=1)
        telemetry = WebTelemetry(metrics, tracer, logger, CapacityLimiter(1), backlog)
        record = RequestRecord(telemetry, "/bench/", response_sent=time.perf_counter())

        async def wrapped(record: RequestRecord = record) -> None:
            for _ in range(tasks):
                await run_batch(record, [task])

        samples = [(measure(bare), measure(wrapped)) for _ in range(repeats)]
        results[name] = {
            "us_per_task": statistics.median(w[0] - b[0] for b, w in samples),
            "us_per_task_all_threads": statistics.median(w[1] - b[1] for b, w in samples),
        }
    sdk.shutdown()
    return results


def scrapes(work: Path, workers: int = 8) -> dict[str, float]:
    """/metrics after 0, 100 and 500 recycled workers, each of which left metric files behind."""
    env = {"API_TOKEN": TOKEN, "EMAIL_SEND_SECONDS": "0"}
    server = Gunicorn(work / "scrape", env=env, workers=workers, options=("--preload",)).start()
    timings, recycled, sent = {}, 0, 0
    try:
        with server.connection_per_request_client() as client:
            for checkpoint in (0, 100, 500):
                while recycled < checkpoint:
                    for i in range(2 * workers):  # so each worker about to go has files to leave
                        assert client.post("/send-message/", params={"message": f"m{sent + i}"}).status_code == 200
                    sent += 2 * workers
                    pids = server.worker_pids()
                    for pid in pids:
                        os.kill(pid, signal.SIGTERM)  # what a HUP or max_requests does to each worker
                    recycled += len(pids)
                    wait_for(lambda: server.started_workers() == workers + recycled, what="the replacements")  # noqa: B023
                for i in range(4 * workers):  # the live workers' files, as in the fresh state
                    client.post("/send-message/", params={"message": f"m{sent + i}"})
                sent += 4 * workers
                wait_for(lambda: len(server.log_file_lines()) == sent, what="the tasks")  # noqa: B023
                timings[f"scrape_ms_after_{checkpoint}"] = server.median_scrape_seconds(60) * 1e3
                print(
                    f"  scrape after {recycled} recycled workers: {timings[f'scrape_ms_after_{checkpoint}']:.2f} ms",
                    flush=True,
                )
            counted = server.metrics().get_value("background_tasks_scheduled_total")
    finally:
        server.stop()
    assert counted == sent, (counted, sent)  # nothing lost to the merges
    return {**timings, "recycled_workers": recycled, "tasks_counted_exactly": sent}


def sync_endpoint(pool: ProcessPoolExecutor, work: Path, pending: int = 200) -> dict[str, float]:
    """A sync endpoint's p99, one client in a loop, idle and with 200 email tasks pending."""
    env = {"EMAIL_SEND_SECONDS": "60", "DRAIN_SECONDS": "0"}
    server = Gunicorn(work / "sync", env=env, app="tests.user_app:create()").start()
    try:
        _load(pool, server, "/inventory/", 1.0, method="GET", connections=1)
        idle = _load(pool, server, "/inventory/", SECONDS, method="GET", connections=1)
        with server.connection_per_request_client() as client:
            for i in range(pending):
                assert client.post("/send-mail/", params={"email": f"s{i}@example.com"}).status_code == 200
        server.wait_for_metrics(lambda m: m.get_value("background_tasks_pending") == pending, "the tasks pending")
        loaded = _load(pool, server, "/inventory/", SECONDS, method="GET", connections=1)
        still = server.metrics().get_value("background_tasks_pending")
    finally:
        server.stop()
    assert still == pending
    return {
        "idle_p99_ms": idle.percentile(0.99) * 1e3,
        "pending_p99_ms": loaded.percentile(0.99) * 1e3,
        "sync_p99_ratio_200_pending": loaded.percentile(0.99) / idle.percentile(0.99),
        "samples": min(idle.responses, loaded.responses),
    }


def send_mail_under_load(pool: ProcessPoolExecutor, work: Path) -> dict[str, Any]:
    """Saturation: 5 s emails at far more than the task threads can send; the excess must be shed."""
    limit = 1000
    env = {"EMAIL_SEND_SECONDS": "5", "DRAIN_SECONDS": "0", "MAX_PENDING_TASKS": str(limit)}
    server = Gunicorn(work / "mail", env=env).start()
    try:
        result = _load(pool, server, "/send-mail/?email=load%40example.com", 2 * SECONDS)
        metrics = server.wait_for_metrics(
            lambda m: m.get_value("background_tasks_scheduled_total") == result.statuses[200], "every task handed over"
        )
    finally:
        server.stop()
    pending = metrics.get_value("background_tasks_pending")
    scheduled = metrics.get_value("background_tasks_scheduled_total")
    assert scheduled == result.statuses[200], (scheduled, dict(result.statuses))
    return {
        "p50_ms": result.percentile(0.50) * 1e3,
        "p99_ms": result.percentile(0.99) * 1e3,
        "p99_ms_503": result.percentile(0.99, 503) * 1e3 if result.statuses[503] else None,
        "responses": dict(result.statuses),
        "pending_at_end": pending,
        "pending_limit": limit * server.workers,
        # The limit is checked when a request arrives and the task is opened after its response, so
        # requests already in flight (at most one per connection) may each add one over it.
        "shed_with_503": result.statuses[503] > 0 and pending <= limit * server.workers + CONNECTIONS,
    }


def _compare(op: str, value: float, target: float) -> bool:
    return value >= target if op == ">=" else value <= target


def send_mail_enqueued_vs_in_process(pool: ProcessPoolExecutor, work: Path, backend: str) -> dict[str, Any]:
    """/send-mail/ 200s per second when it enqueues to `backend` on Redis (a worker of 2 processes
    running the tasks on the same machine) against when its task runs in the web worker, alternated."""
    redis_server = RedisServer(work / f"redis-{backend}").start()
    env = {"EMAIL_SEND_SECONDS": "0.05", "MAX_PENDING_TASKS": "1000000"}
    queued_env = {**env, "TASK_QUEUE": backend, "BROKER_URL": redis_server.url}
    servers = {
        "in_process": Gunicorn(work / f"mail-in-process-{backend}", env=env),
        "enqueued": Gunicorn(work / f"mail-enqueued-{backend}", env=queued_env),
    }
    log_file = str(servers["enqueued"].log_file)
    worker = QueueWorker(work / f"mail-worker-{backend}", {**queued_env, "LOG_FILE": log_file})
    per_s: dict[str, list[float]] = {name: [] for name in servers}
    target = "/send-mail/?email=bench%40example.com"
    try:
        worker.start()
        for server in servers.values():
            server.start()
            _load(pool, server, target, 1.0)
        for _ in range(QUEUE_ROUNDS):
            for name, server in servers.items():
                result = _load(pool, server, target, SECONDS)
                per_s[name].append(result.statuses[200] / result.seconds)
    finally:
        for server in servers.values():
            server.stop()
        worker.stop()
        redis_server.stop()
    ratios = [q / i for q, i in zip(per_s["enqueued"], per_s["in_process"], strict=True)]
    return {
        "enqueued_responses_per_s": statistics.median(per_s["enqueued"]),
        "in_process_responses_per_s": statistics.median(per_s["in_process"]),
        "enqueued_vs_in_process": statistics.median(ratios),
    }


def _verdicts(figures: dict[str, float], shed_with_503: bool) -> dict[str, dict[str, Any]]:
    verdicts = {
        key: {"target": f"{op} {target}", "met": _compare(op, figures[key], target)}
        for key, (op, target) in TARGETS.items()
    }
    saturation = verdicts["tasks_completed_per_response_at_saturation"]
    saturation["target"] += ", or the excess shed with 503s"
    saturation["met"] = saturation["met"] or shed_with_503
    return verdicts


def web_part(work: Path, pool: ProcessPoolExecutor) -> dict[str, Any]:
    sentry, otlp = SentryIngest(), OtlpReceiver()
    print("throughput, POST /log/ …", flush=True)
    load = throughput(pool, work)
    print("wrapper …", flush=True)
    wrapper = pool.submit(wrapper_cost, otlp.endpoint, sentry.dsn).result()
    print("CPU per request in one process …", flush=True)
    cost = request_cost(work)
    print("sync endpoint …", flush=True)
    sync = sync_endpoint(pool, work)
    print("send-mail under load …", flush=True)
    mail = send_mail_under_load(pool, work)
    print("scrapes after recycling …", flush=True)
    scrape = scrapes(work)
    sentry.server.stop()
    otlp.server.stop()
    variants = load["variants"]
    full = variants["full"]
    figures = {
        "metrics_only_vs_pfi": load["metrics_only_vs_pfi"],
        "metrics_only_vs_bare": variants["metrics_only"]["throughput_vs_bare"],
        "full_vs_stock": load["full_vs_stock"],
        "full_vs_bare": full["throughput_vs_bare"],
        "wrapper_us_per_task": wrapper["everything"]["us_per_task"],
        "server_span_us_per_request": cost["added_over_bare_us"]["instrumentation_alone"],
        "scrape_ratio_500_vs_0": scrape["scrape_ms_after_500"] / scrape["scrape_ms_after_0"],
        "sync_p99_ratio_200_pending": sync["sync_p99_ratio_200_pending"],
        "tasks_completed_per_response_at_saturation": full["tasks_completed_per_s"] / full["responses_per_s"],
    }
    return {
        **figures,
        "full_vs_bare_by_sampling": {
            rate: variants["full" if rate == "1.0" else f"full_sampled_{rate}"]["throughput_vs_bare"]
            for rate in SAMPLING_RATES
        },
        "targets": _verdicts(figures, shed_with_503=mail["shed_with_503"]),
        "throughput": load,
        "wrapper": wrapper,
        "request_cost": cost,
        "scrape": scrape,
        "sync_endpoint": sync,
        "send_mail_under_load": mail,
    }


def queue_part(work: Path, pool: ProcessPoolExecutor) -> dict[str, Any]:
    sentry, otlp = SentryIngest(), OtlpReceiver()
    print("worker throughput per backend …", flush=True)
    workers = worker_throughput(work, otlp, sentry)
    print("enqueue, part by part …", flush=True)
    breakdown = enqueue_breakdown(work, BACKENDS, otlp)
    sentry.server.stop()
    otlp.server.stop()
    enqueue = {}
    for backend in BACKENDS:
        print(f"send-mail enqueued to {backend} vs in-process …", flush=True)
        enqueue[backend] = send_mail_enqueued_vs_in_process(pool, work, backend)
    # The task that sleeps 1 ms is the headline: a no-op measures the library's own round trips.
    figures = {
        "worker_vs_bare": {b: workers[b]["1 ms"]["template_vs_bare"] for b in BACKENDS},
        "worker_cpu_vs_bare": {b: workers[b]["1 ms"]["cpu_bare_vs_template"] for b in BACKENDS},
        "worker_vs_stock": {b: workers[b]["1 ms"]["template_vs_stock"] for b in BACKENDS},
        "enqueue_vs_inprocess": {b: enqueue[b]["enqueued_vs_in_process"] for b in BACKENDS},
    }
    return {
        **figures,
        "queue_targets": {
            f"{key}.{backend}": {"target": f"{op} {target}", "met": _compare(op, value, target)}
            for key, (op, target) in QUEUE_TARGETS.items()
            for backend, value in figures[key].items()
        },
        "worker_throughput": workers,
        "enqueue_breakdown_us": breakdown,
        "send_mail_enqueued_vs_in_process": enqueue,
    }


def main() -> None:
    only = os.environ.get("BENCH_ONLY", "")
    if only not in ("", "web", "queue"):
        raise SystemExit("BENCH_ONLY is web, queue, or unset for both")
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    results_file = OUT / "results.json"
    # A part run replaces its own figures and keeps the other part's, from its last run.
    results: dict[str, Any] = json.loads(results_file.read_text()) if only and results_file.exists() else {}
    started = time.time()
    results["machine"] = _machine()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        for part, run in (("web", web_part), ("queue", queue_part)):
            if only in ("", part):
                results.update(run(work, pool))
                results.setdefault("measured", {})[part] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
                results.setdefault("minutes", {})[part] = round((time.time() - started) / 60, 1)
                started = time.time()
                # Written after each part: a part that fails keeps the one before it.
                results_file.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
                (OUT / "RESULTS.md").write_text(render(results))
    if {"full_vs_bare", "worker_vs_bare"} <= results.keys():  # both parts measured, now or before
        generate_docs()  # docs/performance.md: its figures and charts from results.json
    print(render(results))


def _machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    packages = ("fastapi", "starlette", "uvicorn", "gunicorn", "opentelemetry-sdk", "prometheus-client", "sentry-sdk")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": {name: version(name) for name in packages},
        "gunicorn_workers": 2,
        "load": f"bench/loadgen.py, {CONNECTIONS} keep-alive connections, one process, same machine",
    }


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Written by `make bench` (bench/run.py; `BENCH_ONLY=web` or `queue` runs one part). Machine: {m['cpu']}, "
        f"**{m['cores']} cores**, {m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}. Shared and "
        "noisy: every figure is a ratio within one run, variants alternated round by round, median of the "
        f"per-round ratios. Measured: {', '.join(f'{p} {t}' for p, t in results['measured'].items())}.",
        "",
    ]
    if "throughput" in results:
        lines += _render_web(results)
    if "worker_throughput" in results:
        lines += _render_queue(results)
    return "\n".join(lines)


def _render_queue(results: dict[str, Any]) -> list[str]:
    workers, breakdown = results["worker_throughput"], results["enqueue_breakdown_us"]
    lines = [
        "## Queues: one worker process draining a full queue, on Redis",
        "",
        f"Each variant's worker is stopped while {', '.join(f'{TASKS[b]} ({b})' for b in BACKENDS)} tasks are put "
        "in its queue, then timed until the broker holds none (bench/queue_throughput.py); "
        f"{QUEUE_ROUNDS} rounds. The task is the template's `send_email` (one line appended to a file) "
        "with no delay, or a 1 ms sleep. CPU is the worker's process tree (RQ's work horses included).",
        "",
        "| figure | celery | dramatiq | rq | target |",
        "|---|---|---|---|---|",
    ]
    for key, label in (
        ("worker_vs_bare", "worker, 1 ms task: template vs bare"),
        ("worker_cpu_vs_bare", "worker CPU per task, 1 ms task: bare ÷ template"),
        ("worker_vs_stock", "worker, 1 ms task: template vs stock"),
        ("enqueue_vs_inprocess", "`/send-mail/` enqueued vs in-process"),
    ):
        cells = []
        for backend in BACKENDS:
            verdict = results["queue_targets"][f"{key}.{backend}"]
            cells.append(f"{results[key][backend]:.2f}x{'' if verdict['met'] else ' (**not met**)'}")
        lines.append(f"| {label} | {' | '.join(cells)} | {QUEUE_TARGETS[key][0]} {QUEUE_TARGETS[key][1]} |")
    lines += [
        "",
        "| backend | task | bare tasks/s | template tasks/s | stock tasks/s | template vs bare | template vs stock "
        "| CPU µs/task bare / template / stock |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for backend in BACKENDS:
        for task, f in workers[backend].items():
            v = f["variants"]
            cells = [f"{v[name]['tasks_per_s']:.0f}" for name in VARIANTS]
            cpu = " / ".join(f"{v[name]['cpu_us_per_task']:.0f}" for name in VARIANTS)
            lines.append(
                f"| {backend} | {task} | {' | '.join(cells)} | {f['template_vs_bare']:.2f}x "
                f"| {f['template_vs_stock']:.2f}x | {cpu} |"
            )
    lines += [
        "",
        "- **bare**: the library's own worker, concurrency 1, the template's reliability settings (late "
        "acknowledgements, prefetch of one, JSON; Celery's time limits and child recycling) and no telemetry "
        "(bench/queue_peers/). **template**: `make worker` (`WORKER_CONCURRENCY=1`, `WORKER_THREADS=1`) with "
        "every span exported over OTLP to a local receiver, Sentry on with a local ingest, metrics, and the task "
        "state store. **stock**: sentry-sdk with the library's integration and `traces_sample_rate=1.0`, and:",
        "  - Celery: opentelemetry-instrumentation-celery exporting every span over OTLP, and task events on "
        "(`-E`, `task_send_sent_event`) for celery-exporter;",
        "  - Dramatiq: its Prometheus middleware (OpenTelemetry has no Dramatiq instrumentation);",
        "  - RQ: nothing more in the worker. rq-exporter reads Redis from a process of its own; OpenTelemetry's "
        "contrib has no RQ instrumentation, and opentelemetry-instrumentation-rq 0.1.4 fails on RQ 3.",
        "- **The template's CPU per task, no-op task, by part** (py-spy samples of the worker's processes over one "
        "drain, as shares of the CPU per task above):",
        *(
            f"  - {backend}: "
            + ", ".join(f"{part} {us:.0f} µs" for part, us in workers[backend]["no-op"]["by_part_us"].items())
            for backend in BACKENDS
        ),
        "- **One enqueue, part by part** (µs of wall time, each part alone, mean of 1000 in one process):",
        *(
            f"  - {backend}: " + ", ".join(f"{part[:-3].replace('_', ' ')} {us:.0f}" for part, us in b.items())
            for backend, b in breakdown.items()
        ),
    ]
    for backend, q in results["send_mail_enqueued_vs_in_process"].items():
        lines.append(
            f"- **`/send-mail/` enqueued to {backend} vs in-process** (50 ms emails, a worker of 2 processes on the "
            f"same machine, {QUEUE_ROUNDS} rounds of {SECONDS:g} s): {q['enqueued_responses_per_s']:.0f} against "
            f"{q['in_process_responses_per_s']:.0f} responses/s, {q['enqueued_vs_in_process']:.2f}x."
        )
    return [*lines, ""]


def _render_web(results: dict[str, Any]) -> list[str]:
    def row(key: str, label: str, value: str) -> str:
        target = results["targets"][key]
        return f"| {label} | {value} | {target['target']} | {'met' if target['met'] else '**not met**'} |"

    def x(key: str) -> str:
        return f"{results[key]:.2f}x"

    load, m, cost = results["throughput"], results["machine"], results["request_cost"]
    lines = [
        "## The web side",
        "",
        f"gunicorn with {m['gunicorn_workers']} uvicorn workers; load from {m['load']}; variants alternated over "
        f"{load['rounds']} rounds of {load['seconds_per_run']:g} s. Throughput ratios are of responses/s to "
        "POST /log/.",
        "",
        "| figure | value | target | |",
        "|---|---|---|---|",
        row("metrics_only_vs_pfi", "metrics only vs prometheus-fastapi-instrumentator", x("metrics_only_vs_pfi")),
        row("metrics_only_vs_bare", "metrics only vs bare FastAPI", x("metrics_only_vs_bare")),
        row("full_vs_stock", "everything on vs the stock stack", x("full_vs_stock")),
        row("full_vs_bare", "everything on vs bare FastAPI", x("full_vs_bare")),
        "| everything on vs bare, by parent-based sampling rate (`full_vs_bare_by_sampling`) | "
        + ", ".join(f"{rate}: {ratio:.2f}x" for rate, ratio in results["full_vs_bare_by_sampling"].items())
        + " | reported | |",
        row("wrapper_us_per_task", "wrapper cost per task", f"{results['wrapper_us_per_task']:.1f} µs"),
        f"| the instrumentation's server span per request (`server_span_us_per_request`) "
        f"| {results['server_span_us_per_request']:.0f} µs | reported | |",
        row(
            "scrape_ratio_500_vs_0",
            "/metrics after 500 recycled workers vs fresh",
            f"{results['scrape_ratio_500_vs_0']:.2f}x",
        ),
        row(
            "sync_p99_ratio_200_pending",
            "sync endpoint p99, 200 tasks pending vs idle",
            f"{results['sync_p99_ratio_200_pending']:.2f}x",
        ),
        row(
            "tasks_completed_per_response_at_saturation",
            "tasks completed per response at saturation (`/log/`)",
            f"{results['tasks_completed_per_response_at_saturation']:.3f}",
        ),
        "",
        "## Throughput, POST /log/ (its task appends one line to a file)",
        "",
        "| variant | responses/s | tasks completed/s | vs bare | server CPU µs/response | CPU vs bare "
        "| p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, v in load["variants"].items():
        cells = [
            f"{v['responses_per_s']:.0f}",
            f"{v['tasks_completed_per_s']:.0f}",
            f"{v['throughput_vs_bare']:.2f}x",
            f"{v['server_cpu_us_per_response']:.0f}",
            f"{v['cpu_per_response_vs_bare']:.2f}x",
            f"{v['p50_ms']:.1f}",
            f"{v['p99_ms']:.1f}",
        ]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    w, sc, sy, mail = results["wrapper"], results["scrape"], results["sync_endpoint"], results["send_mail_under_load"]
    lines += [
        "",
        "- **pfi**: `bench/peer_apps.py`, bare FastAPI with prometheus-fastapi-instrumentator (multiprocess). "
        "**stock**: the same plus `FastAPIInstrumentor` with its defaults exporting over OTLP, and sentry-sdk with "
        "its default integrations and `traces_sample_rate=1.0`, sending to the local ingest.",
        "- **full**: the template with 100% of spans exported over OTLP to a local receiver "
        f"({load['full_spans_exported']} of {load['full_spans_expected']} expected spans arrived), Sentry on with a "
        "local ingest, and metrics. **full_sampled_0.1**, **full_sampled_0.01**: the same with "
        "`OTEL_TRACES_SAMPLER=parentbased_traceidratio` and `OTEL_TRACES_SAMPLER_ARG` 0.1 or 0.01. **metrics_only**: "
        "`OTEL_SDK_DISABLED=true`, no Sentry DSN: metrics (successful tasks log at DEBUG, off). "
        "**bare**: `bench/bare_app.py`, the same "
        "routes on bare FastAPI. Server CPU is the workers' user + system time over all responses.",
        "- **Wrapper**, in one process, per no-op async task, over awaiting it bare: the CPU of the calling "
        "thread (what a worker's event loop pays), and of all threads (the span exporter's too):",
        *(
            f"  - {name.replace('_', ' ')}: {cost['us_per_task']:.1f} µs; all threads "
            f"{cost['us_per_task_all_threads']:.1f} µs"
            for name, cost in w.items()
        ),
        f"- **CPU per request in one process** (POST /log/ and its task, the ASGI app called directly, "
        f"{cost['requests']} requests, median of {cost['rounds']} fresh processes):",
        *(
            f"  - {name.replace('_', ' ')}: {cpu:.0f} µs (+{cost['added_over_bare_us'][name]:.0f} over bare)"
            for name, cpu in cost["cpu_us_per_request"].items()
        ),
        f"- **Scrapes** (8 workers): median {sc['scrape_ms_after_0']:.2f} ms fresh, {sc['scrape_ms_after_100']:.2f} ms "
        f"after 100 and {sc['scrape_ms_after_500']:.2f} ms after {sc['recycled_workers']} recycled workers; "
        f"all {sc['tasks_counted_exactly']} tasks counted.",
        f"- **Sync endpoint** `GET /inventory/`, one client in a loop: p99 {sy['idle_p99_ms']:.2f} ms idle, "
        f"{sy['pending_p99_ms']:.2f} ms with 200 sixty-second email tasks pending ({sy['samples']}+ samples each).",
        f"- **`/send-mail/` under load** (5 s emails, {CONNECTIONS} connections, `MAX_PENDING_TASKS=1000`): "
        f"200s p50 {mail['p50_ms']:.1f} ms, p99 {mail['p99_ms']:.1f} ms; responses {mail['responses']}; "
        f"{mail['pending_at_end']:.0f} pending at the end (limit {mail['pending_limit']}, plus at most one per "
        "connection in flight): "
        f"{'the excess was shed with 503s' if mail['shed_with_503'] else 'nothing was shed'}.",
        "",
    ]
    return lines


if __name__ == "__main__":
    main()
