"""RQ's stop signal, where it lands between two jobs: RQ's handler raises StopRequested wherever
the worker is, and an ``except Exception`` there (a logging handler's, the telemetry guard's) used
to swallow it, so the worker went on taking jobs until its stop's deadline killed it."""

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from harness.queue import RedisServer

JOBS = 3


def test_a_stop_signal_that_lands_in_a_logging_handler_between_jobs_still_stops_the_worker(tmp_path: Path) -> None:
    broker = RedisServer(tmp_path / "redis").start()
    try:
        env = {
            **os.environ,
            "BROKER_URL": broker.url,
            "TASK_QUEUE": "rq",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
            "LOG_FILE": str(tmp_path / "tasks.log"),
            "WORKER_ALIVE_FILE": str(tmp_path / "alive"),
            "EMAIL_SEND_SECONDS": "0",
        }
        probe = "from tests.test_rq_worker_stop import stop_while_logging; stop_while_logging()"
        # The process ends by itself (a burst worker stops when the queue is empty); the timeout
        # only keeps a defect from hanging the suite.
        done = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr[-4000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        # The signal came as the first job ended: that job ran, the other two wait for the next worker.
        assert result == {"signalled": 1, "ran": 1, "waiting": JOBS - 1}, done.stderr[-4000:]
        assert (tmp_path / "tasks.log").read_text().count("Sent email to") == 1
    finally:
        broker.stop()


def stop_while_logging() -> None:
    """In a process of its own: the template's RQ worker takes jobs from a real Redis, and the stop
    signal comes to it inside a logging handler's ``emit`` (which, as every handler of the standard
    library, reports what it raises and goes on): at RQ's heartbeat after the first job, its state
    idle."""
    from app.queues.redis_client import redis_client  # noqa: PLC0415 - in the probe's process only
    from app.queues.rq.client import job_queue  # noqa: PLC0415
    from app.queues.rq.names import function_path  # noqa: PLC0415
    from app.queues.rq.worker import ObservedWorker  # noqa: PLC0415

    connection = redis_client(os.environ["BROKER_URL"])
    queue = job_queue(connection)
    for i in range(JOBS):
        queue.enqueue_call(function_path("send_email"), args=(f"stop-{i}@example.com", "s", "b"), result_ttl=1)
    pool_worker, signalled, ended = os.getpid(), [], []

    class StopWhileLogging(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                message = record.getMessage()
                if os.getpid() != pool_worker or signalled:
                    return
                if "work horse finished" in message:
                    ended.append(record)
                elif ended and "sent heartbeat" in message:
                    signalled.append(record)
                    os.kill(os.getpid(), signal.SIGINT)  # Python runs the signal's handler here
            except Exception:  # what logging.StreamHandler.emit does
                self.handleError(record)

    logging.getLogger("rq.worker").addHandler(StopWhileLogging())
    worker = ObservedWorker([queue], connection=connection, serializer=queue.serializer)
    worker.work(burst=True, logging_level="DEBUG")
    ran = JOBS - queue.count
    print(json.dumps({"signalled": len(signalled), "ran": ran, "waiting": queue.count}))
