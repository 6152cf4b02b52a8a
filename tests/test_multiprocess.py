"""Folding dead workers' metric files together, in process, on the real file format."""

import threading
import time
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict, mmap_key

from app.observability.multiprocess import exposition, merge_dead_worker
from harness import Metrics

COUNTER = mmap_key("jobs", "jobs_total", ["task"], ["email"], "Jobs.")
BUCKET = mmap_key("wait_seconds", "wait_seconds_bucket", ["le"], ["1.0"], "Wait.")
INF = mmap_key("wait_seconds", "wait_seconds_bucket", ["le"], ["+Inf"], "Wait.")
SUM = mmap_key("wait_seconds", "wait_seconds_sum", [], [], "Wait.")


def _worker_files(directory: Path, pid: int, jobs: float, waits: tuple[float, float]) -> None:
    """What a worker that ran `jobs` jobs and waited `waits` (≤1 s, >1 s) times leaves behind."""
    counter = MmapedDict(str(directory / f"counter_{pid}.db"))
    counter.write_value(COUNTER, jobs, 0.0)
    counter.close()
    histogram = MmapedDict(str(directory / f"histogram_{pid}.db"))
    histogram.write_value(BUCKET, waits[0], 0.0)  # per-bucket counts, as the library stores them
    histogram.write_value(INF, waits[1], 0.0)
    histogram.write_value(SUM, waits[0] * 0.5 + waits[1] * 2, 0.0)
    histogram.close()


def _scrape(directory: Path) -> Metrics:
    return Metrics.parse(exposition(str(directory)).decode())


def test_merging_keeps_totals_exact_and_leaves_two_files(tmp_path: Path) -> None:
    for pid in range(100, 300):
        _worker_files(tmp_path, pid, jobs=3, waits=(2, 1))
    before = _scrape(tmp_path)
    for pid in range(100, 300):
        merge_dead_worker(str(tmp_path), pid)
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["counter_merged.db", "histogram_merged.db"]
    assert _scrape(tmp_path) == before
    assert before.get_value("jobs_total", task="email") == 600
    assert before.get_value("wait_seconds_bucket", le="1.0") == 400
    assert before.get_value("wait_seconds_bucket", le="+Inf") == 600
    assert before.get_value("wait_seconds_count") == 600
    assert before.get_value("wait_seconds_sum") == 600


def test_no_scrape_double_counts_or_misses_a_worker_while_merging(tmp_path: Path) -> None:
    for pid in range(1000, 1300):
        _worker_files(tmp_path, pid, jobs=1, waits=(1, 0))
    seen: list[float] = []
    done = threading.Event()

    def scrape_continuously() -> None:
        while not done.is_set():
            seen.append(_scrape(tmp_path).get_value("jobs_total"))

    def let_a_scrape_finish() -> None:
        # The scraper may get too little of the GIL on a busy machine to overlap the merges
        # at all; waiting here for one scrape every 50 merges makes the overlap certain.
        before = len(seen)
        deadline = time.monotonic() + 10
        while len(seen) == before and time.monotonic() < deadline:
            time.sleep(0.001)

    scraper = threading.Thread(target=scrape_continuously)
    scraper.start()
    try:
        for pid in range(1000, 1300):
            if pid % 50 == 0:
                let_a_scrape_finish()
            merge_dead_worker(str(tmp_path), pid)
    finally:
        done.set()
        scraper.join()
    assert len(seen) >= 6
    assert set(seen) == {300.0}


def test_a_reused_pid_starts_from_zero(tmp_path: Path) -> None:
    _worker_files(tmp_path, 4242, jobs=5, waits=(0, 0))
    merge_dead_worker(str(tmp_path), 4242)
    _worker_files(tmp_path, 4242, jobs=2, waits=(0, 0))  # a new worker that got the same pid
    assert _scrape(tmp_path).get_value("jobs_total") == 7
    merge_dead_worker(str(tmp_path), 4242)
    assert _scrape(tmp_path).get_value("jobs_total") == 7


def test_live_gauges_of_the_dead_worker_go(tmp_path: Path) -> None:
    gauge = MmapedDict(str(tmp_path / "gauge_livesum_77.db"))
    gauge.write_value(mmap_key("busy", "busy", [], [], "Busy."), 3, 0.0)
    gauge.close()
    assert _scrape(tmp_path).get_value("busy") == 3
    merge_dead_worker(str(tmp_path), 77)
    assert _scrape(tmp_path).get_value("busy") == 0
