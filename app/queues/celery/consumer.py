"""The worker's Celery: queued tasks run inside ``observed_task``, as in-process ones do.

The task span is opentelemetry-instrumentation-celery's CONSUMER ``run/<task>`` span, a child of
its PRODUCER ``apply_async/<task>`` span in the web request's trace; ``observed_task`` enriches it
rather than stacking a second one. The envelope (app/queues/backend.py) gives the route and the
queue wait, so the labels match the in-process ones.

``CeleryWorkerSignals`` connects Celery's signals to the worker-process lifecycle
(app/observability/worker_process.py) and to the books; ``uninstall`` disconnects them. Two
consumer bootsteps run at each connection to the broker: ``RestoreOrphans`` gives back what a
broker crash left unacknowledged (and what it cut off as the worker took it: ``RedisTransport``),
and ``ConsumerAlive`` keeps the liveness file fresh.
"""

import contextlib
import json
import logging
import os
import signal
import threading
from typing import Any

from celery import Celery, Task, bootsteps, signals
from celery.apps import worker as celery_worker
from celery.exceptions import Retry, SoftTimeLimitExceeded
from celery.worker.request import Request
from celery.worker.state import task_ready
from kombu.transport import redis as kombu_redis
from opentelemetry import trace

from app.observability.logging import JsonFormatter, configure_logging
from app.observability.task_telemetry import Run
from app.observability.worker_process import QueueWorkerTelemetry, WorkerProcesses
from app.queues.celery.client import instrument_celery
from app.queues.celery.names import DESTINATION
from app.queues.consumer import TimeLimitExceeded, observed_message
from app.queues.envelope import Envelope
from app.queues.task_states import TaskCancelled, TaskStates, claim
from app.retry_policy import RetryPolicy
from app.settings import Settings


def _telemetry(app: Celery) -> QueueWorkerTelemetry:
    processes: WorkerProcesses = app.worker_processes
    return processes.telemetry


# The request's key, in the main process, for what its claim found (the request travels to the
# pool's process with it).
_CLAIMED = "background_task_claimed"


class CancellableRequest(Request):
    """Celery's request for a received task, whose start is claimed in the task state store before
    the pool runs it (where Celery checks its own revokes): a task cancelled while queued is
    acknowledged and not run, with no span (the instrumentation's begins in the pool's process)
    and no count (the web side counted it). The claim, made here once, travels to the pool's
    process with the request."""

    _cancelled = False
    _claimed = False

    def revoked(self) -> bool:
        if super().revoked() or self._cancelled:
            return True
        states: TaskStates | None = getattr(self._app, "task_states", None)
        if states is None or self._claimed:
            return False
        self._claimed = True
        request = self.request_dict
        try:
            attempt = int(request.get("retries") or 0) + 1
            request[_CLAIMED] = claim(
                _telemetry(self._app), states, self.id, task=self.task.name, route=_route(self), attempt=attempt
            )
        except TaskCancelled:
            self._cancelled = True
            task_ready(self)
            self.acknowledge()
        return self._cancelled


def _route(request: Request) -> str:
    return Envelope.read(request.request_dict, request.id).route  # the message's headers


class ObservedTask(Task):
    """Every queued task's class: its run is observed like an in-process task's."""

    Request = CancellableRequest
    task_retry: RetryPolicy | None = None  # its registered task's (client.py)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        policy = self.task_retry
        run = Run()  # what an exception before the attempt leaves: no retry
        try:
            # The CONSUMER span is the instrumentation's, begun before this call: given, not made.
            with observed_message(
                _telemetry(self.app),
                DESTINATION,
                self.name,
                request.id,
                request.headers,
                arguments=(args, kwargs),
                span=trace.get_current_span(),
                redelivered=bool((request.delivery_info or {}).get("redelivered")),
                requeued=(Retry,),
                states=getattr(self.app, "task_states", None),  # the worker's (worker.py)
                claimed=request.get(_CLAIMED),  # by CancellableRequest, in the main process
                attempt=request.retries + 1,
                retry=policy,
            ) as run:
                try:
                    return self.run(*args, **kwargs)
                except SoftTimeLimitExceeded as exc:
                    limit = self.soft_time_limit or self.app.conf.task_soft_time_limit
                    raise TimeLimitExceeded(f"{limit} s") from exc
        except TaskCancelled:
            return None  # run without a claim by CancellableRequest, and cancelled: acknowledged, not run
        except Exception as exc:
            if run.retry_in is None or policy is None:
                raise
            # Celery's own retry: the same task id, published again with a countdown, once the
            # attempt's end is recorded.
            raise self.retry(exc=exc, countdown=run.retry_in, max_retries=policy.max_attempts - 1) from exc


