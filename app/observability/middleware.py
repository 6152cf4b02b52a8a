"""The request clock and the server span: both stop at the last body byte; lifetime at the last task's end.

The server span is made here rather than by opentelemetry-instrumentation-fastapi, whose
middleware cost more CPU per request than any other part of the telemetry (bench/RESULTS.md)
and put the full URL, query string and so emails included, in its attributes. This one reuses
the route label and records what the dashboards and traces use: method, route, scheme and status.
"""

from collections.abc import Iterable
from time import perf_counter

from fastapi.routing import RouteContext, iter_route_contexts
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability.context import RequestRecord, Telemetry, current_request
from app.observability.errors import report_exception
from app.observability.tracing import traceparent

UNMATCHED = "unmatched"
# Probes and scrapes would bury real traces: no spans for them (they still count in metrics).
UNTRACED_ROUTES = frozenset({"/metrics", "/healthz", "/readyz"})
_BACKLOG_FULL = b'{"detail":"Too many background tasks are pending; retry later."}'
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


class _ScopeHeaders(Getter[Scope]):
    """Reads propagation headers (traceparent, tracestate, baggage) straight from the ASGI scope."""

    def get(self, carrier: Scope, key: str) -> list[str] | None:
        name = key.encode("latin-1")
        values = [value.decode("latin-1") for header, value in carrier["headers"] if header == name]
        return values or None

    def keys(self, carrier: Scope) -> Iterable[str]:  # type: ignore[override]
        return [header.decode("latin-1") for header, _ in carrier["headers"]]


_SCOPE_HEADERS = _ScopeHeaders()


class RequestTelemetryMiddleware:
    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry
        self.route_template = RouteTemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        metrics = self.telemetry.metrics
        # The label is fixed before the handler runs so the active-requests gauge can use it.
        route = self.route_template(scope["app"].routes, scope)
        method = scope["method"] if scope["method"] in _METHODS else "_OTHER"
        span = self._server_span(scope, method, route)
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
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                span.end()

        # The context stays attached until the tasks end, so their spans join the request's trace.
        with trace.use_span(span, record_exception=False, set_status_on_exception=False):
            try:
                if self.telemetry.backlog.rejects(route):
                    metrics.tasks_rejected.labels(route).inc()
                    await self._reject(send_and_time)
                else:
                    await self.app(scope, receive, send_and_time)
            except Exception as exc:
                span.record_exception(exc)
                report_exception(exc, mechanism="asgi", tags={"route": route})
                raise
            finally:
                now = perf_counter()
                answered(now)
                metrics.request_lifetime.labels(route).observe(now - started)
                current_request.reset(token)

    def _server_span(self, scope: Scope, method: str, route: str) -> trace.Span:
        if route in UNTRACED_ROUTES:
            return trace.INVALID_SPAN
        attributes = {"http.request.method": method, "url.scheme": scope.get("scheme", "http")}
        if route != UNMATCHED:
            attributes["http.route"] = route
        return self.telemetry.tracer.start_span(
            f"{method} {route}" if route != UNMATCHED else method,
            context=propagate.extract(scope, getter=_SCOPE_HEADERS),
            kind=SpanKind.SERVER,
            attributes=attributes,
        )

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
