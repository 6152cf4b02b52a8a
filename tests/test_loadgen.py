"""The benchmarks' load generator counts exactly what the service answered."""

import uuid

from bench import loadgen
from harness import Stack


def test_every_response_the_load_generator_counts_was_served_once(stack: Stack) -> None:
    server = stack.server
    before = server.metrics()
    message = uuid.uuid4().hex
    result = loadgen.run("127.0.0.1", server.port, "POST", f"/log/?msg={message}", connections=4, seconds=1.0)
    assert result.statuses[200] == result.responses > 50
    change = server.wait_for_metrics(
        lambda m: m.get_value("http_request_lifetime_seconds_count", route="/log/") == result.responses,
        "every request of the load",
        since=before,
    )
    assert (
        change.get_value("http_server_request_duration_seconds_count", route="/log/", status="200") == result.responses
    )
    assert server.log_file_lines().count(message) == result.responses
    assert 0 < result.percentile(0.5) <= result.percentile(0.99) < 5
