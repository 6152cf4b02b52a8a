"""Spans over OTLP: per request one server span and exactly one span per task, in one trace."""

import time
import uuid

import pytest

from tests.support import TOKEN, Stack, trace_id_of, wait_for

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


def test_only_traces_are_exported_and_no_duration_includes_tasks(stack: Stack) -> None:
    """The instrumentation's own http.server.duration (which includes task time) goes nowhere."""
    with stack.server.client() as client:
        assert client.post("/log/", params={"msg": "export check"}).status_code == 200
    wait_for(lambda: stack.otlp.paths, what="an export")
    assert stack.otlp.paths == {"/v1/traces"}
    names = {name for name, _ in stack.server.metrics()}
    assert not [name for name in names if name.startswith("http_server_duration")]
    assert "http_server_request_duration_seconds_count" in names
