"""Exact counts across workers, on a service started with the defaults (no Sentry, no OTLP)."""

import itertools
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from harness import ROOT, TOKEN, Gunicorn, log_lines, started, wait_for

ROUNDS = 60  # per endpoint and batch: 240 requests per batch
ENDPOINTS = {  # route: (task, request parameters for the i-th call)
    "/log/": ("write_log", lambda i: {"params": {"msg": f"count {i}"}}),
    "/send-mail/": ("send_email", lambda i: {"params": {"email": f"count{i}@example.com"}}),
    "/notify/": ("write_log", lambda _: {"headers": {"Authorization": f"Bearer {TOKEN}"}}),
    "/send-message/": ("log_message", lambda i: {"params": {"message": f"count {i}"}}),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    yield from started(
        # DEBUG: a line per successful task too, which says which worker ran it.
        Gunicorn(
            tmp_path_factory.mktemp("defaults"),
            env={"API_TOKEN": TOKEN, "EMAIL_SEND_SECONDS": "0.05", "LOG_LEVEL": "DEBUG"},
        )
    )


def _post(server: Gunicorn, route: str, i: int) -> int:
    kwargs = ENDPOINTS[route][1](i)
    return server.thread_client().post(route, **kwargs).status_code


def _task_pids(server: Gunicorn) -> set[int]:
    return {line["pid"] for line in server.app_logs() if line.get("outcome") == "success"}


def test_counts_are_exact_across_workers(server: Gunicorn) -> None:
    sent = 0
    calls = itertools.count()
    with ThreadPoolExecutor(max_workers=16) as pool:
        # Batches until both workers have run tasks; every batch counts in the totals.
        for _ in range(5):
            batch = [(route, next(calls)) for _ in range(ROUNDS) for route in ENDPOINTS]
            statuses = list(pool.map(lambda job: _post(server, *job), batch))
            assert statuses == [200] * len(batch)
            sent += ROUNDS
            lines = sent * len(ENDPOINTS)
            wait_for(lambda: len(server.log_file_lines()) == lines, what="every task of the batch")  # noqa: B023
            if len(_task_pids(server)) == 2:
                break
    assert len(_task_pids(server)) == 2, "one worker served everything in every batch"
    assert sent * len(ENDPOINTS) >= 200

    # The lifetime is recorded last for each request, after its task's metrics.
    metrics = server.wait_for_metrics(
        lambda m: all(m.get_value("http_request_lifetime_seconds_count", route=r) >= sent for r in ENDPOINTS),
        "every request to finish",
    )
    for route, (task, _) in ENDPOINTS.items():
        assert metrics.get_value("http_server_request_duration_seconds_count", route=route) == sent
        assert metrics.get_value("http_server_request_duration_seconds_count", route=route, status="200") == sent
        assert metrics.get_value("background_tasks_scheduled_total", task=task, route=route) == sent
        assert metrics.get_value("background_task_duration_seconds_count", task=task, route=route) == sent
        assert (
            metrics.get_value("background_task_duration_seconds_count", task=task, route=route, outcome="success")
            == sent
        )
        assert metrics.get_value("background_task_start_delay_seconds_count", task=task, route=route) == sent
        assert metrics.get_value("http_request_lifetime_seconds_count", route=route) == sent
    assert metrics.get_value("background_task_failures_total") == 0
    assert metrics.get_value("background_tasks_dropped_total") == 0
    assert metrics.get_value("background_tasks_in_progress") == 0
    assert metrics.get_value("http_server_active_requests", route="/log/") == 0

    # Every accepted message is one whole line, exactly once, though two workers appended.
    lines = server.log_file_lines()
    for i in range(sent * len(ENDPOINTS)):
        route = list(ENDPOINTS)[i % len(ENDPOINTS)]
        if route == "/log/":
            assert lines.count(f"count {i}") == 1
        elif route == "/send-message/":
            assert sum(line.endswith(f": count {i}") for line in lines) == 1
        elif route == "/send-mail/":
            assert lines.count(f"Sent email to count{i}@example.com: Welcome!") == 1


def test_unknown_paths_are_one_label(server: Gunicorn) -> None:
    for path in ("/nope", "/log", "/a/b/c?x=1", "/send-mail/extra"):
        assert httpx.post(server.url + path, timeout=30).status_code in {404, 307}
    routes = server.metrics().label_values("http_server_request_duration_seconds_count", "route")
    assert routes <= {*ENDPOINTS, "/metrics", "unmatched"}
    assert "unmatched" in routes


def test_defaults_run_quietly(server: Gunicorn) -> None:
    """No DSN, no OTLP endpoint: nothing fails and nothing complains above INFO."""
    stderr = server.stderr()
    assert "Traceback" not in stderr
    lines = log_lines(stderr)
    assert [line for line in lines if line["level"] not in {"INFO", "DEBUG"}] == []
    with httpx.Client(base_url=server.url) as client:
        response = client.post("/log/", params={"msg": "quiet"})
    assert response.headers["traceparent"].startswith("00-")


def test_bad_setting_stops_startup_naming_it(tmp_path: Path) -> None:
    for env, name in [
        ({"EMAIL_SEND_SECONDS": "soon"}, "EMAIL_SEND_SECONDS"),
        ({"API_TOKEN": "test123"}, "API_TOKEN"),
        ({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY"),
        ({"SENTRY_DSN": "not a url"}, "SENTRY_DSN"),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
    ]:
        server = Gunicorn(tmp_path, env=env)
        result = subprocess.run(server.args, cwd=ROOT, env=server.env, capture_output=True, timeout=60, check=False)
        assert result.returncode != 0
        assert name in result.stderr.decode()
        assert "test123" not in result.stderr.decode()
