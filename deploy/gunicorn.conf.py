"""gunicorn settings: uvicorn workers, and Prometheus multiprocess mode done right.

Run from the project root: gunicorn -c deploy/gunicorn.conf.py
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.settings import Settings, describe_error

try:
    _settings = Settings()
except ValidationError as error:  # fail before any worker forks, naming the setting
    sys.exit(describe_error(error))

wsgi_app = "app.main:create_app_from_env()"
worker_class = "uvicorn_worker.UvicornWorker"
bind = f"{_settings.host}:{_settings.port}"
workers = _settings.web_concurrency
control_socket_disable = True  # one less socket in $HOME; nothing here uses gunicornc
accesslog = None  # the metrics and traces say more; an access line per request costs throughput


def on_starting(server: Any) -> None:
    """Master start (not a HUP reload): give the workers an empty multiprocess directory.

    Counters from a previous run must not leak in, and wiping again on reload would make
    the totals of live workers go backwards.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="prometheus-multiproc-")
    os.makedirs(directory, exist_ok=True)
    for entry in os.scandir(directory):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
    # Set before any worker forks and imports prometheus_client, which reads it at import.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory


def child_exit(server: Any, worker: Any) -> None:
    # Imported here, never at the top: a master that imported prometheus_client before
    # PROMETHEUS_MULTIPROC_DIR was set would fork workers that keep their values in memory.
    from prometheus_client import multiprocess  # noqa: PLC0415

    multiprocess.mark_process_dead(worker.pid)
