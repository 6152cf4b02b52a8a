"""gunicorn settings: uvicorn workers, and Prometheus multiprocess mode done right.

Run from the project root: gunicorn -c deploy/gunicorn.conf.py
"""

import math
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.observability.metrics_directory import use_metrics_directory

# First, before anything imports prometheus_client. A HUP reload runs this file again and finds
# the variable already set.
_multiproc_dir = use_metrics_directory("prometheus-multiproc-")

from app.observability.logging import exit_with, log_what_bypasses_logging, logging_config  # noqa: E402
from app.observability.multiprocess import merge_dead_worker, wipe  # noqa: E402
from app.settings import SHUTDOWN_FLUSH_SECONDS, Settings, describe_error  # noqa: E402

try:
    _settings = Settings()
except ValidationError as error:  # fail before any worker forks, naming the setting
    exit_with(describe_error(error))

wsgi_app = "app.main:create_app_from_env()"
worker_class = "app.gunicorn_worker.DrainingUvicornWorker"
bind = f"{_settings.host}:{_settings.port}"
workers = _settings.web_concurrency
# A stopping worker drains its tasks for DRAIN_SECONDS; the margin covers flushing spans and
# Sentry events before the master's SIGKILL. A draining worker stops heartbeating, so the
# heartbeat timeout must not fire first.
graceful_timeout = math.ceil(_settings.drain_seconds) + SHUTDOWN_FLUSH_SECONDS
timeout = max(30, graceful_timeout)
control_socket_disable = True  # one less socket in $HOME; nothing here uses gunicornc
accesslog = None  # uvicorn's access line has the query string; ACCESS_LOG=true logs the route instead
# gunicorn's, uvicorn's and the app's lines in one format (JSON unless LOG_FORMAT=text).
logconfig_dict = logging_config(_settings.log_level, _settings.log_format)


def on_starting(server: Any) -> None:
    """Master start (not a HUP reload): give the workers an empty multiprocess directory.

    Counters from a previous run must not leak in, and wiping again on reload would make
    the totals of live workers go backwards.
    """
    wipe(_multiproc_dir)
    log_what_bypasses_logging()


def child_exit(server: Any, worker: Any) -> None:
    merge_dead_worker(_multiproc_dir, worker.pid)