class ConsumerAlive(bootsteps.StartStopStep):
    """Touches WORKER_ALIVE_FILE every few seconds while the consumer is connected and its event loop
    turns. A file gone stale means the consumer is gone while the process may still live (a broker
    away for long, a loop stuck): what the liveness probe checks, as `/metrics` cannot."""

    requires = ("celery.worker.consumer.tasks:Tasks",)
    INTERVAL = 5.0

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._timer: Any = None

    def start(self, parent: Any) -> None:
        telemetry = _telemetry(parent.app)
        path = telemetry.alive_file
        path.touch()
        telemetry.logger.info("consumer ready")
        self._timer = parent.timer.call_repeatedly(self.INTERVAL, path.touch)

    def stop(self, parent: Any) -> None:  # noqa: ARG002 - Celery's bootstep signature
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    shutdown = stop


# Messages a worker took from Redis and could not record as unacknowledged, by delivery tag: what
# RestoreOrphans records and gives back at the next connection.
_UNRECORDED: dict[str, str] = {}


class _RecordingQoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        try:
            super().append(message, delivery_tag)  # type: ignore[no-untyped-call]
        except self.channel.connection_errors:
            delivery = message.delivery_info
            _UNRECORDED[delivery_tag] = json.dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
            raise


class _RecordingChannel(kombu_redis.Channel):
    QoS = _RecordingQoS


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport, whose worker keeps what it took as the broker went away.

    kombu takes a message with BRPOP, then records it in its `unacked` hash in a second round trip:
    a crash between the two (a millisecond per message on a busy worker, hit in one of a few crash
    runs) left it in no list, never run. The taken message is still in the worker's memory then:
    kept here, and given back by RestoreOrphans once the broker answers again.
    """

    Channel = _RecordingChannel


class RestoreOrphans(bootsteps.StartStopStep):
    """After each connection to Redis, gives back the messages delivered before Redis last started.

    Redis's acknowledgements are emulated (kombu keeps a delivered message in an `unacked` hash
    until its ack), and a crash cuts every consumer's connection: a message delivered before it can
    never be acknowledged, and kombu alone would give it back only after the visibility timeout.
    A message delivered before the broker's start is such an orphan whatever worker took it, so any
    worker may give it back, and kombu's `restore_by_tag` makes two workers doing so restore it once.
    A task that was running runs again: a redelivery, counted as one. What this worker took and
    could not record (RedisTransport) is recorded first, as delivered at time 0: an orphan too.
    """

    requires = ("celery.worker.consumer.connection:Connection",)
    # Delivery times are the workers' clocks, the start is Redis's: a margin for their skew.
    CLOCK_SKEW_SECONDS = 1.0

    def start(self, parent: Any) -> None:
        if parent.connection.transport.driver_type != "redis":
            return
        channel = parent.connection.default_channel
        client = channel.client
        for tag, payload in list(_UNRECORDED.items()):
            # Not overwritten if it was recorded after all (the reply lost, not the command).
            pipe = client.pipeline().hsetnx(channel.unacked_key, tag, payload)
            pipe.zadd(channel.unacked_index_key, {tag: 0}).execute()
            del _UNRECORDED[tag]
        seconds, _micro = client.time()
        broker_started = seconds - client.info("server")["uptime_in_seconds"]
        orphans = client.zrangebyscore(channel.unacked_index_key, 0, broker_started - self.CLOCK_SKEW_SECONDS)
        for tag in orphans:
            channel.qos.restore_by_tag(tag, client)
        if orphans:
            _telemetry(parent.app).logger.warning(
                "messages of a lost connection given back", extra={"messages": len(orphans)}
            )

    def shutdown(self, parent: Any) -> None:
        if _UNRECORDED:  # the broker never answered again before the stop
            _telemetry(parent.app).logger.error(
                "messages taken as the broker went away lost: it did not answer again before the stop",
                extra={"messages": len(_UNRECORDED)},
            )


def _say_as_json(message: str, *_: Any) -> None:
    """Celery prints its shutdown notices from signal handlers with os.write, which takes no lock
    a handler could deadlock on. Still os.write, as a JSON line like every other."""
    record = logging.LogRecord("celery.apps.worker", logging.WARNING, __file__, 0, message.strip(), None, None)
    with contextlib.suppress(OSError):  # as Celery's: losing a notice must not abort the shutdown
        os.write(2, (JsonFormatter().format(record) + "\n").encode())


class CeleryWorkerSignals:
    """The worker's handlers, one per Celery signal, named for it."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self._app = app
        self._settings = settings
        self.processes = WorkerProcesses(settings, instrument=instrument_celery)
        self._connected: list[tuple[Any, Any]] = [
            (signals.celeryd_init, self.on_celeryd_init),
            (signals.setup_logging, self.on_setup_logging),
            (signals.worker_init, self.on_worker_init),
            (signals.worker_process_init, self.on_worker_process_init),
            (signals.worker_process_shutdown, self.on_worker_process_shutdown),
            (signals.task_revoked, self.on_task_revoked),
            (signals.task_unknown, self.on_task_unknown),
            (signals.worker_shutting_down, self.on_worker_shutting_down),
        ]

    def install(self) -> None:
        self._app.worker_processes = self.processes
        if self._settings.broker_on_redis:
            self._app.conf.broker_transport = f"{__name__}:{RedisTransport.__name__}"
        self._app.steps["consumer"].update({ConsumerAlive, RestoreOrphans})
        for celery_signal, handler in self._connected:
            celery_signal.connect(handler, weak=False)

    def uninstall(self) -> None:
        for celery_signal, handler in self._connected:
            celery_signal.disconnect(handler)
        self._app.steps["consumer"].difference_update({ConsumerAlive, RestoreOrphans})

    def on_celeryd_init(self, instance: Any = None, **_: Any) -> None:
        # The first hook of `celery worker`, before its privilege check warns: from here on, lines
        # are in our format. No banner: it is printed, not logged; the "ready" line says the same.
        configure_logging(self._settings.log_level, self._settings.log_format)
        if self._settings.log_format == "json":
            celery_worker.safe_say = _say_as_json
        instance.quiet = True

    def on_setup_logging(self, **_: Any) -> None:
        pass  # connected, it stops Celery's own setup (and its --loglevel) in the worker and its children

    def on_worker_init(self, **_: Any) -> None:
        self.processes.before_fork()

    def on_worker_process_init(self, **_: Any) -> None:
        self.processes.in_child()

    def on_worker_process_shutdown(self, **_: Any) -> None:
        self.processes.at_child_exit()

    def on_worker_shutting_down(self, how: str = "", **_: Any) -> None:
        # A warm shutdown waits for running tasks however long they take; Celery's cold one (its
        # SIGQUIT) gives their messages back. Celery's soft shutdown joins the two, but sleeps its
        # whole timeout with its event loop held whenever a task was running (celery#9505): every
        # stop took WORKER_SHUTDOWN_SECONDS, and tasks that ended meanwhile were given back too.
        if how == "Warm":
            cold = threading.Timer(self._settings.worker_shutdown_seconds, os.kill, (os.getpid(), signal.SIGQUIT))
            cold.daemon = True
            cold.start()

    def on_task_revoked(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        # The sender is the task; the request is its context, which carries the headers, no name.
        self._dropped(request, getattr(sender, "name", None) or "unknown", "revoked")

    def on_task_unknown(self, name: str = "unknown", message: Any = None, **_: Any) -> None:
        self._dropped(message, name, "unregistered")

    def _dropped(self, carrier: Any, task: str, reason: str) -> None:
        envelope = Envelope.read(getattr(carrier, "headers", None), task_id="")
        self.processes.telemetry.books.dropped(task, envelope.route, reason)


def install(app: Celery, settings: Settings) -> CeleryWorkerSignals:
    """Connects the worker's handlers: call once, on the worker's own Celery app."""
    handlers = CeleryWorkerSignals(app, settings)
    handlers.install()
    return handlers
