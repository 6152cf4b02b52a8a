"""create_app(settings) wires the service; nothing starts until the lifespan runs in a worker."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import CapacityLimiter
from fastapi import FastAPI
from opentelemetry.trace import NoOpTracer

from app.observability.backlog import Backlog
from app.observability.books import Books
from app.observability.context import WebTelemetry
from app.observability.errors import start_sentry, stop_sentry
from app.observability.instrumentation import instrument_app
from app.observability.logging import LOGGER_NAME
from app.observability.metrics import Metrics
from app.observability.middleware import RequestTelemetryMiddleware
from app.observability.task_wrapper import install_task_wrapper
from app.observability.tracing import make_tracer_provider, start_export
from app.queues.adapters import adapter
from app.queues.backend import Backend
from app.queues.broker import BrokerBackend
from app.queues.inprocess import InProcess
from app.queues.task_states import TaskStates, task_states
from app.routes import operations_router, task_state_router, tutorial_router
from app.scheduler import Scheduler
from app.settings import Settings
from app.task_registry import TaskRegistry, task_registry


def create_app(settings: Settings) -> FastAPI:
    logger = logging.getLogger(LOGGER_NAME)  # the server's hook configured logging (logging.py)
    tracer_provider = None if settings.otel_sdk_disabled else make_tracer_provider(settings)
    metrics = Metrics()
    backlog = Backlog(metrics, logger, settings.max_pending_tasks, settings.retry_after_seconds)
    telemetry = WebTelemetry(
        metrics=metrics,
        tracer=NoOpTracer() if tracer_provider is None else tracer_provider.get_tracer("app"),
        logger=logger,
        task_limiter=CapacityLimiter(settings.task_threads),
        backlog=backlog,
        include_pii=settings.telemetry_include_pii,
        access_log=settings.access_log,
    )
    states = task_states(settings)
    backend = backend_for(settings, task_registry(settings), backlog.books, states)
    schedule = Scheduler(backend, backlog.books, retry_after_seconds=settings.retry_after_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if tracer_provider is not None:
            start_export(tracer_provider, settings, metrics)
            backend.instrument(tracer_provider)  # a queue's PRODUCER span, and the trace in its message
        start_sentry(settings, metrics)
        if settings.api_token is None:
            logger.warning("API_TOKEN is not set: /notify/ answers 401 to every caller")
        metrics.worker_processes.set(1)
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            # The server has waited for (or given up on) every task: whatever is left is lost.
            backlog.draining = True
            backlog.drop_all()
            if tracer_provider is not None:
                tracer_provider.shutdown()  # flushes the spans still queued
            stop_sentry()

    # FastAPI's own telemetry is off: opentelemetry-instrumentation-fastapi makes the server spans.
    app = FastAPI(
        title="Observable background tasks",
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.ready = False
    app.state.backlog = backlog  # the worker marks it draining when a stop signal arrives
    app.state.telemetry = telemetry  # what the app's tasks emit through: metrics, tracer, logger
    app.state.schedule = schedule  # routes reach it through the Schedule dependency
    app.include_router(tutorial_router(settings))
    app.include_router(task_state_router(settings, states, backlog.books))
    app.include_router(operations_router(settings, metrics))

    app.add_middleware(RequestTelemetryMiddleware, telemetry=telemetry)
    if tracer_provider is not None:
        instrument_app(app, tracer_provider)
    install_task_wrapper()  # after the instrumentation, whatever it patched: one span per task
    return app


def create_app_from_env() -> FastAPI:
    """The factory gunicorn loads in each worker."""
    return create_app(Settings())


def backend_for(settings: Settings, tasks: TaskRegistry, books: Books, states: TaskStates | None) -> Backend:
    """Without a broker, tasks run in the web worker after the response; with one, on TASK_QUEUE's."""
    if settings.broker_url is None:
        return InProcess(tasks)
    producer = adapter(settings).producer(tasks)
    return BrokerBackend(producer, books, states, timeout=settings.enqueue_timeout_seconds)
