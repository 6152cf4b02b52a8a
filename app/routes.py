"""Every endpoint: the tutorial's (the README's "The endpoints" table), whose handlers only schedule
work for the wrapper to observe, a queued task's state and cancellation, and the operations'
(the scrape and the probes)."""

import logging
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal, cast

from fastapi import APIRouter, BackgroundTasks, Depends, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse
from opentelemetry import trace
from pydantic import BaseModel, EmailStr

from app.auth import bearer_user, metrics_reader
from app.observability.books import Books
from app.observability.metrics import Metrics
from app.queues.task_states import TaskState, TaskStates
from app.request_limits import DETAIL, REFUSALS, SINGLE_LINE, UNAUTHORIZED, SingleLine, plain_query
from app.scheduler import TASK_ID_HEADER, Schedule
from app.settings import Settings
from app.tasks import LogFile, log_message, write_log


def tutorial_router(settings: Settings) -> APIRouter:
    router = APIRouter(dependencies=[Depends(plain_query)], responses=REFUSALS)
    log = LogFile(settings.log_file)
    Message = Annotated[
        str, Query(max_length=settings.max_message_length, json_schema_extra={"pattern": SINGLE_LINE}), SingleLine
    ]
    User = Annotated[str, Depends(bearer_user(settings))]

    @router.post("/log/")
    async def log_endpoint(msg: Message, background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(write_log, log, msg)
        return {"status": "Message logged in background"}

    @router.post("/send-mail/", responses={200: {"headers": QUEUED_TASK_ID}})
    async def send_mail(
        email: Annotated[EmailStr, Query(max_length=254)], background_tasks: BackgroundTasks, schedule: Schedule
    ) -> dict[str, str]:
        # The heavy task: on the TASK_QUEUE library when BROKER_URL is set, else in this worker.
        await schedule(background_tasks, "send_email", email, "Welcome!", "Thanks for joining 🎉")
        return {"status": f"Email to {email} is being sent in background"}

    @router.post("/notify/", responses=UNAUTHORIZED)
    async def notify(username: User, background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(write_log, log, f"Notification sent to {username}")
        return {"status": "Notification scheduled"}

    @router.post("/send-message/")
    async def send_message(message: Message, background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(log_message, log, message)
        return {"message": "Message received. It will be logged soon."}

    return router


QUEUED_TASK_ID = {
    TASK_ID_HEADER: {"description": "The queued task's id, for /tasks/{task_id}; absent in process", "schema": {}}
}
TaskStateName = Literal["queued", "running", "retrying", "succeeded", "failed", "cancelled"]
STATE_OFF = "Task state tracking is off: tasks run in process (no BROKER_URL), or TASK_STATE_URL is not set"
STATE_UNAVAILABLE = "The task state store is unavailable; retry later."


class TaskStatus(BaseModel):
    id: uuid.UUID
    task: str
    state: TaskStateName
    attempts: int
    enqueued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    exception: str | None  # a failure's exception class, never its message

    @classmethod
    def of(cls, state: TaskState) -> "TaskStatus":
        return cls(
            id=uuid.UUID(state.id),
            task=state.task,
            state=cast("TaskStateName", state.state),  # one of the store's
            attempts=state.attempts,
            enqueued_at=_at(state.enqueued_at),
            started_at=_at(state.started_at),
            finished_at=_at(state.finished_at),
            exception=state.exception,
        )


def _at(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC)


def task_state_router(settings: Settings, states: TaskStates | None, books: Books) -> APIRouter:
    """GET and DELETE /tasks/{task_id}: what became of a queued task, and its cancellation before it
    starts (app/queues/task_states.py). With the same bearer token as /notify/."""
    responses: dict[int | str, dict[str, object]] = {
        **UNAUTHORIZED,
        404: {"description": "No task with this id: unknown, or its state expired", **DETAIL},
        501: {"description": STATE_OFF, **DETAIL},
        503: {"description": STATE_UNAVAILABLE, "headers": {"Retry-After": {"schema": {"type": "integer"}}}, **DETAIL},
    }
    router = APIRouter(
        prefix="/tasks",
        tags=["tasks"],
        dependencies=[Depends(bearer_user(settings)), Depends(plain_query)],
        responses={**REFUSALS, **responses},
    )
    retry_after = {"Retry-After": str(settings.retry_after_seconds)}

    def store() -> TaskStates:
        if states is None:
            raise HTTPException(status.HTTP_501_NOT_IMPLEMENTED, STATE_OFF)
        return states

    def unknown(task_id: uuid.UUID) -> HTTPException:
        return HTTPException(status.HTTP_404_NOT_FOUND, f"No task {task_id}: unknown, or its state expired")

    @router.get("/{task_id}")
    def task_status(task_id: uuid.UUID) -> TaskStatus:
        tracked = store()
        try:
            state = tracked.read(str(task_id))
        except tracked.errors:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, STATE_UNAVAILABLE, headers=retry_after) from None
        if state is None:
            raise unknown(task_id)
        return TaskStatus.of(state)

    @router.delete(
        "/{task_id}",
        status_code=status.HTTP_202_ACCEPTED,
        responses={409: {"description": "The task has started, finished or was cancelled already", **DETAIL}},
    )
    def cancel_task(task_id: uuid.UUID) -> TaskStatus:
        tracked = store()
        try:
            cancelled = tracked.cancel(str(task_id))
        except tracked.errors:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, STATE_UNAVAILABLE, headers=retry_after) from None
        if cancelled is None:
            raise unknown(task_id)
        previous, task, route = cancelled
        if previous == "cancelled":
            raise HTTPException(status.HTTP_409_CONFLICT, "The task was cancelled already")
        if previous != "queued":
            raise HTTPException(status.HTTP_409_CONFLICT, f"The task has started: it is {previous}")
        # Counted from the script's own answer: a store that fails after it loses no count. Its
        # message stays in the broker, and the worker that takes it acknowledges it unrun.
        books.dropped(task, route, "cancelled", log_level=logging.DEBUG)
        trace.get_current_span().add_event(
            "background_task.cancelled", {"background_task.id": str(task_id), "background_task.name": task}
        )
        return task_status(task_id)

    return router


def operations_router(settings: Settings, metrics: Metrics) -> APIRouter:
    """The scrape and the probes: out of the schema, and untraced (instrumentation.UNTRACED_URLS)."""
    router = APIRouter(include_in_schema=False)

    @router.get("/metrics", dependencies=[Depends(metrics_reader(settings))])
    def prometheus_metrics() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        ready = bool(request.app.state.ready)
        return JSONResponse({"status": "ready" if ready else "starting"}, status_code=200 if ready else 503)

    return router
