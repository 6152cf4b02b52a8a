"""The Docker image, built and run for real (`make image-test`; not part of `make test`)."""

import json
import os
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from harness import ROOT, TOKEN, app_lines, free_port, wait_for

pytestmark = pytest.mark.container

IMAGE = "observable-background-tasks:test"
CONTAINER = "observable-background-tasks-test"


def _docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [os.environ["DOCKER"], *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "BUILDAH_FORMAT": "docker"},  # keeps HEALTHCHECK, which OCI images drop
    )
    if check and done.returncode:
        # The tail says why (a failed pip download, a bad layer), which CI must print.
        raise AssertionError(f"docker {args[0]} exited with {done.returncode}:\n{(done.stdout + done.stderr)[-4000:]}")
    return done


@pytest.fixture(scope="module")
def service() -> Iterator[str]:
    _docker("build", "--build-arg", f"BASE_IMAGE={os.environ['BASE_IMAGE']}", "-t", IMAGE, str(ROOT), timeout=1200)
    _docker("rm", "-f", CONTAINER, check=False)
    port = free_port()
    # What a user runs; PORT only because this machine's containers share the host's network.
    env = ["-e", f"PORT={port}", "-e", f"API_TOKEN={TOKEN}", "-e", "EMAIL_SEND_SECONDS=2", "-e", "LOG_LEVEL=DEBUG"]
    _docker("run", "-d", "--name", CONTAINER, "-p", f"{port}:{port}", *env, IMAGE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(url), timeout=60, what="the container to answer /healthz")
        yield url
    finally:
        _docker("rm", "-f", CONTAINER, check=False)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _app_logs() -> list[dict[str, object]]:
    logs = _docker("logs", CONTAINER)
    output = logs.stderr + logs.stdout
    return app_lines(output)


def test_the_image_runs_as_a_non_root_user(service: str) -> None:
    assert _docker("exec", CONTAINER, "id", "-u").stdout.strip() == "10001"
    image = json.loads(_docker("image", "inspect", IMAGE).stdout)[0]
    assert image["Config"]["User"] == "10001:10001"
    healthcheck = image["Config"].get("Healthcheck") or image["Healthcheck"]  # docker's place, podman's
    assert "/healthz" in " ".join(healthcheck["Test"])
    assert _docker("healthcheck", "run", CONTAINER, check=False).returncode == 0


def test_the_endpoints_answer_and_metrics_count_them(service: str) -> None:
    with httpx.Client(base_url=service, timeout=10) as client:
        calls = [
            ("/log/", {"params": {"msg": "from the image"}}, {"status": "Message logged in background"}),
            (
                "/send-mail/",
                {"params": {"email": "image@example.com"}},
                {"status": "Email to image@example.com is being sent in background"},
            ),
            ("/notify/", {"headers": {"Authorization": f"Bearer {TOKEN}"}}, {"status": "Notification scheduled"}),
            (
                "/send-message/",
                {"params": {"message": "hi"}},
                {"message": "Message received. It will be logged soon."},
            ),
        ]
        for path, kwargs, body in calls:
            response = client.post(path, **kwargs)
            assert (response.status_code, response.json()) == (200, body)
        assert client.get("/readyz").status_code == 200

        def all_done() -> bool:
            text = client.get("/metrics").text
            return all(f'http_request_lifetime_seconds_count{{route="{path}"}} 1.0' in text for path, _, _ in calls)

        wait_for(all_done, what="every task in the container")
        metrics = client.get("/metrics").text
    assert 'background_tasks_scheduled_total{route="/send-mail/",task="send_email"} 1.0' in metrics
    assert 'background_task_duration_seconds_count{outcome="success",route="/log/",task="write_log"} 1.0' in metrics


def test_sigterm_drains_the_pending_email(service: str) -> None:
    with httpx.Client(base_url=service, timeout=10) as client:
        assert client.post("/send-mail/", params={"email": "last@example.com"}).status_code == 200
    stopping = time.monotonic()
    _docker("stop", "-t", "60", CONTAINER, timeout=90)
    assert time.monotonic() - stopping >= 1  # it waited for the 2 s email
    assert _docker("inspect", "-f", "{{.State.ExitCode}}", CONTAINER).stdout.strip() == "0"
    sent = [line for line in _app_logs() if line.get("task") == "send_email" and line.get("outcome") == "success"]
    assert len(sent) == 2  # the one from the endpoint test and the one sent just before the stop
    assert not [line for line in _app_logs() if line.get("message") == "background task dropped"]
