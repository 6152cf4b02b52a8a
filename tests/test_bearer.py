"""One bearer-token rule on every port (app/bearer.py): the web side's routes and `/metrics`, and
the queue worker's `/metrics`, answer every form of the header alike."""

from pathlib import Path

import httpx
import pytest

from harness import TOKEN, Gunicorn, QueueWorker, RedisServer

# Each header, and whether it carries the token: the scheme in any case, then one space or more;
# anything else refused. (A value's surrounding whitespace never arrives: HTTP strips it.)
CASES = [
    (None, False),
    (f"Bearer {TOKEN}", True),
    (f"bearer {TOKEN}", True),
    (f"BEARER {TOKEN}", True),
    (f"Bearer  {TOKEN}", True),
    (f"Bearer {TOKEN}x", False),
    (f"Bearer {TOKEN[:-1]}", False),
    (f"Basic {TOKEN}", False),
    (f"Bearer{TOKEN}", False),
    (TOKEN, False),
    ("Bearer", False),
    ("", False),
]


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> "dict[str, str]":
    """The URL of each guarded endpoint: the web side's /notify/ and /metrics, the worker's /metrics."""
    workdir: Path = tmp_path_factory.mktemp("bearer")
    redis = RedisServer(workdir / "redis").start()
    env = {"BROKER_URL": redis.url, "TASK_QUEUE": "rq", "API_TOKEN": TOKEN, "METRICS_TOKEN": TOKEN}
    web = Gunicorn(workdir / "web", env=env, workers=1).start()
    worker = QueueWorker(workdir / "worker", env, concurrency=1).start()
    try:
        yield {"web /notify/": f"{web.url}/notify/", "web /metrics": f"{web.url}/metrics", "worker": worker.metrics_url}
    finally:
        worker.stop()
        web.stop()
        redis.stop()


@pytest.mark.parametrize(("authorization", "carries_the_token"), CASES)
def test_every_port_reads_the_token_by_the_same_rule(
    ports: "dict[str, str]", authorization: str | None, carries_the_token: bool
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    answers = {}
    for port, url in ports.items():
        method = "POST" if url.endswith("/notify/") else "GET"
        response = httpx.request(method, url, headers=headers, timeout=10)
        answers[port] = response.status_code
        if response.status_code == 401:
            assert response.json() == {"detail": "Missing or invalid bearer token"}
            assert response.headers["www-authenticate"] == "Bearer"
    assert answers == dict.fromkeys(ports, 200 if carries_the_token else 401)
