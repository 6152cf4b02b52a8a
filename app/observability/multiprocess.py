"""Prometheus multiprocess files whose number does not grow with every worker that ever lived.

prometheus-client keeps one counter file and one histogram file per worker pid, and a scrape
reads them all, so with recycled workers scrapes slow down without bound. When gunicorn's
master reaps a worker, `merge_dead_worker` folds that pid's counter and histogram values into
one `<kind>_merged.db` per kind and deletes the pid's files:

- Exact and monotonic. Values are summed per series key, and a histogram file holds
  per-bucket (not cumulative) counts, so the sum is the same total the collector would have
  made from the separate files.
- No double count, no gap. The merge writes a temporary file that the collector's `*.db` glob
  never matches, renames it over the merged file and then deletes the dead pid's files, all
  under an exclusive lock; every scrape reads under a shared lock. So a scrape sees the dead
  worker's values either in its own files or in the merged file, never both and never neither.
- Safe under pid reuse. The merge runs in the master's `child_exit`, before the master forks
  any replacement, so by the time the pid can name a new worker its old files are gone and the
  new worker starts from zero instead of adding to (or being merged with) the dead one's values.
- The live gauges (livesum) of the dead pid are removed, as `mark_process_dead` does.

A queue worker has no `child_exit`, whatever its library: its entry point folds the files of dead
processes at each scrape (`collect_live`, checking liveness under the lock, so a pid reused
meanwhile is never folded), and a process that inherits a dead one's pid folds its files before it
writes any.
"""

import fcntl
import glob
import os
import re
import shutil
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

_LOCK_FILE = "merge.lock"
_MERGED_KINDS = ("counter", "histogram")
_PID_FILE = re.compile(r"_(\d+)\.db$")
# A child forked while this process holds the flock would inherit the locked file description and
# keep it locked for its whole life. No fork happens while this lock is held.
_NO_FORK_WHILE_LOCKED = threading.Lock()
os.register_at_fork(
    before=_NO_FORK_WHILE_LOCKED.acquire,
    after_in_parent=_NO_FORK_WHILE_LOCKED.release,
    after_in_child=_NO_FORK_WHILE_LOCKED.release,
)


@contextmanager
def _locked(directory: str, operation: int) -> Iterator[None]:
    with _NO_FORK_WHILE_LOCKED:
        fd = os.open(os.path.join(directory, _LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, operation)
            yield
        finally:
            os.close(fd)  # releases the lock


def wipe(directory: str) -> None:
    """At a server's start: values of a previous run must not leak in."""
    for entry in os.scandir(directory):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


class _Files(Collector):
    def __init__(self, directory: str) -> None:
        self._directory = directory

    def collect(self) -> Iterable[Metric]:
        return _merged(self._directory)


def _merged(directory: str) -> list[Metric]:
    """prometheus-client's merge of every process's files, but those still empty: a process
    (RQ forks one per task) creates its file, then sizes it, and a scrape in between would fail
    on it. An empty file holds no value yet, so leaving it out loses nothing."""
    files = []
    for path in glob.glob(os.path.join(directory, "*.db")):
        with suppress(FileNotFoundError):
            if os.path.getsize(path) > 0:
                files.append(path)
    return list(MultiProcessCollector.merge(files, accumulate=True))  # type: ignore[no-untyped-call]


def exposition(directory: str) -> bytes:
    registry = CollectorRegistry()  # a fresh one per scrape, as the multiprocess docs require
    registry.register(_Files(directory))
    with _locked(directory, fcntl.LOCK_SH):
        return generate_latest(registry)


def collect_live(directory: str) -> list[Metric]:
    """The merged values of every process, after folding the files of those that died."""
    with _locked(directory, fcntl.LOCK_EX):
        pids = {int(m.group(1)) for name in os.listdir(directory) if (m := _PID_FILE.search(name))}
        for pid in pids - {os.getpid()}:
            if not _alive(pid):
                _merge(directory, pid)
    with _locked(directory, fcntl.LOCK_SH):
        return _merged(directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except ProcessLookupError:
        return False
    except OSError:
        return True  # not ours to judge (another user's process): leave its files alone
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited; its pid is not yet free


def fold_if_dead(directory: str, pid: int) -> None:
    """The files of ``pid`` folded if it has exited, judged under the lock as at a scrape: a pid
    reused meanwhile names a live process, whose files stay."""
    with _locked(directory, fcntl.LOCK_EX):
        if not _alive(pid):
            _merge(directory, pid)


def merge_dead_worker(directory: str, pid: int) -> None:
    with _locked(directory, fcntl.LOCK_EX):
        _merge(directory, pid)


def _merge(directory: str, pid: int) -> None:
    mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
    for kind in _MERGED_KINDS:
        dead = os.path.join(directory, f"{kind}_{pid}.db")
        if not os.path.exists(dead):
            continue
        if os.path.getsize(dead) == 0:  # died before it sized its file: nothing in it
            os.unlink(dead)
            continue
        merged = os.path.join(directory, f"{kind}_merged.db")
        totals: dict[str, float] = {}
        for path in (merged, dead):
            if os.path.exists(path):
                for key, value, _timestamp, _position in MmapedDict.read_all_values_from_file(path):  # type: ignore[no-untyped-call]
                    totals[key] = totals.get(key, 0.0) + value
        temporary = merged + ".tmp"
        with suppress(FileNotFoundError):  # left by a master that died mid-merge
            os.unlink(temporary)
        writer = MmapedDict(temporary)  # type: ignore[no-untyped-call]
        try:
            for key, value in totals.items():
                writer.write_value(key, value, 0.0)  # type: ignore[no-untyped-call]
        finally:
            writer.close()  # type: ignore[no-untyped-call]
        os.replace(temporary, merged)
        os.unlink(dead)
