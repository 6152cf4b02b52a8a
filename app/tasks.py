"""The background work itself. Nothing here knows about telemetry: the task wrapper adds it."""

import os
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

# Every character that str.splitlines() treats as a line break, plus NUL and the backslash
# that starts our escapes, so one message can never become two lines or an ambiguous one.
_LINE_ESCAPES = str.maketrans(
    {
        "\\": "\\\\",
        "\n": "\\n",
        "\r": "\\r",
        "\x00": "\\x00",
        "\x0b": "\\x0b",
        "\x0c": "\\x0c",
        "\x1c": "\\x1c",
        "\x1d": "\\x1d",
        "\x1e": "\\x1e",
        "\x85": "\\x85",
        "\u2028": "\\u2028",
        "\u2029": "\\u2029",
    }
)


def one_line(text: str) -> str:
    return text.translate(_LINE_ESCAPES)


@dataclass(frozen=True, slots=True)
class LogFile:
    path: Path

    def append(self, line: str) -> None:
        # One O_APPEND write per line: concurrent workers never interleave or split a line.
        data = (one_line(line) + "\n").encode("utf-8", errors="backslashreplace")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def write_log(log: LogFile, message: str) -> None:
    log.append(message)


class EmailDeliveryError(Exception):
    pass


def send_email(
    log: LogFile,
    email: str,
    subject: str,
    body: str,  # noqa: ARG001
    *,
    delay_seconds: float,
    failure_rate: float = 0.0,
) -> None:
    time.sleep(delay_seconds)  # stands in for a slow SMTP conversation
    if random.random() < failure_rate:  # noqa: S311 - a simulation, not a secret
        raise EmailDeliveryError("simulated: the mail server refused the message")
    log.append(f"Sent email to {email}: {subject}")


def log_message(log: LogFile, message: str) -> None:
    log.append(f"{datetime.now(UTC).isoformat(timespec='milliseconds')}: {message}")
