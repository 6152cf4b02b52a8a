"""A user's own route whose task raises: counted, traced, reported, contained."""

import json
import uuid

from harness import TOKEN, Stack, log_lines, trace_id_of, wait_for

SERVER, ERROR = 2, 2  # OTLP SpanKind.SERVER and StatusCode.ERROR


def _failure_is_fully_reported(stack: Stack, path: str, params: dict[str, str], task: str, exception: str) -> None:
    server = stack.server
    before = server.metrics()
    with server.client() as client:
        response = client.post(path, params=params)
    assert response.status_code == 200
    trace_id = trace_id_of(response)

    # The next task of the same response still ran, exactly once.
    next_line = f"{params['order_id']}"
    wait_for(lambda: sum(line.endswith(next_line) for line in server.log_file_lines()) == 1, what="the next task")

    # The request's lifetime is recorded last, once both of its tasks are done.
    change = server.wait_for_metrics(
        lambda m: m.get_value("http_request_lifetime_seconds_count", route=path) >= 1, "the request", since=before
    )
    assert change.get_value("http_request_lifetime_seconds_count", route=path) == 1
    assert change.get_value("background_task_failures_total", task=task, route=path, exception=exception) == 1
    assert change.get_value("background_task_failures_total") == 1
    assert change.get_value("background_task_duration_seconds_count", task=task, route=path, outcome="failure") == 1
    assert change.get_value("background_task_duration_seconds_count", task=task, outcome="success") == 0
    assert (
        change.get_value("background_task_duration_seconds_count", task="write_log", route=path, outcome="success") == 1
    )
    assert change.get_value("background_tasks_scheduled_total", route=path) == 2

    # One span per task, in the request's trace, under its server span; the failed one is ERROR.
    spans = wait_for(lambda: len(s := stack.otlp.trace(trace_id)) >= 3 and s, what="the spans")
    (server_span,) = [s for s in spans if s.kind == SERVER]
    (failed,) = [s for s in spans if s.name == f"BackgroundTask {task}"]
    (following,) = [s for s in spans if s.name == "BackgroundTask write_log"]
    assert len(spans) == 3
    assert failed.status_code == ERROR
    assert "exception" in failed.event_names
    assert failed.attributes["background_task.outcome"] == "failure"
    assert failed.parent_span_id == server_span.span_id
    assert following.status_code != ERROR
    assert following.parent_span_id == server_span.span_id

    # Sentry got exactly one event, in its own scope, tagged and carrying the trace id.
    events = wait_for(lambda: stack.sentry.events_tagged("background_task", task), what="the Sentry event")
    (event,) = [e for e in events if e["contexts"]["trace"]["trace_id"] == trace_id]
    assert event["tags"]["route"] == path
    (exc,) = event["exception"]["values"]
    assert exc["type"] == exception
    assert exc["mechanism"] == {"type": "background_task", "handled": False}
    assert event["environment"] == "test"
    assert "request" not in event

    # The structured log line names the trace and the failing span.
    (log_line,) = [line for line in server.app_logs() if line.get("trace_id") == trace_id and line.get("task") == task]
    assert log_line["level"] == "ERROR"
    assert log_line["outcome"] == "failure"
    assert log_line["span_id"] == failed.span_id
    assert exception in log_line["exc_info"]


def test_failing_sync_task_in_background_tasks(stack: Stack) -> None:
    params = {"email": "buyer@example.com", "order_id": f"order-{uuid.uuid4().hex}"}
    _failure_is_fully_reported(stack, "/orders/", params, "charge_card", "PaymentDeclinedError")


def test_failing_async_task_in_response_background(stack: Stack) -> None:
    params = {"order_id": f"order-{uuid.uuid4().hex}"}
    _failure_is_fully_reported(stack, "/reservations/", params, "reserve_stock", "WarehouseOfflineError")


def test_nothing_private_reaches_sentry_and_nothing_reaches_the_asgi_error_path(stack: Stack) -> None:
    secret_message = f"private message {uuid.uuid4().hex}"
    with stack.server.client() as client:
        client.post("/log/", params={"msg": secret_message})
        client.post("/notify/", headers={"Authorization": f"Bearer {TOKEN}"})
        response = client.post("/orders/", params={"email": "private.person@example.org", "order_id": "o-1"})
    trace_id = trace_id_of(response)
    wait_for(
        lambda: any(e["contexts"]["trace"]["trace_id"] == trace_id for e in stack.sentry.events),
        what="the Sentry event",
    )
    received = stack.sentry.everything()
    assert b'"background_task": "charge_card"' in received or b'"background_task":"charge_card"' in received
    for private in ("private.person@example.org", "buyer@example.com", secret_message, TOKEN):
        assert private.encode() not in received
    # The servers' own lines (uvicorn's tracebacks) are for the server's errors: no task may appear there.
    lines = log_lines(stack.server.stderr())
    server_output = [json.dumps(line) for line in lines if line["logger"] != "app"]
    assert not [line for line in server_output if "charge_card" in line or "reserve_stock" in line]
    metrics = stack.server.metrics()
    for route in ("/orders/", "/reservations/"):
        assert metrics.get_value("http_server_request_duration_seconds_count", route=route, status="500") == 0


def test_endpoint_exception_is_a_500_reported_to_sentry(stack: Stack) -> None:
    with stack.server.client() as client:
        response = client.post("/checkout/", params={"email": "checkout.person@example.org"})
    assert response.status_code == 500
    assert response.text == "Internal Server Error"
    (event,) = wait_for(lambda: stack.sentry.events_tagged("route", "/checkout/"), what="the Sentry event")
    assert event["tags"] == {"route": "/checkout/"}
    (server_span,) = wait_for(lambda: stack.otlp.trace(event["contexts"]["trace"]["trace_id"]), what="its trace")
    assert server_span.name == "POST /checkout/"
    assert server_span.status_code == ERROR
    assert server_span.attributes["http.response.status_code"] == 500
    assert "exception" in server_span.event_names
    assert event["exception"]["values"][0]["mechanism"] == {"type": "asgi", "handled": False}
    assert b"checkout.person@example.org" not in stack.sentry.everything()
    metrics = stack.server.metrics()
    assert metrics.get_value("http_server_request_duration_seconds_count", route="/checkout/", status="500") == 1
    assert metrics.get_value("http_server_active_requests", route="/checkout/") == 0
