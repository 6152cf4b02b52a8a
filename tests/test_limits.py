"""Hostile input on the wire: each request gets a 4xx that says why, and nothing accepted is lost."""

import socket
import uuid
from collections import Counter
from dataclasses import dataclass
from urllib.parse import quote

from harness import Stack, wait_for
from tests.conftest import MAX_MESSAGE_LENGTH

UVICORN_REFUSAL = "Invalid HTTP request received."


@dataclass(frozen=True)
class Hostile:
    name: str
    path: str  # with its query string, already on the wire's bytes
    status: int
    detail: str
    headers: bytes = b""
    body: bytes = b""


def _hostile(tag: str) -> list[Hostile]:
    # Each value carries the tag, so the log file can prove that none of them got in.
    msg = f"msg={tag}-refused"
    return [
        Hostile("request line over 64 KiB", f"/log/?{msg}&pad={'a' * 70_000}", 400, UVICORN_REFUSAL),
        Hostile("msg one over the limit", f"/log/?msg={tag}{'x' * MAX_MESSAGE_LENGTH}", 422, "at most"),
        Hostile(
            "4-byte characters", f"/send-message/?message={quote(tag + '😀' * MAX_MESSAGE_LENGTH)}", 422, "at most"
        ),
        # Only the headers are sent: the answer comes without waiting for 10 MB. (Bytes the
        # server never reads would make its close a reset, which can discard the answer.)
        Hostile("10 MB body declared", f"/log/?{msg}", 413, "take no request body", b"Content-Length: 10000000\r\n"),
        Hostile(
            "chunked body",
            f"/send-message/?message={tag}",
            413,
            "take no request body",
            b"Transfer-Encoding: chunked\r\n",
            b"10\r\n" + b"b" * 16 + b"\r\n0\r\n\r\n",
        ),
        Hostile("percent-encoded bytes not UTF-8", f"/log/?{msg}%ff%fe", 400, "not UTF-8"),
        Hostile("overlong UTF-8", f"/send-message/?message={tag}%c0%af", 400, "not UTF-8"),
        Hostile("raw bytes not UTF-8", f"/log/?{msg}\udcff", 400, UVICORN_REFUSAL),
        Hostile("CR LF", f"/log/?{msg}%0d%0aFORGED", 422, "U+000D at position"),
        Hostile("LF", f"/send-message/?message={tag}%0aFORGED", 422, "U+000A at position"),
        Hostile("NUL", f"/log/?{msg}%00", 422, "U+0000 at position"),
        Hostile("U+2028", f"/log/?{msg}%e2%80%a8FORGED", 422, "U+2028 at position"),
        Hostile("U+2029", f"/send-message/?message={tag}%e2%80%a9", 422, "U+2029 at position"),
        Hostile("U+0085", f"/log/?{msg}%c2%85", 422, "U+0085 at position"),
        Hostile("raw CR in the request line", f"/log/?{msg}\rFORGED", 400, UVICORN_REFUSAL),
        Hostile("raw NUL in the request line", f"/log/?{msg}\x00", 400, UVICORN_REFUSAL),
        Hostile("5,000 parameters", f"/log/?{msg}&" + "&".join(f"p{i}=1" for i in range(5000)), 400, "at most 16"),
        Hostile("msg given twice", f"/log/?{msg}&msg={tag}-second", 400, "'msg' is given more than once"),
    ]


def _exchange(port: int, target: str, headers: bytes = b"", body: bytes = b"") -> tuple[int, str]:
    """One request as raw bytes, since an HTTP client would refuse to send most of these."""
    line = f"POST {target} HTTP/1.1\r\n".encode("utf-8", errors="surrogateescape")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(line + b"Host: 127.0.0.1\r\nConnection: close\r\n" + headers + b"\r\n" + body)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, content = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), content.decode()


def test_hostile_requests_get_a_4xx_with_a_message_and_accepted_messages_one_line_each(stack: Stack) -> None:
    tag = uuid.uuid4().hex
    hostile = _hostile(tag)
    refusals_before = stack.server.stderr().count(UVICORN_REFUSAL)
    before = stack.server.metrics()
    accepted: list[str] = []
    for number, request in enumerate(hostile):
        status, content = _exchange(stack.server.port, request.path, request.headers, request.body)
        assert (request.name, status) == (request.name, request.status)
        assert request.detail in content, (request.name, content)
        assert "Traceback" not in content
        # Each refusal is followed by a message that must arrive, on a new connection.
        ok = f"{tag} accepted {number}\tafter {request.name}: 100% ok & fine"
        path = "/log/" if number % 2 else "/send-message/"
        key = "msg" if path == "/log/" else "message"
        assert _exchange(stack.server.port, f"{path}?{key}={quote(ok)}")[0] == 200
        accepted.append(ok)

    def tagged() -> list[str]:
        return [line for line in stack.server.log_file_lines() if tag in line]

    wait_for(lambda: len(tagged()) >= len(accepted), what="every accepted message in the log file")
    lines = tagged()
    assert len(lines) == len(accepted)
    for ok in accepted:
        assert sum(line.endswith(ok) for line in lines) == 1, ok
    assert not any("refused" in line or "FORGED" in line for line in lines)

    # Refusals that reached the app are counted under their route and status; uvicorn's own
    # refusals never reach it, and gunicorn's log names each of them.
    scrape = stack.server.metrics().since(before)
    reached_app = Counter((r.path.split("?")[0], str(r.status)) for r in hostile if r.detail != UVICORN_REFUSAL)
    for (route, status), sent in reached_app.items():
        assert scrape.get_value("http_server_request_duration_seconds_count", route=route, status=status) == sent
    for route in ("/log/", "/send-message/"):
        assert scrape.get_value("background_tasks_scheduled_total", route=route) == len(accepted) / 2
    by_uvicorn = sum(r.detail == UVICORN_REFUSAL for r in hostile)
    wait_for(lambda: stack.server.stderr().count(UVICORN_REFUSAL) - refusals_before == by_uvicorn)
