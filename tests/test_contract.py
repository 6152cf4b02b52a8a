"""The endpoint contract (the README's "The endpoints" table): each status and body, and its task, exactly once."""

import uuid

import pytest

from harness import TOKEN, Stack, wait_for
from tests.conftest import MAX_MESSAGE_LENGTH


def _once(stack: Stack, line_end: str) -> None:
    """The log file holds exactly one line ending with `line_end` (it waits for the task)."""
    wait_for(lambda: any(line.endswith(line_end) for line in stack.server.log_file_lines()), what=line_end)
    assert sum(line.endswith(line_end) for line in stack.server.log_file_lines()) == 1


def test_log(stack: Stack) -> None:
    msg = f"hello {uuid.uuid4()}"
    with stack.server.client() as client:
        response = client.post("/log/", params={"msg": msg})
    assert response.status_code == 200
    assert response.json() == {"status": "Message logged in background"}
    _once(stack, msg)
    assert msg in stack.server.log_file_lines()


def test_send_mail(stack: Stack) -> None:
    email = f"user-{uuid.uuid4().hex[:8]}@example.com"
    with stack.server.client() as client:
        response = client.post("/send-mail/", params={"email": email})
    assert response.status_code == 200
    assert response.json() == {"status": f"Email to {email} is being sent in background"}
    _once(stack, f"Sent email to {email}: Welcome!")


def test_notify(stack: Stack) -> None:
    before = stack.server.log_file_lines().count("Notification sent to api-user")
    with stack.server.client() as client:
        response = client.post("/notify/", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.json() == {"status": "Notification scheduled"}
    wait_for(lambda: stack.server.log_file_lines().count("Notification sent to api-user") == before + 1)


def test_send_message(stack: Stack) -> None:
    message = f"note {uuid.uuid4()}"
    with stack.server.client() as client:
        response = client.post("/send-message/", params={"message": message})
    assert response.status_code == 200
    assert response.json() == {"message": "Message received. It will be logged soon."}
    _once(stack, f": {message}")
    (line,) = [line for line in stack.server.log_file_lines() if line.endswith(message)]
    timestamp = line.removesuffix(f": {message}")
    assert timestamp.startswith("20")
    assert timestamp.endswith("+00:00")


@pytest.mark.parametrize(
    ("path", "params", "message_part"),
    [
        ("/log/", {"msg": "x" * (MAX_MESSAGE_LENGTH + 1)}, f"at most {MAX_MESSAGE_LENGTH} characters"),
        ("/send-message/", {"message": "x" * (MAX_MESSAGE_LENGTH + 1)}, f"at most {MAX_MESSAGE_LENGTH} characters"),
        ("/log/", {}, "Field required"),
        ("/send-mail/", {"email": "not-an-email"}, "value is not a valid email address"),
        ("/send-mail/", {"email": "a@b@example.com"}, "value is not a valid email address"),
        # A message that would forge a second log line is refused, not rewritten.
        ("/log/", {"msg": "real\r\nFORGED"}, "U+000D at position 4 is a control character or line separator"),
        ("/send-message/", {"message": "a\u2028b"}, "U+2028 at position 1"),
    ],
)
def test_bad_input_gets_422_with_a_message(stack: Stack, path: str, params: dict[str, str], message_part: str) -> None:
    lines_before = len(stack.server.log_file_lines())
    with stack.server.client() as client:
        response = client.post(path, params=params)
    assert response.status_code == 422
    assert message_part in response.json()["detail"][0]["msg"]
    assert len(stack.server.log_file_lines()) == lines_before


def test_message_at_the_limit_is_accepted(stack: Stack) -> None:
    msg = uuid.uuid4().hex + "y" * (MAX_MESSAGE_LENGTH - 32)
    with stack.server.client() as client:
        assert client.post("/log/", params={"msg": msg}).status_code == 200
    _once(stack, msg)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer"},
    ],
)
def test_notify_needs_the_token(stack: Stack, headers: dict[str, str]) -> None:
    with stack.server.client() as client:
        response = client.post("/notify/", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"detail": "Missing or invalid bearer token"}
    assert response.headers["www-authenticate"] == "Bearer"


def test_probes(stack: Stack) -> None:
    with stack.server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}
