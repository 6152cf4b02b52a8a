"""The queue worker's entry point: `python -m app.worker_main [the library's worker options]`.

It runs the configured queue library's own worker (app/queues/: Celery's `celery worker`) as its
one child and keeps it running:
- with SIGTERM as a soft shutdown (REMAP_SIGTERM=SIGQUIT for Celery): running tasks get
  WORKER_SHUTDOWN_SECONDS, then go back to the broker;
- started again when it dies on its own. Celery 5.7 with kombu 5.7 can die on a broker crash (an
  ack of a message from the dead connection, then AttributeError in kombu's close path), and no
  setting or release avoids it. It counts each restart in background_task_worker_restarts_total,
  itself: a worker that dies before its metrics start is counted too.

It owns the metrics directory: wiped once at its start, kept across restarts, so a restarted
worker's counts go on from the dead one's, which scrapes fold in.

SIGTERM and SIGINT go to the child; when it has stopped, so does this process, with its status.
"""

import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

from app.observability.metrics_directory import use_metrics_directory

# First, before anything imports prometheus_client: this process writes its count there too.
_METRICS_DIRECTORY = use_metrics_directory("prometheus-multiproc-worker-")

from app.observability.logging import LOGGER_NAME, configure_logging  # noqa: E402
from app.observability.metrics import Metrics  # noqa: E402
from app.observability.multiprocess import wipe  # noqa: E402
from app.observability.worker_process import SUPERVISED_ENV  # noqa: E402
from app.queues import worker_command, worker_settings  # noqa: E402

# A worker that dies at once (bad settings, no broker for its retries) is not started in a tight loop.
RESTART_DELAY_SECONDS = 1.0


def main(argv: list[str]) -> int:
    settings = worker_settings()
    configure_logging(settings.log_level, settings.log_format)
    logger = logging.getLogger(LOGGER_NAME)
    command = worker_command(argv)
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    wipe(_METRICS_DIRECTORY)
    restarts_total = Metrics().worker_restarts  # made after the wipe; exported at zero from the start
    env = {**os.environ, "REMAP_SIGTERM": "SIGQUIT", SUPERVISED_ENV: "1"}
    restarts = 0
    while True:
        child = subprocess.Popen(command, env=env)  # noqa: S603 - our own interpreter and arguments
        status = child.wait()
        if stopping or status == 0:
            return status
        restarts += 1
        restarts_total.inc()
        logger.error("the Celery worker died: starting it again", extra={"exit_status": status, "restarts": restarts})
        time.sleep(RESTART_DELAY_SECONDS)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
