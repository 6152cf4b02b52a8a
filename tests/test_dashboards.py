"""The dashboards and alerts, proven on a real Prometheus scraping real gunicorn every second."""

import math
import os
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from harness import (
    TOKEN,
    Gunicorn,
    Prometheus,
    QueueWorker,
    RedisServer,
    start_prometheus,
    started,
    wait_for,
)
from harness.queries import DASHBOARD_NAMES, SEND_MAIL, alert_signal, dashboard, expand, panel_queries, rules

EMAIL_SEND_SECONDS = 1.0
LOAD_DECIDED = {"ResponseLatencyHigh"}  # alerts on response time, which a busy machine moves
IMPORT_COUNTS = [-1 if i % 3 == 0 else 5 for i in range(12)]  # 4 of 12 imports fail


@dataclass
class Scene:
    prometheus: Prometheus
    window: str  # covers the measured traffic, and nothing else that changed a counter
    imports_failed: int
    imports_sent: int
    web: str  # the instance label of each job
    worker: str


def _warm_up(server: Gunicorn, prometheus: Prometheus) -> None:
    """Make every series exist: each route, failures, a 500, a 404, rejections and a drop."""
    client = server.thread_client()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for path, params in [
        ("/log/", {"msg": "warm"}),
        ("/send-message/", {"message": "warm"}),
        ("/orders/", {"email": "w@example.com", "order_id": "w1"}),
        ("/reservations/", {"order_id": "w2"}),
        ("/inventory/sync/", {"sku": "w3"}),
    ]:
        assert client.post(path, params=params).status_code == 200
    # As many imports as the measured traffic: a counter's first value in the window must not be
    # small beside its increase, or rate() stops extrapolating at zero and the ratio drifts.
    for count in IMPORT_COUNTS:
        assert client.post("/imports/", params={"count": count}).status_code == 200
    assert client.post("/notify/", headers=auth).status_code == 200
    assert client.post("/checkout/", params={"email": "w@example.com"}).status_code == 500
    assert client.get("/nope").status_code == 404

    def report(_: int) -> int:
        return server.thread_client().post("/reports/", params={"seconds": 0.5}).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(report, range(120)))
    assert 503 in statuses, "the burst must overflow the backlog"
    server.wait_for_metrics(lambda m: m.get_value("background_tasks_pending") == 0, "the burst's tasks")

    # A task longer than DRAIN_SECONDS, then every worker told to stop: it is dropped. Prometheus
    # must have seen the counter at zero first, or the drop is no increase.
    assert client.post("/reports/", params={"seconds": 60}).status_code == 200
    wait_for(
        lambda: prometheus.query('background_tasks_dropped_total{task="build_report", reason="shutdown"} == 0'),
        what="a scrape of the drop counter at zero",
    )
    first_workers = server.worker_pids()
    for pid in first_workers:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: len(server.worker_pids() - first_workers) == 2, what="the replacement workers")
    wait_for(lambda: server.started_workers() == 4, what="the replacements to start")
    server.wait_for_metrics(
        lambda m: (
            m.get_value("background_tasks_dropped_total", reason="shutdown") == 1
            and m.get_value("server_worker_processes") == 2
        ),
        "the drop and two live workers",
    )


def _queue_drained(worker: QueueWorker, redis_server: RedisServer, emails: int) -> None:
    wait_for(
        lambda: (
            worker.metrics().get_value("background_task_duration_seconds_count", task="send_email") == emails
            and redis_server.waiting_and_unacked() == (0, 0)
        ),
        what=f"{emails} queued emails",
    )


