"""Sentry: started per worker, and fed only the exceptions we report ourselves.

No integration is enabled: the web-framework ones would attach each request's URL (and so
its query string, with emails and messages) to every event, and the logging one would send
our own error log lines as duplicate events.
"""

import os
from typing import Any

import sentry_sdk
from prometheus_client import Counter
from sentry_sdk.envelope import Item
from sentry_sdk.transport import HttpTransport
from sentry_sdk.utils import event_from_exception

from app.observability.metrics import Metrics
from app.observability.tracing import current_ids
from app.settings import Settings


def _counting_transport(lost: Counter) -> type[HttpTransport]:
    """The SDK's HTTP transport, counting each error event it gives up on (network errors, a
    full queue while Sentry is slow, rate limits) instead of only reporting it to Sentry."""

    class CountingTransport(HttpTransport):
        def record_lost_event(
            self, reason: str, data_category: Any = None, item: Item | None = None, *, quantity: int = 1
        ) -> None:
            if (item.data_category if item is not None else data_category) == "error":
                lost.labels(reason).inc(1 if item is not None else quantity)
            super().record_lost_event(reason, data_category, item, quantity=quantity)

    return CountingTransport


def start_sentry(settings: Settings, metrics: Metrics) -> None:
    if settings.sentry_dsn is None:
        return
    sentry_sdk.init(
        transport=_counting_transport(metrics.sentry_events_lost),
        dsn=str(settings.sentry_dsn),
        environment=settings.sentry_environment,
        release=settings.sentry_release,
        default_integrations=False,
        auto_enabling_integrations=False,
        # Off by default: request data and locals hold emails, messages and tokens.
        send_default_pii=settings.telemetry_include_pii,
        include_local_variables=settings.telemetry_include_pii,
        max_breadcrumbs=0,
    )


_reported_by = 0  # the pid of the last process that reported an exception


def stop_sentry() -> None:
    client = sentry_sdk.get_client()
    if client.is_active():
        client.close(timeout=2.0)


def stop_sentry_if_reported() -> None:
    """In a process forked for one task, as it exits: only one that reported an exception has an
    event to send (closing the client otherwise costs a few hundred microseconds per task)."""
    if _reported_by == os.getpid():
        stop_sentry()


def report_exception(
    exc: BaseException, *, mechanism: str, tags: dict[str, str], fingerprint: list[str] | None = None
) -> None:
    """Send one unhandled-exception event in a scope of its own, with the OpenTelemetry ids.

    ``fingerprint`` replaces Sentry's grouping by stack trace: one issue per fingerprint."""
    client = sentry_sdk.get_client()
    if not client.is_active():
        return
    with sentry_sdk.isolation_scope() as scope:
        for key, value in tags.items():
            scope.set_tag(key, value)
        if fingerprint is not None:
            scope.fingerprint = fingerprint
        event, hint = event_from_exception(
            exc, client_options=client.options, mechanism={"type": mechanism, "handled": False}
        )
        ids = current_ids()
        if ids is not None:
            event.setdefault("contexts", {})["trace"] = {"trace_id": ids[0], "span_id": ids[1]}
        scope.capture_event(event, hint=hint)
    global _reported_by  # noqa: PLW0603 - one process-wide fact
    _reported_by = os.getpid()
