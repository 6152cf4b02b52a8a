"""Workers that scale out on queue depth: KEDA's ScaledObject (deploy/k8s/keda/), checked offline
against KEDA's schema, and its trigger run on a real Prometheus scraping three workers, as three
pods would be: each worker a `make worker` of its own, with its own metrics port and directory."""

import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import (
    ROOT,
    Broker,
    Gunicorn,
    Prometheus,
    QueueWorker,
    RabbitMQServer,
    RedisServer,
    backend_params,
    start_prometheus,
    wait_for,
    waiting_and_unacked,
)
from harness.queries import SCALED_OBJECT, answers_on_one_worker_and_on_each, scaled_object

KEDA = SCALED_OBJECT.parent
WORKERS = 3
EMAILS = 25
BIN = Path(sys.executable).parent


def _check_schema(manifest: Path) -> subprocess.CompletedProcess[str]:
    command = [str(BIN / "check-jsonschema"), "--schemafile", str(KEDA / "scaledobject.schema.json"), str(manifest)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_the_scaled_object_matches_kedas_schema_and_a_broken_copy_does_not() -> None:
    result = _check_schema(SCALED_OBJECT)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = _check_schema(ROOT / "tests" / "data" / "scaledobject-broken.yaml")
    assert broken.returncode != 0
    assert "failureThreshold" in broken.stdout  # refused for the misspelt field, not for a missing file
    spec = scaled_object()["spec"]
    worker = yaml.safe_load((ROOT / "deploy" / "k8s" / "worker.yaml").read_text())
    assert spec["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert "replicas" not in worker["spec"]  # KEDA owns them
    assert 1 <= spec["minReplicaCount"] < spec["fallback"]["replicas"] <= spec["maxReplicaCount"]
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] > 0


def _replicas(value: float, spec: dict[str, Any]) -> int:
    """What KEDA's HPA computes for an AverageValue target: ceil(value / threshold), within bounds."""
    (trigger,) = spec["triggers"]
    wanted = math.ceil(value / float(trigger["metadata"]["threshold"]))
    return int(min(max(wanted, spec["minReplicaCount"]), spec["maxReplicaCount"]))


@pytest.fixture(params=backend_params([("celery", "redis"), ("dramatiq", "rabbitmq")]))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[dict[str, str], Broker]]:
    library, broker_name = request.param
    broker: Broker = (RedisServer if broker_name == "redis" else RabbitMQServer)(tmp_path / "broker").start()
    state = RedisServer(tmp_path / "state").start() if broker_name == "rabbitmq" else None
    # Tasks that outlast the test: nothing finishes, so the depth holds still while it is read. No
    # BROKER_MANAGEMENT_URL on RabbitMQ: the workers read the ready count over AMQP, as a default
    # rabbitmq-server makes them, and the unacknowledged count is unknown.
    # One thread per Dramatiq process, so each prefetches one message.
    env = {
        "BROKER_URL": broker.url,
        "TASK_QUEUE": library,
        "EMAIL_SEND_SECONDS": "300",
        "WORKER_SHUTDOWN_SECONDS": "1",
        "WORKER_THREADS": "1",
        "ENQUEUE_TIMEOUT_SECONDS": "5",  # no 503 from a busy machine
    }
    if state is not None:
        env["TASK_STATE_URL"] = state.url
    try:
        yield env, broker
    finally:
        broker.remove()
        if state is not None:
            state.remove()


def test_the_trigger_reads_the_depth_once_however_many_workers_report_it(
    tmp_path: Path, backend: tuple[dict[str, str], Broker]
) -> None:
    env, broker = backend
    web = Gunicorn(tmp_path / "web", env=env).start()
    workers: list[QueueWorker] = []
    try:
        workers = [
            QueueWorker(tmp_path / f"worker-{n}", {**env, "LOG_FILE": str(web.log_file)}, concurrency=1).start()
            for n in range(WORKERS)
        ]
        targets = {
            "background-tasks": f"127.0.0.1:{web.port}",
            "background-tasks-worker": [f"127.0.0.1:{worker.metrics_port}" for worker in workers],
        }
        (tmp_path / "prometheus").mkdir()
        for prometheus in start_prometheus(tmp_path / "prometheus", targets):
            client = web.thread_client()
            for i in range(EMAILS):
                assert client.post("/send-mail/", params={"email": f"scale-{i}@example.com"}).status_code == 200
            depth = _check_the_trigger(prometheus, env, broker)
        # Every panel, alert and the trigger answer on the three workers' series as on one worker's,
        # with a depth that double-counting would show.
        queries = tmp_path / "queries"
        one, each = answers_on_one_worker_and_on_each(queries, web.metrics(), [w.metrics() for w in workers])
        assert each == one
        assert one["KEDA trigger"] == {"{}": f"{depth:.9g}"}
    finally:
        for worker in workers:
            worker.stop()
        web.stop()


def _check_the_trigger(prometheus: Prometheus, env: dict[str, str], broker: Broker) -> float:
    """The trigger's value, checked."""
    spec = scaled_object()["spec"]
    (trigger,) = spec["triggers"]
    waiting, unacked = _settled_depth(env)
    reports = f'count(background_tasks_queued{{job="background-tasks-worker"}} == {waiting}) == {WORKERS}'
    wait_for(lambda: prometheus.query(reports), what="every worker's report of the depth scraped")
    (result,) = prometheus.query(trigger["metadata"]["query"])
    value = float(result["value"][1])
    if isinstance(broker, RedisServer):
        assert value == waiting + unacked == EMAILS  # waiting and running: every task sent, once
    else:  # the ready count: what the workers have not taken
        assert math.isnan(unacked)
        assert value == waiting
        wait_for(lambda: value == EMAILS - broker.waiting_and_unacked(env["TASK_QUEUE"])[1], what="the unacked")
    assert _replicas(value, spec) == min(math.ceil(value / float(trigger["metadata"]["threshold"])), 10)
    # The same trigger, had it summed the replicas' reports: what it must not be.
    assert _replicas(value * WORKERS, spec) != _replicas(value, spec)
    # The dashboard's depth panel reads it once too.
    (panel,) = prometheus.query('max by (queue) (background_tasks_queued{job=~".*worker.*"})')
    assert float(panel["value"][1]) == waiting
    return value


def _settled_depth(env: dict[str, str]) -> tuple[float, float]:
    """Waiting and unacknowledged, as the workers read them, once they have held still for a
    second: every worker has taken what it will take."""

    def still() -> tuple[float, float] | None:
        first = waiting_and_unacked(env)
        time.sleep(1)
        second = waiting_and_unacked(env)
        return first if first[0] == second[0] and (first[1] == second[1] or math.isnan(first[1])) else None

    settled: tuple[float, float] = wait_for(still, what="the depth to hold still")
    return settled
