"""Random paths cannot grow the metrics: every unknown path is one label value, `unmatched`."""

import random
import string
from concurrent.futures import ThreadPoolExecutor

from harness import Stack

REQUESTS = 10_000
THREADS = 4


def _random_path(rng: random.Random) -> str:
    segments = ["".join(rng.choices(string.ascii_letters + string.digits + "-_.~%", k=rng.randint(1, 12)))]
    segments += [str(rng.randint(0, 10**9)) for _ in range(rng.randint(0, 3))]
    return "/" + "/".join(segments) + rng.choice(["", "/", "?q=" + str(rng.random())])


def test_ten_thousand_unknown_paths_add_only_the_unmatched_label(stack: Stack) -> None:
    server = stack.server
    server.metrics()  # so that /metrics itself is a label value already
    before = server.metrics()

    def send(seed: int) -> list[int]:
        rng = random.Random(seed)
        with server.client() as client:  # keep-alive: 10,000 new connections would take minutes
            return [
                client.request(rng.choice(["GET", "POST"]), _random_path(rng)).status_code
                for _ in range(REQUESTS // THREADS)
            ]

    with ThreadPoolExecutor(THREADS) as pool:
        statuses = [status for batch in pool.map(send, range(THREADS)) for status in batch]
    assert len(statuses) == REQUESTS
    assert set(statuses) <= {404, 405}, set(statuses)

    after = server.metrics()
    change = after.since(before)
    for name in ("http_server_request_duration_seconds_count", "http_request_lifetime_seconds_count"):
        assert after.label_values(name, "route") - before.label_values(name, "route") <= {"unmatched"}, name
        assert change.get_value(name, route="unmatched") == REQUESTS, name
    unmatched_series = {
        ls for (n, ls) in after if n == "http_server_request_duration_seconds_count" and ("route", "unmatched") in ls
    }
    assert len(unmatched_series) <= 4  # GET and POST, 404 and 405 at most
    assert not [key for key in after if any(len(value) > 64 for _, value in key[1])]
