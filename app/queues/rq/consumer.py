"""The RQ worker's observed run: ``ObservedWorker``, the worker class `rq worker-pool` runs
(app/queues/rq/worker.py), and ``observed``, the function RQ runs for each job. Every pool worker
and work horse writes its values in PROMETHEUS_MULTIPROC_DIR.

RQ forks a work horse for each job. Each queued task runs in it inside ``observed_task``, in the
CONSUMER span that continues the request's trace (app/queues/spans.py); the pool worker folds the
horse's metric files once it has exited, so their number does not grow with the jobs run.

What RQ does, and what is counted:
- a horse killed mid-task (SIGKILL, out of memory): RQ moves the job to its failed registry and
  does not run it again; it is a failure, WorkerProcessLost, with one Sentry event;
- a task past TASK_TIME_LIMIT_SECONDS: RQ's timeout raises in the horse; TimeLimitExceeded;
- SIGTERM: RQ's warm shutdown lets the running job finish; after WORKER_SHUTDOWN_SECONDS the job
  is interrupted (as RQ's HerokuWorker does) and put back on the queue through RQ's failed-job
  registry, and its next run is counted as a redelivery;
- a job left in the queue's intermediate list, between RQ's move of it there and its start (a
  broker crash; a pool worker stopped as it took the job): it would wait there for RQ's
  maintenance (over 20 minutes), then fail. Every pool worker notes the list at a heartbeat
  (and when it starts or reconnects) and gives back to the front of the queue, at a heartbeat
  10 s or more later, the noted jobs still there unstarted (``give_back_stranded``). A run that
  the task state store saw start before is counted as a redelivery.

Nothing here connects on import: RQ imports this module to find the worker class.
"""

import functools
import os
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import redis
from rq import Queue, get_current_job
from rq.exceptions import ShutDownImminentException, StopRequested
from rq.job import Job, JobStatus
from rq.timeouts import JobTimeoutException
from rq.worker import HerokuWorker, WorkerStatus

from app.observability.worker_process import WorkerProcesses
from app.queues.adapters import worker_settings
from app.queues.consumer import TimeLimitExceeded, WorkerProcessLost, observed_message
from app.queues.rq.names import DESTINATION, ENVELOPE
from app.queues.spans import tracer
from app.queues.task_states import TaskCancelled, task_states
from app.settings import Settings
from app.task_registry import TaskRegistry, task_registry

_REQUEUED = "requeued_at_shutdown"  # the job's meta key: its next run is a redelivery
# How long a job must sit in the intermediate list, unstarted, to be stranded: a live worker moves
# it there and starts it within milliseconds (a fork, then one transaction); ten seconds leave a
# starved machine room. A worker looks at a heartbeat, and gives back at a later one.
STRANDED_AFTER_SECONDS = 10.0
# How long a job given back is not given back again: longer than a worker keeps what it noted
# (STRANDED_AFTER_SECONDS, then the next heartbeat, at most 10 s later), with room for a busy machine.
GIVEN_BACK_MARK_SECONDS = 120


class _Worker:
    """What the pool workers of one process share, built when RQ first makes a worker."""

    def __init__(self) -> None:
        self.settings: Settings = worker_settings()
        self.tasks: TaskRegistry = task_registry(self.settings)
        self.processes = WorkerProcesses(self.settings, instrument=lambda _provider: None)
        self.states = task_states(self.settings)
        # The store on the broker: a work horse reaches it through RQ's connection, already open.
        self.states_on_broker = self.settings.task_state_redis == str(self.settings.broker_url)


@functools.cache
def _worker() -> _Worker:
    return _Worker()


