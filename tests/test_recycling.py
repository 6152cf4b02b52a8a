"""/metrics stays exact, and its files few, however many workers have come and gone.

How fast the scrape stays is measured by `make bench` (scrape_ratio_500_vs_0), not here: a timing
compared within a test fails on a busy machine, not on a slow scrape. What keeps it fast is
asserted: dead workers' files are merged, so the files a scrape reads do not grow with recycles.
"""

import os
import signal
from pathlib import Path

from harness import TOKEN, Gunicorn, started, wait_for

RECYCLES = 500
WORKERS = 8  # a worker's life here is mostly waiting (boot, drain): more of them recycle faster
ROUTES = ("/log/", "/send-mail/", "/notify/", "/send-message/")


def _traffic(server: Gunicorn, first: int, count: int) -> int:
    with server.connection_per_request_client() as client:
        for i in range(first, first + count):
            params = {"msg": f"m{i}", "email": f"r{i}@example.com", "message": f"m{i}"}
            headers = {"Authorization": f"Bearer {TOKEN}"}
            assert client.post(ROUTES[i % len(ROUTES)], params=params, headers=headers).status_code == 200
    sent = first + count
    wait_for(lambda: len(server.log_file_lines()) == sent, what="every task of the traffic")
    return sent


def test_scrapes_after_500_recycled_workers_are_exact_and_read_few_files(tmp_path: Path) -> None:
    # --preload only makes each of the 500 worker boots cheap; merging does not depend on it.
    env = {"API_TOKEN": TOKEN, "EMAIL_SEND_SECONDS": "0"}
    for server in started(Gunicorn(tmp_path, env=env, workers=WORKERS, options=("--preload",))):
        sent = _traffic(server, 0, 4 * WORKERS)
        recycled_workers = 0
        while recycled_workers < RECYCLES:
            sent = _traffic(server, sent, 2 * WORKERS)  # so the workers about to go leave files behind
            workers = server.worker_pids()
            for pid in workers:
                os.kill(pid, signal.SIGTERM)  # what a HUP or max_requests does to each worker
            recycled_workers += len(workers)
            wait_for(
                lambda: server.started_workers() == WORKERS + recycled_workers,  # noqa: B023
                what="the replacements",
            )
        sent = _traffic(server, sent, 4 * WORKERS)  # the live workers' files as in the fresh state
        files = sorted(p.name for p in server.multiproc_dir.glob("*.db"))
        metrics = server.wait_for_metrics(lambda m: m.get_value("background_tasks_pending") == 0, "every task")

    assert "counter_merged.db" in files
    assert len(files) <= 2 + 3 * WORKERS, files  # merged counters and histograms, and the live workers'
    for i, route in enumerate(ROUTES):
        calls = len(range(i, sent, len(ROUTES)))
        assert metrics.get_value("background_tasks_scheduled_total", route=route) == calls
        assert metrics.get_value("background_task_duration_seconds_count", route=route, outcome="success") == calls
        assert metrics.get_value("http_server_request_duration_seconds_count", route=route, status="200") == calls
        assert metrics.get_value("http_request_lifetime_seconds_count", route=route) == calls
    assert metrics.get_value("background_task_failures_total") == 0
    assert metrics.get_value("background_tasks_dropped_total") == 0