def _measured(server: Gunicorn) -> tuple[int, int]:
    client = server.thread_client()
    for count in IMPORT_COUNTS:
        assert client.post("/imports/", params={"count": count}).status_code == 200
    for i in range(10):
        assert client.post("/orders/", params={"email": f"m{i}@example.com", "order_id": f"m{i}"}).status_code == 200
        assert client.post(SEND_MAIL, params={"email": f"m{i}@example.com"}).status_code == 200
        assert client.post("/log/", params={"msg": f"measured {i}"}).status_code == 200
        assert client.post("/inventory/sync/", params={"sku": f"m{i}"}).status_code == 200
    return sum(count < 0 for count in IMPORT_COUNTS), len(IMPORT_COUNTS)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    workdir = tmp_path_factory.mktemp("dashboards")
    redis_server = RedisServer(workdir / "redis").start()
    env = {
        "API_TOKEN": TOKEN,
        "EMAIL_SEND_SECONDS": str(EMAIL_SEND_SECONDS),
        "TASK_THREADS": "4",
        "MAX_PENDING_TASKS": "20",
        "DRAIN_SECONDS": "1",
        "CELERY_BROKER_URL": redis_server.url,  # /send-mail/ goes to the queue; the user's tasks stay in-process
    }
    for server in started(Gunicorn(workdir / "app", env=env, app="tests.user_app:create()")):
        worker = QueueWorker(workdir / "worker", {**env, "LOG_FILE": str(server.log_file)}).start()
        targets = {
            "background-tasks": f"127.0.0.1:{server.port}",
            "background-tasks-worker": f"127.0.0.1:{worker.metrics_port}",
        }
        try:
            for prometheus in start_prometheus(workdir, targets):
                _warm_up(server, prometheus)
                for i in range(10):  # as many emails as the measured traffic, for rate() alike
                    assert (
                        server.thread_client().post(SEND_MAIL, params={"email": f"w{i}@example.com"}).status_code == 200
                    )
                _queue_drained(worker, redis_server, 10)
                time.sleep(3)  # a few scrapes of the warmed-up counters before the window opens
                opened = time.time()
                failed, sent = _measured(server)
                server.wait_for_metrics(lambda m: m.get_value("background_tasks_pending") == 0, "the measured tasks")
                _queue_drained(worker, redis_server, 20)
                time.sleep(3)  # a few scrapes of the final counters
                prometheus.at = time.time()  # every query looks at this moment, however late it runs
                window = f"{math.ceil(prometheus.at - opened) + 1}s"
                yield Scene(
                    prometheus, window, failed, sent, targets["background-tasks"], targets["background-tasks-worker"]
                )
        finally:
            worker.stop()
            redis_server.stop()


def _value(result: list[dict[str, Any]], **labels: str) -> float:
    (sample,) = [r for r in result if labels.items() <= r["metric"].items()]
    return float(sample["value"][1])


@pytest.mark.parametrize("name", DASHBOARD_NAMES)
def test_every_panel_query_returns_data(scene: Scene, name: str) -> None:
    for title, expr in panel_queries(name).items():
        assert scene.prometheus.query(expand(expr, scene.window)), f"no data for {title}: {expr}"


@pytest.mark.parametrize("name", DASHBOARD_NAMES)
def test_every_variable_has_values(scene: Scene, name: str) -> None:
    for variable in dashboard(name)["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"])
        assert match is not None, variable["definition"]
        values = scene.prometheus.label_values(match.group(2), expand(match.group(1), scene.window))
        assert values, variable["name"]
        if variable["name"] == "route":
            assert SEND_MAIL in values


def test_every_alert_parses_and_its_signal_has_data(scene: Scene) -> None:
    for record in [rule for rule in rules() if "record" in rule]:
        assert scene.prometheus.query(record["record"]), f"no data recorded for {record['record']}"
    firing = set()
    for rule in [rule for rule in rules() if "alert" in rule]:
        assert scene.prometheus.query(alert_signal(rule)), f"no data for the signal of {rule['alert']}"
        if scene.prometheus.query(rule["expr"]):
            firing.add(rule["alert"])
    # The traffic failed tasks, retried each inventory sync once and dropped one. Whether a
    # latency alert fires here is the machine's load, not the code's: its verdicts are promtool's
    # (deploy/prometheus/alerts.test.yml); here its signal has data, as every alert's has.
    assert firing - LOAD_DECIDED == {
        "BackgroundTaskFailureRatioHigh",
        "BackgroundTaskRetriesHigh",
        "BackgroundTasksDropped",
    }