@functools.cache
def observed(name: str) -> Callable[..., None]:
    """The function RQ runs for task ``name``, in the work horse."""
    worker = _worker()
    task = worker.tasks[name]
    func, policy = task.run, task.retry

    def run(*args: Any, **kwargs: Any) -> None:
        telemetry = worker.processes.telemetry
        job = get_current_job()
        assert job is not None
        attempt = _attempt(job)
        try:
            with observed_message(
                telemetry,
                DESTINATION,
                name,
                job.id,
                job.meta.get(ENVELOPE),
                arguments=(args, kwargs),
                # Requeued at a shutdown; otherwise the state store says (a run that never ended).
                redelivered=True if job.meta.get(_REQUEUED) else None,
                requeued=(ShutDownImminentException,),
                states=worker.states.on(job.connection) if worker.states and worker.states_on_broker else worker.states,
                attempt=attempt,
                # Once RQ has no retry left for it (the web side set them), no policy retries it.
                retry=policy if job.retries_left else None,
            ):
                try:
                    func(*args, **kwargs)
                except JobTimeoutException as exc:
                    raise TimeLimitExceeded(str(exc)) from exc
        except TaskCancelled:
            return
        except Exception as exc:
            if policy is None or not policy.retries(attempt, exc):
                job.retries_left = 0  # RQ retries any exception: only the policy's are retried
            raise

    run.__name__ = run.__qualname__ = name
    return run


def _task_name(job: Job) -> str:
    return (job.func_name or "unknown").rsplit(".", 1)[-1]  # app.queues.rq.worker.<name>


def _attempt(job: Job) -> int:
    """1-based: RQ counts down the retries left from one wait per retry (app/queues/rq/producer.py)."""
    if not job.retry_intervals or job.retries_left is None:
        return 1
    return len(job.retry_intervals) - job.retries_left + 1


