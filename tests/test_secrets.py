"""Secrets and private data stay out of telemetry, unless a setting lets private data in."""

import uuid
from pathlib import Path

import httpx

from harness import TOKEN, Gunicorn, OtlpReceiver, SentryIngest, Stack, started, trace_id_of, wait_for

WRONG_TOKEN = "wrong-" + uuid.uuid4().hex  # what a caller sent: a secret of theirs, just as private
METRICS_TOKEN = "metrics-" + uuid.uuid4().hex


def test_tokens_and_private_data_reach_no_log_span_metric_or_sentry_event(stack: Stack) -> None:
    email = f"private-{uuid.uuid4().hex[:8]}@example.com"
    message = f"private message {uuid.uuid4().hex}"
    with stack.server.connection_per_request_client() as client:  # a 500 closes its connection
        responses = [
            client.post("/notify/", headers={"Authorization": f"Bearer {TOKEN}"}),
            client.post("/notify/", headers={"Authorization": f"Bearer {WRONG_TOKEN}"}),
            client.post("/send-mail/", params={"email": email, "token": TOKEN}, headers={"X-Api-Key": TOKEN}),
            client.post("/send-message/", params={"message": message, "access_token": WRONG_TOKEN}),
            client.post(f"/notify/{TOKEN}"),
            client.post("/checkout/", params={"email": email, "token": TOKEN}),  # a 500, reported to Sentry
            client.post("/imports/", params={"count": -1, "token": TOKEN}),  # a failing task
        ]
    assert [r.status_code for r in responses] == [200, 401, 200, 200, 404, 500, 200]
    traced = [r for r in responses if "traceparent" in r.headers]
    for response in traced:
        wait_for(lambda r=response: stack.otlp.trace(trace_id_of(r)), what="the request's spans")
    wait_for(lambda: stack.sentry.events_tagged("background_task", "import_rows"), what="the task's Sentry event")
    wait_for(lambda: stack.sentry.events_tagged("route", "/checkout/"), what="the 500's Sentry event")
    wait_for(lambda: message in "\n".join(stack.server.log_file_lines()), what="the message task")

    captured = {
        "app and gunicorn logs": stack.server.stderr(),
        "span names and attributes": repr([(s.name, s.attributes) for s in stack.otlp.spans]),
        "metric labels": httpx.get(stack.server.url + "/metrics").text,
        "Sentry envelopes": stack.sentry.everything().decode(errors="replace"),
    }
    for where, text in captured.items():
        for secret in (TOKEN, WRONG_TOKEN):
            assert secret not in text, f"a token in {where}"
    for where in ("span names and attributes", "Sentry envelopes"):
        assert email not in captured[where], where
        assert message not in captured[where], where


def test_metrics_token_and_private_data_when_switched_on(tmp_path: Path) -> None:
    sentry, otlp = SentryIngest(), OtlpReceiver()
    env = {
        "METRICS_TOKEN": METRICS_TOKEN,
        "TELEMETRY_INCLUDE_PII": "true",
        "EMAIL_SEND_SECONDS": "0",
        "EMAIL_FAILURE_RATE": "1",
        "EMAIL_MAX_ATTEMPTS": "1",
        "SENTRY_DSN": sentry.dsn,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    email = f"opted-in-{uuid.uuid4().hex[:8]}@example.com"
    try:
        for server in started(Gunicorn(tmp_path, env=env)):
            with server.client() as client:
                refused = [client.get("/metrics"), client.get("/metrics", headers={"Authorization": "Bearer nope"})]
                scraped = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
                probe = client.get("/healthz")
                mail = client.post("/send-mail/", params={"email": email})
            assert [r.status_code for r in refused] == [401, 401]
            assert [r.headers["www-authenticate"] for r in refused] == ["Bearer", "Bearer"]
            assert refused[0].json() == {"detail": "Missing or invalid bearer token"}
            assert scraped.status_code == 200
            assert "# TYPE background_tasks_pending gauge" in scraped.text
            assert probe.status_code == 200
            assert mail.status_code == 200
            (event,) = wait_for(lambda: sentry.events_tagged("background_task", "send_email"), what="the event")
            trace_id = trace_id_of(mail)
            spans = wait_for(lambda: len(s := otlp.trace(trace_id)) >= 2 and s, what="the spans")  # noqa: B023
    finally:
        sentry.server.stop()
        otlp.server.stop()
    (task_span,) = [s for s in spans if s.name == "BackgroundTask send_email"]
    assert email in task_span.attributes["background_task.arguments"]
    frames = event["exception"]["values"][0]["stacktrace"]["frames"]
    assert any(email in str(frame.get("vars", {})) for frame in frames)
    assert METRICS_TOKEN not in sentry.everything().decode(errors="replace")
