"""The queue worker's entry point: `python -m app.worker_main [the library's worker options]`.

It runs the TASK_QUEUE library's own worker (app/queues/<library>/adapter.py: `celery worker`,
`dramatiq`, `rq worker-pool`) as its one child and keeps it running:
- with SIGTERM as a graceful stop: running tasks get up to WORKER_SHUTDOWN_SECONDS, then go
  back to the broker; a stop still running 10 s after that is ended with SIGKILL to the library's
  processes (in a session of their own);
- started again when it dies on its own (Celery 5.7 with kombu 5.7 can die on a broker crash: an
  ack of a message from the dead connection, then AttributeError in kombu's close path; Dramatiq
  stops all its processes when one dies). It counts each restart in
  background_task_worker_restarts_total, itself: a worker that dies before its metrics start is
  counted too.

It owns the metrics directory: wiped once at its start, kept across restarts, so a restarted
worker's counts go on from the dead one's. It serves them on WORKER_METRICS_PORT with the broker's
queue depth (app/observability/worker_metrics.py), folding the files of dead processes at each
scrape, whatever the library.

The first SIGTERM or SIGINT goes to the child, and later ones are ignored: the stop is under way
and has its deadline. When the child has stopped, so does this process, with its status.

With JSON logs, the child's stdout and stderr come through this process, every line a JSON object
(app/observability/output_relay.py).
"""

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

from app.observability.metrics_directory import use_metrics_directory

# First, before anything imports prometheus_client: this process writes its count there too.
_METRICS_DIRECTORY = use_metrics_directory("prometheus-multiproc-worker-")

from app.observability.logging import LOGGER_NAME, configure_logging  # noqa: E402
from app.observability.metrics import Metrics  # noqa: E402
from app.observability.multiprocess import wipe  # noqa: E402
from app.observability.output_relay import relay_in_thread  # noqa: E402
from app.observability.worker_metrics import serve_worker_metrics  # noqa: E402
from app.queues.adapters import adapter, worker_settings  # noqa: E402
from app.settings import WORKER_STOP_GRACE_SECONDS  # noqa: E402

# A worker that dies at once (bad settings, no broker for its retries) is not started in a tight loop.
RESTART_DELAY_SECONDS = 1.0
# After the child's exit, how long its last lines may take to be relayed (a process it left
# behind may hold the pipe open).
OUTPUT_DRAIN_SECONDS = 2.0


def main(argv: list[str]) -> int:
    settings = worker_settings()
    configure_logging(settings.log_level, settings.log_format)
    logger = logging.getLogger(LOGGER_NAME)
    library = adapter(settings)
    command = library.worker_command(argv)
    stop_by: float | None = None  # when a stop signal came: the deadline of the shutdown
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: FrameType | None) -> None:
        # Once: every library takes a second stop signal as "stop now" (Dramatiq's processes
        # exit at once, RQ kills its work horse), and a stop must get WORKER_SHUTDOWN_SECONDS
        # however many signals arrive (a group kill and a parent's, a supervisor that repeats).
        nonlocal stop_by
        if stop_by is not None:
            return
        stop_by = time.monotonic() + settings.worker_shutdown_seconds + WORKER_STOP_GRACE_SECONDS
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    # RQ's warm shutdown signals its work horse with killpg(getpgid(horse), SIGRTMIN). A horse
    # forked a moment before has not yet moved to a group of its own, so the signal reaches the
    # whole group, whose default is to die. Ignored here and so in every child (an ignored signal
    # stays ignored through exec); RQ's horse sets its own handler.
    signal.signal(signal.SIGRTMIN, signal.SIG_IGN)
    wipe(_METRICS_DIRECTORY)
    restarts_total = Metrics().worker_restarts  # made after the wipe; exported at zero from the start
    serve_worker_metrics(settings, _METRICS_DIRECTORY, library.QUEUE, library.depth_reader(), logger)
    env = {**os.environ, **library.worker_env()}
    restarts = 0
    while True:
        # A session of its own: a library signalling its process group never reaches this one.
        child, output = _start(command, env, relay=settings.log_format == "json")
        status = _wait(child, lambda: stop_by, logger)
        if output is not None:
            output.join(timeout=OUTPUT_DRAIN_SECONDS)
        if stop_by is not None or status == 0:
            return status
        restarts += 1
        restarts_total.inc()
        logger.error("the queue worker died: starting it again", extra={"exit_status": status, "restarts": restarts})
        time.sleep(RESTART_DELAY_SECONDS)


def _start(
    command: list[str], env: dict[str, str], *, relay: bool
) -> "tuple[subprocess.Popen[bytes], threading.Thread | None]":
    """The library's worker; with JSON logs, its stdout and stderr relayed as JSON lines."""
    if not relay:
        return subprocess.Popen(command, env=env, start_new_session=True), None  # noqa: S603 - our own arguments
    read, write = os.pipe()
    try:
        child = subprocess.Popen(command, env=env, start_new_session=True, stdout=write, stderr=write)  # noqa: S603
    except BaseException:
        os.close(read)
        raise
    finally:
        os.close(write)
    return child, relay_in_thread(read, sys.stderr.buffer)


def _wait(child: "subprocess.Popen[bytes]", stop_by: Callable[[], float | None], logger: logging.Logger) -> int:
    """The child's exit status. A stop that outlives its deadline is ended with SIGKILL to the
    child's group: Celery's shutdown handler can deadlock writing to the broker's socket when the
    signal comes mid-write, and a stop must end. What was running goes back to the broker."""
    while True:
        try:
            return child.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            deadline = stop_by()
            if deadline is not None and time.monotonic() > deadline:
                logger.error("the queue worker outlived its shutdown deadline: killed", extra={"pid": child.pid})
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