class ObservedWorker(HerokuWorker):
    """RQ's worker (HerokuWorker: a warm shutdown interrupts the job after a delay) with the
    worker-process hooks: telemetry when it starts, the horse's spans and Sentry events flushed
    before it exits, its files folded after, a killed horse's job counted as a failure."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = _worker().settings
        # Heartbeats (which touch WORKER_ALIVE_FILE, the liveness probe's) at least every 5 s idle
        # (RQ waits for a job worker_ttl - 15 s) and every 10 s while a job runs. A wait for a job
        # is so kept inside the stop's grace (WORKER_STOP_GRACE_SECONDS): see request_stop.
        # No job descriptions in its log lines: they hold the task's arguments.
        options = {"worker_ttl": 20, "job_monitoring_interval": 10, "log_job_description": False}
        super().__init__(*args, **{**kwargs, **options})
        self.imminent_shutdown_delay = max(1, round(settings.worker_shutdown_seconds))
        self._time_limit = max(1, round(settings.task_time_limit_seconds))
        self._horse = 0
        self._waiting_for_job = False
        self._disconnected = False
        self._pool_worker_pid = os.getpid()
        self._stranded: tuple[float, dict[str, set[str]]] | None = None

    def work(self, *args: Any, **kwargs: Any) -> bool:
        processes = _worker().processes
        processes.before_fork()
        processes.in_child()
        tracer(processes.telemetry.tracer_provider)  # made here once, not in each work horse
        processes.telemetry.logger.info("consumer ready")
        try:
            return bool(super().work(*args, **kwargs))
        finally:
            processes.at_child_exit()

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)
        self._look_for_stranded()

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        """RQ's handler of the stop signal raises StopRequested when no job runs, wherever the
        worker is. An ``except Exception`` there (a logging handler's, the telemetry guard's)
        swallowed it, with the line being logged, and the worker went on taking jobs until it was
        killed. Here it is raised only into a wait for a job; otherwise the stop is kept, and
        raised at the next heartbeat, which comes at least every 5 s."""
        self._stop_requested = True
        try:
            super().request_stop(signum, frame)  # type: ignore[no-untyped-call]
        except StopRequested:
            if self._waiting_for_job and _in_a_wait(frame):
                raise

    def dequeue_job_and_maintain_ttl(self, *args: Any, **kwargs: Any) -> tuple[Job, Queue] | None:
        self._waiting_for_job = True
        try:
            return super().dequeue_job_and_maintain_ttl(*args, **kwargs)
        finally:
            self._waiting_for_job = False

    def heartbeat(self, *args: Any, **kwargs: Any) -> None:
        in_pool_worker = os.getpid() == self._pool_worker_pid  # a work horse heartbeats too
        if in_pool_worker and self._stop_requested and self.get_state() != WorkerStatus.BUSY:
            raise StopRequested  # between jobs, or waiting for one: RQ's loops end on it
        # RQ's dequeue loop heartbeats first, and retries it after a lost connection.
        try:
            super().heartbeat(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError):
            self._disconnected = True
            raise
        _worker().settings.worker_alive_file.touch()
        if not in_pool_worker:
            return  # the rest is its parent's
        self._keep_the_scheduler()
        if self._disconnected:
            self._disconnected = False
            self._look_for_stranded()
        elif self._stranded is None:
            self._look_for_stranded()
        elif time.monotonic() - self._stranded[0] >= STRANDED_AFTER_SECONDS:
            self._give_back_stranded(self._stranded[1])
            self._stranded = None

    def _look_for_stranded(self) -> None:
        """What the intermediate lists hold now: given back at a heartbeat STRANDED_AFTER_SECONDS
        later if it is still there (no wait here: a stop must not wait for it)."""
        seen = {queue.name: set(queue.intermediate_queue.get_job_ids()) for queue in self.queues}
        self._stranded = (time.monotonic(), seen) if any(seen.values()) else None

    def _keep_the_scheduler(self) -> None:
        """RQ's scheduler (which moves due retries to the queue) dies with a broker crash, and RQ
        starts another only at its 10-minute maintenance. Here a worker takes it over at its next
        heartbeat once the dead one's lock has expired (61 s), as RQ's maintenance would. (A shorter
        maintenance would also run RQ's sweep of the intermediate list, which fails as stuck a live
        job it happens to see twice a minute apart.)"""
        scheduler = self.scheduler
        if self._stop_requested:
            return  # a scheduler started now would outlive the stop (RQ stopped this one already)
        if scheduler is not None and (scheduler._process is None or not scheduler._process.is_alive()):
            scheduler.acquire_locks(auto_start=True)  # type: ignore[no-untyped-call]

    def _give_back_stranded(self, seen: dict[str, set[str]]) -> None:
        for queue in self.queues:
            given_back = give_back_stranded(queue, seen.get(queue.name, set()))
            if given_back:
                _worker().processes.telemetry.logger.warning(
                    "jobs stranded in the intermediate list given back to the queue",
                    extra={"queue": queue.name, "jobs": given_back},
                )

    def execute_job(self, job: Job, queue: Queue) -> None:
        job.timeout = self._time_limit  # the worker's limit, whatever the job was sent with
        self._horse = 0  # until a fork succeeds: RQ may fail before it (a Redis call), or in it
        try:
            super().execute_job(job, queue)
        finally:
            _worker().processes.child_reaped(self._horse)

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        _worker().processes.before_job_fork(_task_name(job))
        super().fork_work_horse(job, queue)
        self._horse = self.horse_pid
        if self._stop_requested:
            # The stop came as RQ took the job, before this horse: it gets the warm shutdown's
            # deadline too, not a run past the stop's (which would kill it unrecorded).
            self.handle_warm_shutdown_request()  # type: ignore[no-untyped-call]

    def perform_job(self, job: Job, queue: Queue, execution: Any) -> bool:  # in the horse
        processes = _worker().processes
        processes.in_job_process()
        try:
            return bool(super().perform_job(job, queue, execution))
        finally:
            processes.at_job_exit()

    def handle_job_failure(self, job: Job, queue: Queue, *args: Any, **kwargs: Any) -> None:
        if ShutDownImminentException.__name__ not in str(kwargs.get("exc_string", "")):
            super().handle_job_failure(job, queue, *args, **kwargs)
            return
        # Interrupted by the shutdown, not failed: back on the queue, first, through RQ's registry,
        # with the retries it had (RQ would spend one).
        retries_left, job.retries_left = job.retries_left, 0
        super().handle_job_failure(job, queue, *args, **kwargs)
        job.retries_left = retries_left
        job.meta[_REQUEUED] = True
        job.save()
        queue.failed_job_registry.requeue(job.id, at_front=True)

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        """RQ logs each failure with its traceback and the job's arguments, then runs the exception
        handlers (none here): ``observed_task`` has reported it already, in its log line (without
        arguments) and its Sentry event. The job still goes to RQ's failed registry."""

    def handle_work_horse_killed(self, job: Job, retpid: int, ret_val: int, rusage: Any) -> None:
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)  # type: ignore[no-untyped-call]
        attempt = _attempt(job)
        job.retries_left = 0  # a lost process is no failure the policy retries (RQ would)
        telemetry = _worker().processes.telemetry
        name = _task_name(job)
        started = job.started_at.timestamp() if job.started_at else time.time()
        try:
            with observed_message(
                telemetry,
                DESTINATION,
                name,
                job.id,
                job.meta.get(ENVELOPE),
                arguments=(tuple(job.args), job.kwargs),
                started_at=started,
                ran_before=max(0.0, time.time() - started),
                states=_worker().states,
                attempt=attempt,
            ):
                raise WorkerProcessLost(f"the work horse exited with status {ret_val}")
        except WorkerProcessLost:
            pass  # counted, reported and logged: RQ moves the job to its failed registry


