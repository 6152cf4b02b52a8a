"""What became of each queued task, for ``GET /tasks/{id}`` and ``DELETE /tasks/{id}``: one Redis
hash per task, kept TASK_STATE_TTL_SECONDS after its last change.

One store for every library, rather than each one's own (Celery's result backend, RQ's job
status), because a cancellation must hold against a start: Celery's revoke lives in the memory of
the workers running when it is sent, so a worker started later runs the task, and neither library
refuses a start that races a cancel. Here both are one Lua script each, atomic in Redis: a task is
either cancelled while queued, and never runs, or started, and the cancel answers 409.

States: queued, running, retrying (an attempt failed and another will come), succeeded, failed,
cancelled. A run cut short by a shutdown or a lost process is queued again, as its message is.
"""

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import redis

from app.observability.task_telemetry import Run, TaskTelemetry, guarded
from app.queues.redis_client import redis_client
from app.settings import Settings

# The state that each way an attempt ends leaves (task_telemetry.Run.outcome).
_AFTER = {"success": "succeeded", "failure": "failed", "retry": "retrying", "requeued": "queued", "cancelled": "queued"}

# KEYS[1]: the task's hash. ARGV: attempt, now, ttl, task, route. Returns the state it was in.
_START = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'cancelled' then return state end
redis.call('HSET', KEYS[1], 'state', 'running', 'attempts', ARGV[1], 'started_at', ARGV[2],
           'task', ARGV[4], 'route', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return state or 'unknown'
"""
# KEYS[1]: the task's hash. ARGV: ttl, a field to delete ('' for none), then fields and values.
# A script rather than a MULTI pipeline: one command and one reply, where MULTI/EXEC takes four.
_WRITE = """
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
if ARGV[2] ~= '' then redis.call('HDEL', KEYS[1], ARGV[2]) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
"""
# KEYS[1]: the task's hash. ARGV: now, ttl. Returns the state it was in, the task and the route;
# false if there is none.
_CANCEL = """
local found = redis.call('HMGET', KEYS[1], 'state', 'task', 'route')
if not found[1] then return false end
if found[1] == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_at', ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return found
"""


@dataclass(frozen=True, slots=True)
class TaskState:
    id: str
    task: str
    route: str
    state: str
    attempts: int
    enqueued_at: float | None
    started_at: float | None
    finished_at: float | None
    exception: str | None


class TaskStates:
    errors: tuple[type[BaseException], ...] = (redis.RedisError,)

    def __init__(self, client: redis.Redis, *, ttl_seconds: int) -> None:
        self._redis = client  # connects at its first call, in the process that makes it (after any fork)
        self._ttl = ttl_seconds
        self._start = client.register_script(_START)
        self._write_fields = client.register_script(_WRITE)
        self._cancel = client.register_script(_CANCEL)

    def on(self, connection: redis.Redis) -> "TaskStates":
        """The same store through ``connection``, to the same Redis: a library's own, already open
        in a process forked for one task (RQ's work horse), where the store's would connect anew
        (four round trips). Only ``start`` and ``ended`` run there; ``start`` decodes its reply."""
        return TaskStates(connection, ttl_seconds=self._ttl)

    @staticmethod
    def _key(task_id: str) -> str:
        return f"background-tasks:state:{task_id}"

    def queued(self, task_id: str, task: str, route: str, enqueued_at: float) -> None:
        """Before the publish: a worker may start the task before the publish returns."""
        self._write(
            task_id, {"task": task, "route": route, "state": "queued", "attempts": 0, "enqueued_at": enqueued_at}
        )

    def forget(self, task_id: str) -> None:
        """The publish failed: the client got a 503 and no task id."""
        self._redis.delete(self._key(task_id))

    def start(self, task_id: str, task: str, route: str, attempt: int) -> str:
        """The state it was in, and ``running`` now unless that was ``cancelled``: it must not run.
        ``running`` was a run that never ended: its process died. A task with no state (expired,
        or enqueued before tracking was on) is ``unknown``, runs, and has one from now on."""
        state = self._start(keys=[self._key(task_id)], args=[attempt, time.time(), self._ttl, task, route])
        return state.decode() if isinstance(state, bytes) else str(state)

    def ended(self, task_id: str, outcome: str, exception: str) -> None:
        state = _AFTER[outcome]
        fields: dict[str, str | float] = {"state": state}
        if state in ("succeeded", "failed"):
            fields["finished_at"] = time.time()
        if exception:
            fields["exception"] = exception
        # A success after a retry: the retried attempt's exception is no longer the task's.
        self._write(task_id, fields, forget="" if exception else "exception")

    def _write(self, task_id: str, fields: Mapping[str, str | float], forget: str = "") -> None:
        pairs = [item for field in fields.items() for item in field]
        self._write_fields(keys=[self._key(task_id)], args=[self._ttl, forget, *pairs])

    def cancel(self, task_id: str) -> tuple[str, str, str] | None:
        """Cancels a queued task. Returns the state it was in (``queued``: now cancelled), its task
        and its route, or None for an unknown or expired id."""
        found = self._cancel(keys=[self._key(task_id)], args=[time.time(), self._ttl])
        if not found:
            return None
        state, task, route = (str(value) if value else "" for value in found)
        return state, task or "unknown", route or "none"

    def read(self, task_id: str) -> TaskState | None:
        fields = cast("dict[str, str]", self._redis.hgetall(self._key(task_id)))  # decode_responses
        if not fields:
            return None
        return TaskState(
            id=task_id,
            task=fields.get("task", "unknown"),
            route=fields.get("route", "none"),
            state=fields["state"],
            attempts=int(fields.get("attempts", 0)),
            enqueued_at=_time(fields.get("enqueued_at")),
            started_at=_time(fields.get("started_at")),
            finished_at=_time(fields.get("finished_at")),
            exception=fields.get("exception"),
        )


def _time(value: str | None) -> float | None:
    return float(value) if value else None


def task_states(settings: Settings) -> TaskStates | None:
    """The store, or None where tracking is off: in-process tasks, or RabbitMQ without TASK_STATE_URL."""
    url = settings.task_state_redis
    if url is None:
        return None
    timeout = settings.enqueue_timeout_seconds
    client = redis_client(url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True)
    return TaskStates(client, ttl_seconds=settings.task_state_ttl_seconds)


class TaskCancelled(Exception):
    """Raised instead of running a task cancelled while queued: its runner acknowledges the message
    and runs nothing. Already counted as dropped by the web worker that cancelled it."""


def claim(
    telemetry: TaskTelemetry, states: TaskStates | None, task_id: str, *, task: str, route: str, attempt: int
) -> bool:
    """Marks the task running, or raises TaskCancelled; True if a run of it had started before (a
    redelivery): one that never ended (its process or its broker died), or one that ended and whose
    end the library lost (a broker crash between the task's end and its acknowledgement). A store
    that fails does not stop the task: the failure is counted in
    ``background_task_telemetry_errors_total{part="state"}``, and no redelivery is seen."""
    if states is None:
        return False
    previous = "unknown"

    def start() -> None:
        nonlocal previous
        previous = states.start(task_id, task, route, attempt)

    guarded(telemetry, "state", start)
    if previous == "cancelled":
        telemetry.logger.debug("background task cancelled: not run", extra={"task": task, "route": route})
        raise TaskCancelled(task_id)
    return previous in ("running", "succeeded", "failed")


def record_end(telemetry: TaskTelemetry, states: TaskStates | None, task_id: str, run: Run) -> None:
    if states is not None:
        guarded(telemetry, "state", lambda: states.ended(task_id, run.outcome, run.exception))