def test_the_gap_panel_shows_fast_responses_and_slow_tasks(scene: Scene) -> None:
    queries = panel_queries("background-tasks.json")
    title = "Response vs task time: $route"

    def one(legend: str) -> float:
        (sample,) = scene.prometheus.query(expand(queries[f"{title} / {legend}"], scene.window))
        return float(sample["value"][1])

    # A response that waited for its task would take the task's whole time: only a defect, not
    # a busy machine, brings the response's p95 up to it.
    assert one("response p95") < EMAIL_SEND_SECONDS
    assert one("task p95") >= EMAIL_SEND_SECONDS
    assert one("task p50") >= EMAIL_SEND_SECONDS
    ratio = scene.prometheus.query(expand(queries["Gap: task p95 ÷ response p95 / {{route}}"], scene.window))
    assert _value(ratio, route=SEND_MAIL) > 1


def test_the_failure_ratio_is_failures_over_tasks_sent(scene: Scene) -> None:
    expr = panel_queries("background-tasks.json")["Failure ratio / {{task}}"]
    result = scene.prometheus.query(expand(expr, scene.window))
    assert _value(result, task="import_rows") == pytest.approx(scene.imports_failed / scene.imports_sent, abs=1e-9)
    assert _value(result, task="charge_card") == pytest.approx(1.0)
    assert scene.imports_failed / scene.imports_sent == pytest.approx(1 / 3)


def test_the_retries_panel_shows_one_retry_per_inventory_sync(scene: Scene) -> None:
    expr = panel_queries("background-tasks.json")["Retries / {{task}} {{exception}}"]
    retries = scene.prometheus.query(expand(expr, scene.window))
    succeeded = scene.prometheus.query(
        expand(
            'sum(rate(background_task_duration_seconds_count{task="sync_inventory", outcome="success"}[$__range]))',
            scene.window,
        )
    )
    # Each sync fails its first attempt and succeeds its second: as many retries as successes.
    assert _value(retries, task="sync_inventory", exception="InventoryBusyError") == pytest.approx(
        _value(succeeded), rel=1e-9
    )
    assert _value(succeeded) > 0


def test_the_books_panels_show_the_drop_the_rejections_and_the_workers(scene: Scene) -> None:
    prometheus = scene.prometheus
    assert _value(prometheus.query("sum(background_tasks_dropped_total)")) == 1
    assert _value(prometheus.query("sum(background_tasks_rejected_total)")) > 0
    dashboard = panel_queries("background-tasks.json")
    lost = dashboard["Lost (scheduled - finished - dropped - pending - queued - unacked) / lost"]
    assert _value(prometheus.query(expand(lost, scene.window))) == 0  # every task is accounted for
    service = panel_queries("service.json")
    workers = prometheus.query(expand(service["Workers / {{instance}}"], scene.window))
    assert _value(workers, instance=scene.web) == 2
    assert _value(workers, instance=scene.worker) == 2  # prefork children
    assert _value(prometheus.query(expand(dashboard["Worker processes / {{instance}}"], scene.window))) == 2
    up = prometheus.query(expand(service["Target up / {{instance}}"], scene.window))
    assert _value(up, instance=scene.web) == _value(up, instance=scene.worker) == 1


def test_the_queue_panels_show_the_queue_wait_and_an_empty_queue(scene: Scene) -> None:
    queries = panel_queries("background-tasks.json")

    def one(title: str) -> float:
        return _value(scene.prometheus.query(expand(queries[title], scene.window)))

    assert one("Queue wait vs task time / task p50") >= EMAIL_SEND_SECONDS
    assert 0 <= one("Queue wait vs task time / queue wait p50") < one("Queue wait vs task time / task p95")
    assert one("Queue depth / waiting {{queue}}") == 0
    assert one("Queue depth / unacknowledged") == 0
    assert one("Redeliveries and enqueue failures / redelivered {{task}}") == 0
