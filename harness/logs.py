"""The JSON log lines every process writes, parsed strictly."""

import json
from typing import Any

LOG_KEYS = {"time", "level", "logger", "pid", "message"}


def log_lines(output: str) -> list[dict[str, Any]]:
    """Every line of a process's output as a JSON object with the common keys; fails on one that is not."""
    lines = []
    for number, line in enumerate(output.splitlines(), 1):
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"line {number} is not JSON: {line!r}") from None
        assert isinstance(parsed, dict), line
        assert parsed.keys() >= LOG_KEYS, line
        lines.append(parsed)
    return lines


def app_lines(output: str) -> list[dict[str, Any]]:
    """The app's own log lines in a process's output (every line is a JSON object: test_logs.py)."""
    lines = (json.loads(line) for line in output.splitlines() if line.startswith("{"))
    return [line for line in lines if line["logger"] == "app" or line["logger"].startswith("app.")]
