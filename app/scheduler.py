"""One call schedules a heavy task; settings decide where it runs.

``await schedule(background_tasks, "send_email", email, …)`` hands the task by its registry name
to the backend that settings chose (app/queues/): in the web worker after the response, or on a
broker before it, so that a 200 means the broker holds the task. A broker that is down or slow
gets the client a 503 with Retry-After, counted in ``background_tasks_enqueue_failures_total``,
never a 500.
"""

from typing import Annotated, Any, Protocol

from fastapi import BackgroundTasks, Depends, HTTPException, Request, Response, status

from app.observability.books import Books
from app.observability.context import current_request
from app.queues.backend import Backend, QueueUnavailable
from app.queues.envelope import NO_ROUTE

QUEUE_UNAVAILABLE = "The task queue is unavailable; retry later."
TASK_ID_HEADER = "X-Task-Id"


class Scheduler:
    def __init__(self, backend: Backend, books: Books, *, retry_after_seconds: int) -> None:
        self.backend = backend
        self._books = books
        self._retry_after = str(retry_after_seconds)

    async def __call__(self, background_tasks: BackgroundTasks, name: str, *args: Any) -> str | None:
        record = current_request.get()
        route = record.route if record is not None else NO_ROUTE
        try:
            return await self.backend.schedule(background_tasks, name, args, route)
        except QueueUnavailable as exc:
            self._books.not_enqueued(name, route, exc.error)
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, QUEUE_UNAVAILABLE, headers={"Retry-After": self._retry_after}
            ) from None


class ScheduleTask(Protocol):
    async def __call__(self, background_tasks: BackgroundTasks, name: str, *args: Any) -> str | None: ...


def _scheduler(request: Request, response: Response) -> ScheduleTask:
    """The app's scheduler, for one request: a queued task's id goes back in X-Task-Id (one
    header per task), for GET and DELETE /tasks/{id}. The response body stays the tutorial's."""
    scheduler: Scheduler = request.app.state.schedule

    async def schedule(background_tasks: BackgroundTasks, name: str, *args: Any) -> str | None:
        task_id = await scheduler(background_tasks, name, *args)
        if task_id is not None:
            response.headers.append(TASK_ID_HEADER, task_id)
        return task_id

    return schedule


Schedule = Annotated[ScheduleTask, Depends(_scheduler)]
