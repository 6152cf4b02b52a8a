"""The inputs of the capacity plan (docs/operations.md), measured on real parts: `python -m bench.capacity`
(about a minute) writes bench/capacity.json, then `make docs` renders the plan from it and from
bench/results.json (the CPU per task that `make bench` measured).

Celery on Redis, gunicorn with two workers, OTLP and Sentry to local receivers that count bytes:
- the task state store's Redis memory per task (MEMORY USAGE of each task's hash, once it ended);
- the Prometheus series per (task, route, outcome) on the web side and on a worker instance, and
  those an instance has whatever its tasks;
- the spans per queued task, and the OTLP bytes per span as exported (protobuf, batched);
- the Sentry events per task that fails for good, and the bytes per event.
"""

import json
import statistics
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from harness import Gunicorn, Metrics, OtlpReceiver, QueueWorker, RedisServer, SentryIngest, wait_for

OUT = Path(__file__).resolve().parent / "capacity.json"
TASKS = 200
FAILING = 20
TASK = {"task": "send_email", "route": "/send-mail/"}


class _CountingOtlp(OtlpReceiver):
    def __init__(self) -> None:
        self.bytes = 0
        super().__init__()

    def _record(self, path: str, headers: dict[str, str], body: bytes) -> bytes:
        if path == "/v1/traces":
            with self.lock:
                self.bytes += len(body)  # protobuf, uncompressed: the exporter's default
        return super()._record(path, headers, body)


def _series(metrics: Metrics) -> tuple[Counter[str], int]:
    """Series per outcome of send_email (its own outcome label, or none: counted for each), and the
    series that carry no task at all."""
    per_outcome: Counter[str] = Counter()
    fixed = 0
    for _name, labels in metrics:
        label = dict(labels)
        if label.get("task") == TASK["task"]:
            per_outcome[label.get("outcome", "any")] += 1
        elif "task" not in label:
            fixed += 1
    return per_outcome, fixed


def _send(web: Gunicorn, prefix: str, count: int) -> list[str]:
    client = web.thread_client()
    ids = []
    for i in range(count):
        response = client.post("/send-mail/", params={"email": f"{prefix}-{i}@example.com"})
        assert response.status_code == 200, response.text
        ids.append(response.headers["x-task-id"])
    return ids


def measure(workdir: Path) -> dict[str, Any]:
    redis_server = RedisServer(workdir / "redis").start()
    otlp, sentry = _CountingOtlp(), SentryIngest()
    env = {
        "BROKER_URL": redis_server.url,
        "TASK_QUEUE": "celery",
        "EMAIL_SEND_SECONDS": "0",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "SENTRY_DSN": sentry.dsn,
    }
    web = Gunicorn(workdir / "web", env=env).start()
    worker = QueueWorker(workdir / "worker", {**env, "LOG_FILE": str(web.log_file)}).start()
    try:
        ids = _send(web, "ok", TASKS)
        wait_for(lambda: worker.metrics().get_value("background_task_duration_seconds_count", **TASK) == TASKS)
        client = redis_server.client()
        state_bytes = [int(client.memory_usage(f"background-tasks:state:{task_id}") or 0) for task_id in ids]
        wait_for(lambda: len(otlp.spans) >= 3 * TASKS, what="every span exported")
        spans_by_trace = Counter(span.trace_id for span in otlp.spans)
        with otlp.lock:
            span_bytes = otlp.bytes / len(otlp.spans)
        web_series = _series(web.metrics())
        worker_series = _series(worker.metrics())
        # Tasks that fail for good: one attempt each, and one Sentry event.
        worker.stop()
        failing_env = {**env, "LOG_FILE": str(web.log_file), "EMAIL_FAILURE_RATE": "1", "EMAIL_MAX_ATTEMPTS": "1"}
        worker = QueueWorker(workdir / "failing-worker", failing_env).start()
        _send(web, "fail", FAILING)
        wait_for(lambda: len(sentry.events) >= FAILING, what="the Sentry events")
        failed = worker.metrics().get_value("background_task_failures_total", **TASK)
        with sentry.lock:
            event_bytes = statistics.mean(len(raw) for raw in sentry.raw)
            events = len(sentry.events)
    finally:
        worker.stop()
        web.stop()
        redis_server.remove()
        sentry.server.stop()
        otlp.server.stop()
    return {
        "state_bytes_per_task": statistics.mean(state_bytes),
        "spans_per_task": statistics.mode(spans_by_trace.values()),
        "otlp_bytes_per_span": span_bytes,
        "sentry_events_per_failure": events / failed,
        "sentry_bytes_per_event": event_bytes,
        "series": {
            "web_per_outcome": dict(web_series[0]),
            "web_fixed": web_series[1],
            "worker_per_outcome": dict(worker_series[0]),
            "worker_fixed": worker_series[1],
        },
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as workdir:
        measured = measure(Path(workdir))
    OUT.write_text(json.dumps(measured, indent=2, sort_keys=True) + "\n")
    print(json.dumps(measured, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
