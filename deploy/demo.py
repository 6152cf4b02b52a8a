"""A realistic mix of traffic, failing tasks included, so the dashboards show something at once.

    make demo                       # against http://127.0.0.1:8000 for 5 minutes
    make demo DEMO_URL=http://host:8000 DEMO_SECONDS=60

The failing tasks are the service's own: deploy/compose.yaml sets EMAIL_FAILURE_RATE=0.3, so
three sends in ten fail: most are retried (EMAIL_MAX_ATTEMPTS, 3), and about one email in forty
fails for good. Set API_TOKEN to the service's token for /notify/ to succeed. Only the
standard library is used, so it runs with any Python 3.
"""

import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter

# (weight, path, query with {i} for the call's number): most calls succeed, some are refused
# with a 4xx, as in real traffic.
MIX = [
    (40, "/log/", {"msg": "demo message {i}"}),
    (20, "/send-message/", {"message": "hello {i}"}),
    (20, "/send-mail/", {"email": "user{i}@example.com"}),
    (10, "/notify/", {}),
    (3, "/send-message/", {"message": "x" * 5000}),  # too long: 422
    (3, "/send-mail/", {"email": "not-an-address"}),  # invalid: 422
    (4, "/no-such-page/", {}),  # 404, counted as route "unmatched"
]


def _call(base: str, path: str, query: dict[str, str], token: str | None) -> int:
    url = f"{base}{path}?{urllib.parse.urlencode(query)}"
    request = urllib.request.Request(url, method="POST")  # noqa: S310 - DEMO_URL is the user's own
    if token and path == "/notify/":
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - as above
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0  # connection refused or reset: counted, and the demo goes on


def main() -> None:
    base = os.environ.get("DEMO_URL", "http://127.0.0.1:8000").rstrip("/")
    seconds = float(os.environ.get("DEMO_SECONDS", "300"))
    token = os.environ.get("API_TOKEN")
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    weights = [weight for weight, _, _ in MIX]

    def client(n: int) -> None:
        rng = random.Random(n)  # noqa: S311 - traffic shape, not a secret
        i = 0
        while time.monotonic() < stop_at:
            _, path, query = rng.choices(MIX, weights)[0]
            number = i * 10 + n
            status = _call(base, path, {k: v.format(i=number) for k, v in query.items()}, token)
            with lock:
                statuses[status] += 1
            i += 1
            time.sleep(rng.expovariate(20))  # about 20 requests a second per client, in bursts

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(4)]
    for thread in threads:
        thread.start()
    print(f"demo: traffic to {base} for {seconds:.0f} s; Grafana: http://localhost:3000", flush=True)
    while any(thread.is_alive() for thread in threads):
        time.sleep(min(10.0, max(0.1, stop_at - time.monotonic())))
        with lock:
            print("demo: responses by status:", dict(sorted(statuses.items())), flush=True)


if __name__ == "__main__":
    main()
