"""Spans over OTLP: per request one server span and exactly one span per task, in one trace."""

import time
import uuid

import pytest

from harness import TOKEN, Stack, trace_id_of, wait_for

SERVER = 2


@pytest.mark.parametrize(
    ("path", "params", "headers", "task"),
    [
        ("/log/", {"msg": "span check"}, {}, "write_log"),
        ("/send-mail/", {"email": "spans@example.com"}, {}, "send_email"),
        ("/notify/", {}, {"Authorization": f"Bearer {TOKEN}"}, "write_log"),
        ("/send-message/", {"message": "span check"}, {}, "log_message"),
        ("/audit/", {"note": uuid.uuid4().hex}, {}, "write_log"),
    ],
)
def test_one_server_span_and_one_span_per_task(
    stack: Stack, path: str, params: dict[str, str], headers: dict[str, str], task: str
) -> None:
    with stack.server.client() as client:
        response = client.post(path, params=params, headers=headers)
    assert response.status_code == 200
    trace_id = trace_id_of(response)
    wait_for(lambda: len(stack.otlp.trace(trace_id)) >= 2, what=f"the spans of {path}")
    time.sleep(0.3)  # a stacked duplicate span would arrive in the same or the next export
    spans = stack.otlp.trace(trace_id)
    assert sorted(s.name for s in spans) == sorted([f"POST {path}", f"BackgroundTask {task}"])
    (server_span,) = [s for s in spans if s.kind == SERVER]
    (task_span,) = [s for s in spans if s.name == f"BackgroundTask {task}"]
    assert response.headers["traceparent"].split("-")[2] == server_span.span_id
    assert server_span.attributes["http.route"] == path
    assert task_span.parent_span_id == server_span.span_id
    assert task_span.attributes["background_task.name"] == task
    assert task_span.attributes["http.route"] == path
    assert task_span.attributes["background_task.outcome"] == "success"
    assert task_span.attributes["background_task.start_delay_s"] >= 0
    assert TOKEN not in str([s.attributes for s in spans])


def test_the_server_span_continues_the_callers_trace_and_keeps_the_query_out(stack: Stack) -> None:
    caller_trace, caller_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    headers = {"traceparent": f"00-{caller_trace}-{caller_span}-01", "user-agent": "private-agent/1"}
    with stack.server.client() as client:
        response = client.post("/send-mail/", params={"email": "private.person@example.com"}, headers=headers)
    assert response.status_code == 200
    assert trace_id_of(response) == caller_trace
    spans = wait_for(lambda: len(s := stack.otlp.trace(caller_trace)) >= 2 and s, what="the spans")
    (server_span,) = [s for s in spans if s.kind == SERVER]
    assert server_span.name == "POST /send-mail/"
    assert server_span.parent_span_id == caller_span
    assert server_span.attributes == {
        "http.request.method": "POST",
        "http.route": "/send-mail/",
        "url.scheme": "http",
        "network.protocol.version": "1.1",
        "http.response.status_code": 200,
    }
    assert "private" not in str([s.attributes for s in spans])


def test_probes_scrapes_and_unknown_paths(stack: Stack) -> None:
    with stack.server.client() as client:
        probes = [client.get(path) for path in ("/healthz", "/readyz", "/metrics")]
        unknown = client.post("/no/such/path/?secret=x")
    assert [r.status_code for r in probes] == [200, 200, 200]
    assert [r.headers.get("traceparent") for r in probes] == [None, None, None]  # not traced
    assert unknown.status_code == 404
    (span,) = wait_for(lambda: stack.otlp.trace(trace_id_of(unknown)), what="the 404's span")
    assert span.name == "POST"
    assert span.attributes == {
        "http.request.method": "POST",
        "url.scheme": "http",
        "network.protocol.version": "1.1",
        "http.response.status_code": 404,
    }


def test_only_traces_are_exported_and_no_duration_includes_tasks(stack: Stack) -> None:
    """No metrics go over OTLP, and no http.server.duration (which would include task time) exists."""
    with stack.server.client() as client:
        assert client.post("/log/", params={"msg": "export check"}).status_code == 200
    wait_for(lambda: stack.otlp.paths, what="an export")
    assert stack.otlp.paths == {"/v1/traces"}
    names = {name for name, _ in stack.server.metrics()}
    assert not [name for name in names if name.startswith("http_server_duration")]
    assert "http_server_request_duration_seconds_count" in names
