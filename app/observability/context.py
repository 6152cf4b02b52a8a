"""What the request middleware hands to the task wrapper: the app's telemetry and the request."""

import logging
from contextvars import ContextVar
from dataclasses import dataclass

from anyio import CapacityLimiter
from opentelemetry.trace import Tracer

from app.observability.backlog import Backlog
from app.observability.metrics import Metrics


@dataclass(frozen=True, slots=True)
class WebTelemetry:
    """One per app, so several apps in one process never share a tracer or metrics."""

    metrics: Metrics
    tracer: Tracer
    logger: logging.Logger
    task_limiter: CapacityLimiter
    backlog: Backlog
    include_pii: bool = False  # task arguments in spans: off, they hold emails and messages
    access_log: bool = False  # a line per request (ACCESS_LOG)


@dataclass(slots=True)
class RequestRecord:
    telemetry: WebTelemetry
    route: str
    response_sent: float | None = None  # perf_counter() at the last response byte


current_request: ContextVar[RequestRecord | None] = ContextVar("current_request", default=None)
