"""The hooks a queue adapter calls around a process forked for one task (RQ's work horse), where
the job ends without one: the parent's count of the task in progress closes once, and only if it
was opened."""

from pathlib import Path

import pytest

from app.observability.worker_process import WorkerProcesses
from app.settings import Settings


def test_a_job_whose_fork_failed_or_never_came_leaves_nothing_in_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    processes = WorkerProcesses(Settings(), instrument=lambda _provider: None)
    processes.before_fork()
    registry = processes.telemetry.metrics.registry

    def in_progress() -> float | None:
        return registry.get_sample_value("background_tasks_in_progress", {"task": "send_email"})

    processes.before_job_fork("send_email")
    assert in_progress() == 1
    processes.child_reaped(0)  # the fork failed
    assert in_progress() == 0
    processes.child_reaped(0)  # the next job failed before its fork (RQ's Redis call before it)
    assert in_progress() == 0
