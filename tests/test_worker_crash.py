"""A worker killed in the middle of its tasks: the service answers, and the loss shows."""

import json
import os
import signal
from pathlib import Path

import yaml

from harness import PROMETHEUS_DIR, ROOT, Gunicorn, Prometheus, start_prometheus, started, wait_for

EMAILS = 8
LOGS = 10
COUNTERS = (
    "background_tasks_scheduled_total",
    "background_task_duration_seconds_count",
    "background_tasks_dropped_total",
    "http_server_request_duration_seconds_count",
)


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _lost_panel_query() -> str:
    dashboard = json.loads((ROOT / "grafana" / "dashboards" / "background-tasks.json").read_text())
    (panel,) = [p for p in dashboard["panels"] if p["title"].startswith("Lost")]
    return str(panel["targets"][0]["expr"]).replace("$job", ".*").replace("$instance", ".*")


def _alert(name: str) -> str:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    (rule,) = [rule for group in groups for rule in group["rules"] if rule.get("alert") == name]
    return str(rule["expr"])


def test_sigkill_mid_task_keeps_serving_keeps_counters_monotonic_and_shows_the_loss(tmp_path: Path) -> None:
    env = {"EMAIL_SEND_SECONDS": "120", "DRAIN_SECONDS": "0"}
    for server in started(Gunicorn(tmp_path / "app", env=env)):
        for prometheus in start_prometheus(tmp_path, {"background-tasks": f"127.0.0.1:{server.port}"}):
            _kill_a_worker_mid_task(server, prometheus)


def _kill_a_worker_mid_task(server: Gunicorn, prometheus: Prometheus) -> None:
    client = server.thread_client()
    for i in range(LOGS):
        assert client.post("/log/", params={"msg": f"before {i}"}).status_code == 200
    for i in range(EMAILS):
        assert client.post("/send-mail/", params={"email": f"c{i}@example.com"}).status_code == 200
    server.wait_for_metrics(lambda m: m.get_value("background_tasks_pending") == EMAILS, "the emails")
    wait_for(lambda: prometheus.query(f"sum(background_tasks_pending) == {EMAILS}"), what="a scrape of them")

    # Each running email holds a thread: kill the worker running the most of them.
    victim = max(server.worker_pids(), key=_threads)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: server.started_workers() == 3, what="the replacement worker")
    for i in range(LOGS):
        assert client.post("/log/", params={"msg": f"after {i}"}).status_code == 200
    metrics = server.wait_for_metrics(
        lambda m: m.get_value("background_task_duration_seconds_count") == 2 * LOGS, "the logs after"
    )
    pending = metrics.get_value("background_tasks_pending")
    lost = EMAILS - pending
    assert 0 < lost <= EMAILS
    assert metrics.get_value("background_tasks_scheduled_total") == 2 * LOGS + EMAILS
    assert metrics.get_value("background_tasks_dropped_total") == 0  # nothing settled them

    def shows_the_loss(expr: str) -> bool:
        result = prometheus.query(expr)
        return bool(result) and float(result[0]["value"][1]) == lost

    wait_for(lambda: shows_the_loss(_lost_panel_query()), what="the Lost panel to show the lost tasks")
    wait_for(lambda: shows_the_loss("background_tasks_lost:sum"), what="the recording rule")
    assert shows_the_loss(_alert("BackgroundTasksLost"))
    for counter in COUNTERS:  # the dead worker's counts were folded in, not lost
        (resets,) = prometheus.query(f"sum(resets({counter}[5m]))")
        assert float(resets["value"][1]) == 0, counter
