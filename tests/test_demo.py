"""`make demo` drives every kind of traffic the dashboards show, failing tasks included."""

import os
import subprocess
import sys
from pathlib import Path

from harness import ROOT, TOKEN, Gunicorn, started


def test_the_demo_fills_the_dashboards(tmp_path: Path) -> None:
    env = {"API_TOKEN": TOKEN, "EMAIL_SEND_SECONDS": "0", "EMAIL_FAILURE_RATE": "0.5"}
    for server in started(Gunicorn(tmp_path, env=env)):
        demo = subprocess.run(
            [sys.executable, "deploy/demo.py"],
            cwd=ROOT,
            env={**os.environ, "DEMO_URL": server.url, "DEMO_SECONDS": "4", "API_TOKEN": TOKEN},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        metrics = server.wait_for_metrics(
            lambda m: (
                m.get_value("background_tasks_pending") == 0
                and m.get_value("background_tasks_scheduled_total")
                == m.get_value("background_task_duration_seconds_count", outcome="success")
                + m.get_value("background_task_duration_seconds_count", outcome="failure")
            ),
            "the demo's tasks",
        )
    assert "responses by status" in demo.stdout
    routes = metrics.label_values("http_server_request_duration_seconds_count", "route")
    assert {"/log/", "/send-message/", "/send-mail/", "/notify/", "unmatched"} <= routes
    statuses = metrics.label_values("http_server_request_duration_seconds_count", "status")
    assert {"200", "404", "422"} <= statuses
    assert metrics.get_value("background_task_failures_total", task="send_email", exception="EmailDeliveryError") > 0
    assert metrics.get_value("background_task_retries_total", task="send_email", exception="EmailDeliveryError") > 0
    assert metrics.get_value("background_task_duration_seconds_count", task="send_email", outcome="success") > 0
    assert metrics.get_value("background_tasks_scheduled_total", route="/notify/") > 0