_DEQUEUE_LOOP = HerokuWorker.dequeue_job_and_maintain_ttl.__code__


def _in_a_wait(frame: FrameType | None) -> bool:
    """Whether a signal came as the worker waited for a job: in redis-py's call (its blocking read),
    which lets an exception through, closing the connection; or in RQ's sleep before it connects
    again. Nothing there swallows what the signal raises."""
    return frame is not None and (
        frame.f_globals.get("__name__", "").startswith("redis.") or frame.f_code is _DEQUEUE_LOOP
    )


def give_back_stranded(queue: Queue, seen: set[str]) -> int:
    """Moves back to the front of ``queue`` the jobs of ``seen`` (its intermediate list, at least
    STRANDED_AFTER_SECONDS ago) still there without having started (a worker took them as the
    broker died or as it was stopped, before or after recording their execution), and drops from
    it the ids of jobs that already ran (a duplicate id). Returns how many went back."""
    intermediate = queue.intermediate_queue
    give_back = queue.connection.register_script(_GIVE_BACK)
    registry = queue.started_job_registry
    given_back = 0
    for job_id in seen & set(intermediate.get_job_ids()):
        job = queue.fetch_job(job_id)
        unstarted = job is not None and job.get_status() == JobStatus.QUEUED
        if not unstarted and job_id in registry:
            continue  # running, or its horse died: RQ's registry cleanup fails or retries it
        keys = [intermediate.key, queue.key, registry.key, f"{intermediate.key}:given-back:{job_id}"]
        given_back += int(give_back(keys=keys, args=[job_id, int(unstarted), GIVEN_BACK_MARK_SECONDS]))
    return given_back


# KEYS: the intermediate list, the queue, the started-job registry, the job's given-back mark. ARGV:
# the job id, 1 to give it back, the mark's lifetime. One script, so of two workers that noted the
# same job only one gives it back; and a job given back and taken again by a live worker is in the
# list again for a moment, under its mark: no worker that noted it earlier gives it back twice.
# The registry's entries of the job (job:execution) go: its next run records its own.
_GIVE_BACK = """
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 or ARGV[2] ~= '1' then return 0 end
local prefix = ARGV[1] .. ':'
for _, member in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  if string.sub(member, 1, #prefix) == prefix then redis.call('ZREM', KEYS[3], member) end
end
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('SET', KEYS[4], '1', 'EX', ARGV[3])
return 1
"""
