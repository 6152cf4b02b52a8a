"""The worker's Dramatiq: each queued task runs inside ``observed_task``, as in-process ones do,
in the CONSUMER span that continues the request's trace (app/queues/spans.py). ``WorkerHooks``
connects Dramatiq's middleware hooks to the worker-process lifecycle
(app/observability/worker_process.py)."""

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dramatiq import Broker, Worker
from dramatiq.middleware import CurrentMessage, Middleware
from dramatiq.middleware import TimeLimitExceeded as DramatiqTimeLimitExceeded

from app.observability.logging import configure_logging
from app.observability.worker_process import WorkerProcesses
from app.queues.consumer import TimeLimitExceeded, observed_message
from app.queues.dramatiq.names import DESTINATION, ENVELOPE
from app.queues.task_states import TaskCancelled, TaskStates
from app.settings import Settings
from app.task_registry import RegisteredTask

ACTOR_LOGGER = "dramatiq.actors"
# Dramatiq's lines that name a message with its arguments (`send_email('a@example.com', …)`): the
# actor's at DEBUG, the worker thread's when a task fails (observed_task logs that failure, without
# them). Task arguments are never logged.
QUIETED_LOGGERS = {ACTOR_LOGGER: logging.INFO, "dramatiq.worker.WorkerThread": logging.CRITICAL}
ALIVE_INTERVAL_SECONDS = 5.0


class WorkerHooks(Middleware):
    """In each of Dramatiq's worker processes (it forks them, then each imports the worker module):
    the telemetry at boot, the spans and Sentry events flushed at shutdown."""

    def __init__(self, processes: WorkerProcesses, settings: Settings) -> None:
        self.processes = processes
        self._settings = settings
        self._stopping = threading.Event()

    def after_process_boot(self, broker: Broker) -> None:  # noqa: ARG002 - Dramatiq's hook signature
        configure_logging(self._settings.log_level, self._settings.log_format)  # `dramatiq --skip-logging`
        for name, level in QUIETED_LOGGERS.items():
            logging.getLogger(name).setLevel(max(level, logging.getLogger().level))
        self.processes.before_fork()
        self.processes.in_child()

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:  # noqa: ARG002
        telemetry = self.processes.telemetry
        telemetry.logger.info("consumer ready")
        threading.Thread(target=self._keep_alive, args=(worker, telemetry.alive_file), daemon=True).start()

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:  # noqa: ARG002
        self._stopping.set()

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:  # noqa: ARG002
        self.processes.at_child_exit()

    def _keep_alive(self, worker: Worker, path: Path) -> None:
        """WORKER_ALIVE_FILE touched every few seconds while every consumer thread of this process
        lives (each reconnects to the broker by itself): what the liveness probe checks."""
        while not self._stopping.is_set():
            if all(thread.is_alive() for thread in worker.consumers.values()):
                path.touch()
            self._stopping.wait(ALIVE_INTERVAL_SECONDS)


def observed_actor(processes: WorkerProcesses, states: TaskStates | None, task: RegisteredTask) -> Callable[..., None]:
    """The function Dramatiq runs for ``task``: its function observed."""
    name, func, policy = task.name, task.run, task.retry

    def run(*args: Any, **kwargs: Any) -> None:
        telemetry = processes.telemetry
        message = CurrentMessage.get_current_message()
        assert message is not None  # the broker's middleware has CurrentMessage
        try:
            with observed_message(
                telemetry,
                DESTINATION,
                name,
                message.message_id,
                message.options.get(ENVELOPE),
                arguments=(args, kwargs),
                # RabbitMQ flags a redelivery; Dramatiq's Redis broker gives a dead worker's
                # message back as it was sent, and the state store tells it (its run never ended).
                redelivered=getattr(message, "redelivered", None),
                states=states,
                attempt=message.options.get("retries", 0) + 1,  # Dramatiq's Retries counts them
                retry=policy,
            ):
                try:
                    func(*args, **kwargs)
                except DramatiqTimeLimitExceeded as exc:  # an Interrupt, raised in this thread at the limit
                    raise TimeLimitExceeded(str(exc)) from exc
        except TaskCancelled:
            pass  # acknowledged, not run

    run.__name__ = run.__qualname__ = name
    # Dramatiq's actor logs on a logger named after the function's module: one of QUIETED_LOGGERS.
    run.__module__ = ACTOR_LOGGER
    return run
