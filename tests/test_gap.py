"""The gap is real: /send-mail/ answers at once while its task takes EMAIL_SEND_SECONDS."""

from harness import Stack
from tests.conftest import EMAIL_SEND_SECONDS

REQUESTS = 10


def test_response_time_excludes_task_time(stack: Stack) -> None:
    server = stack.server
    before = server.metrics()
    with server.client() as client:
        for i in range(REQUESTS):
            response = client.post("/send-mail/", params={"email": f"gap{i}@example.com"})
            assert response.status_code == 200

    labels = {"task": "send_email", "route": "/send-mail/"}
    # The request's lifetime is recorded last, once its task is done.
    change = server.wait_for_metrics(
        lambda m: m.get_value("http_request_lifetime_seconds_count", route="/send-mail/") >= REQUESTS,
        "the email tasks to finish",
        since=before,
    )

    http = {"route": "/send-mail/", "status": "200"}
    assert change.get_value("http_server_request_duration_seconds_count", **http) == REQUESTS
    # Each task starts after its response has ended and runs EMAIL_SEND_SECONDS, so each request's
    # lifetime outlasts its response by that much, however slow the machine: a response that
    # waited for its task would end with it, and outlast nothing. (How fast it answers is for the bench.)
    outlasting = change.get_value("http_request_lifetime_seconds_sum", route="/send-mail/") - change.get_value(
        "http_server_request_duration_seconds_sum", **http
    )
    assert outlasting >= REQUESTS * EMAIL_SEND_SECONDS
    # Every task took at least EMAIL_SEND_SECONDS: none fell in a bucket at or below it.
    assert change.get_value("background_task_duration_seconds_count", outcome="success", **labels) == REQUESTS
    assert change.get_value("background_task_duration_seconds_bucket", le=str(EMAIL_SEND_SECONDS), **labels) == 0
    assert change.get_value("background_task_duration_seconds_sum", **labels) >= REQUESTS * EMAIL_SEND_SECONDS
    assert change.get_value("background_task_start_delay_seconds_count", **labels) == REQUESTS
    assert change.get_value("http_request_lifetime_seconds_count", route="/send-mail/") == REQUESTS
    assert (
        change.get_value("http_request_lifetime_seconds_bucket", le=str(EMAIL_SEND_SECONDS), route="/send-mail/") == 0
    )
