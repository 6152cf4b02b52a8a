"""The request clock: response time to the last body byte, lifetime to the last task's end.

The server span is opentelemetry-instrumentation-fastapi's (instrumentation.py): this middleware
runs inside it, reads the route template the instrumentation matched from the span, and matches
the route itself only when there is no recording server span (tracing off, a request not sampled,
or an excluded URL), so a request's route is matched once.
"""

import logging
from time import perf_counter

from fastapi.routing import RouteContext, iter_route_contexts
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability.context import RequestRecord, WebTelemetry, current_request
from app.observability.errors import report_exception
from app.observability.logging import ACCESS_LOGGER_NAME
from app.observability.tracing import traceparent

UNMATCHED = "unmatched"
_BACKLOG_FULL = b'{"detail":"Too many background tasks are pending; retry later."}'
_ACCESS = logging.getLogger(ACCESS_LOGGER_NAME)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


class RouteTemplates:
    """Names the template of the route that will serve a request, included routers too.

    Flattening the app's routes costs more than matching them, so the flat list is kept and
    read again only when a request finds no full match in it: a route added later is found on
    its first request. A context that adds no prefix matches exactly as its route does, and the
    route's own matches() is several times cheaper.
    """

    def __init__(self) -> None:
        self._matchers: list[tuple[BaseRoute | RouteContext, str]] = []

    def __call__(self, routes: list[BaseRoute], scope: Scope) -> str:
        found, full = self._match(scope)
        if not full:
            self._matchers = [
                (
                    context.original_route
                    if context.path == getattr(context.original_route, "path", None)
                    else context,
                    context.path,
                )
                for context in iter_route_contexts(routes)
                if context.path
            ]
            found, full = self._match(scope)
        return found or UNMATCHED

    def _match(self, scope: Scope) -> tuple[str | None, bool]:
        partial = None
        for route, path in self._matchers:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return path, True
            if match is Match.PARTIAL and partial is None:
                partial = path  # the path matched but the method did not: a 405 on this route
        return partial, False


class RequestTelemetryMiddleware:
    def __init__(self, app: ASGIApp, telemetry: WebTelemetry) -> None:
        self.app = app
        self.telemetry = telemetry
        self.route_template = RouteTemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        metrics = self.telemetry.metrics
        span = trace.get_current_span()
        # The label is fixed before the handler runs so the active-requests gauge can use it.
        route = self._route(scope, span)
        method = scope["method"] if scope["method"] in _METHODS else "_OTHER"
        record = RequestRecord(telemetry=self.telemetry, route=route)
        token = current_request.set(record)
        active = metrics.active_requests.labels(method, route)
        active.inc()
        status = 500  # what ServerErrorMiddleware sends if nothing was sent before an error

        async def send_and_time(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                header = traceparent(span)
                if header is not None:
                    message = {**message, "headers": [*message.get("headers", ()), (b"traceparent", header)]}
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered(perf_counter())

        def answered(now: float) -> None:
            if record.response_sent is None:
                record.response_sent = now
                active.dec()
                metrics.request_duration.labels(method, route, str(status)).observe(now - started)
                if self.telemetry.access_log:  # the route template, never the path or its query string
                    _ACCESS.info(
                        "%s %s %d",
                        method,
                        route,
                        status,
                        extra={"method": method, "route": route, "status": status, "duration_seconds": now - started},
                    )

        # The server span stays current until the tasks end, so their spans join the request's trace.
        try:
            if self.telemetry.backlog.rejects(route):
                metrics.tasks_rejected.labels(route).inc()
                await self._reject(send_and_time)
            else:
                await self.app(scope, receive, send_and_time)
        except Exception as exc:
            report_exception(exc, mechanism="asgi", tags={"route": route})
            raise
        finally:
            now = perf_counter()
            answered(now)
            metrics.request_lifetime.labels(route).observe(now - started)
            current_request.reset(token)

    def _route(self, scope: Scope, span: trace.Span) -> str:
        if isinstance(span, ReadableSpan) and span.kind is SpanKind.SERVER and span.is_recording():
            attributes = span.attributes or {}
            return str(attributes.get("http.route", UNMATCHED))
        return self.route_template(scope["app"].routes, scope)

    async def _reject(self, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(_BACKLOG_FULL)).encode()),
                    (b"retry-after", self.telemetry.backlog.retry_after),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _BACKLOG_FULL})
