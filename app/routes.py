"""Every endpoint: the tutorial's (the README's "Endpoints" table), whose handlers only schedule
work for the wrapper to observe, and the operations' (the scrape and the probes)."""

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import EmailStr

from app.auth import bearer_user, metrics_reader
from app.observability.metrics import Metrics
from app.request_limits import REFUSALS, SINGLE_LINE, UNAUTHORIZED, SingleLine, plain_query
from app.scheduler import Schedule
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

    @router.post("/send-mail/")
    async def send_mail(
        email: Annotated[EmailStr, Query(max_length=254)], background_tasks: BackgroundTasks, schedule: Schedule
    ) -> dict[str, str]:
        # The heavy task: on Celery when CELERY_BROKER_URL is set, else in this worker.
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
