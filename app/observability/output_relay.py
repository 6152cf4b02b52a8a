"""The queue worker's output, one JSON object per line whatever its library prints.

Our logging writes JSON, but not everything a library's processes print goes through it: a
process of a multiprocessing pool that dies prints ``Process …:`` and a raw traceback (RQ's pool
and scheduler on a broker crash), and a process can fail before its logging is configured. The
entry point (app/worker_main.py) reads its child's stdout and stderr through a pipe and relays them
here: a JSON object line as it is, and each burst of other lines as one record, a traceback in its
``exc_info`` field.

A burst ends after a traceback's last exception line, or when its writers have been quiet for
``QUIET_SECONDS``. Lines from two processes that print at the same instant may share a record, or
a JSON line may pass a burst still open; no line is lost.
"""

import json
import logging
import os
import select
import threading
from typing import BinaryIO

from app.observability.logging import JsonFormatter

LOGGER_NAME = "worker.output"  # the records made here: the child's lines that were not JSON
QUIET_SECONDS = 0.1
MAX_BURST_LINES = 1000  # a child that never pauses still has its lines written
TRACEBACK = "Traceback (most recent call last):"
CHAINED = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)
_FORMATTER = JsonFormatter()


def relay_in_thread(fd: int, out: BinaryIO) -> threading.Thread:
    """Relays the pipe ``fd`` to ``out`` in a thread of its own until every writer has closed it."""
    thread = threading.Thread(target=relay, args=(fd, out), name="worker-output", daemon=True)
    thread.start()
    return thread


def relay(fd: int, out: BinaryIO) -> None:
    burst: list[str] = []
    rest = b""
    try:
        while True:
            if burst and not select.select([fd], [], [], QUIET_SECONDS)[0]:
                out.write(_record(burst))
                out.flush()
                burst = []
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                if _is_json_object(line):
                    out.write(line + b"\n")
                    continue
                text = line.decode(errors="replace")
                if burst and not _continues(burst, text):
                    out.write(_record(burst))
                    burst = []
                burst.append(text)
            if len(burst) >= MAX_BURST_LINES:
                out.write(_record(burst))
                burst = []
            out.flush()
        if rest:
            burst.append(rest.decode(errors="replace"))
        if burst:
            out.write(_record(burst))
            out.flush()
    finally:
        os.close(fd)


def _continues(burst: list[str], line: str) -> bool:
    """Whether ``line`` belongs to the burst: any line, until the burst holds a traceback; then
    its frames, its exception line, and the exceptions chained to it. A line after the last
    exception line starts a record of its own, however soon it comes."""
    if not any(text.startswith(TRACEBACK) for text in burst):
        return True
    if not line.strip() or line.startswith((" ", "\t", TRACEBACK)) or line in CHAINED:
        return True
    last = next(text for text in reversed(burst) if text.strip())
    return last.startswith((" ", "\t", TRACEBACK))  # then this line is the exception's


def _is_json_object(line: bytes) -> bool:
    if not (line.startswith(b"{") and line.endswith(b"}")):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _record(lines: list[str]) -> bytes:
    """One JSON line for a burst: a traceback is ERROR, with the lines before it (multiprocessing's
    ``Process …:``) or else its last line as the message; any other text is WARNING."""
    start = next((i for i, line in enumerate(lines) if line.startswith(TRACEBACK)), None)
    if start is None:
        message, level, trace = "\n".join(lines).strip(), logging.WARNING, None
    else:
        header = " ".join(line.strip() for line in lines[:start] if line.strip())
        trace = "\n".join(lines[start:]).rstrip()
        message, level = header or trace.rsplit("\n", 1)[-1], logging.ERROR
    record = logging.LogRecord(LOGGER_NAME, level, __file__, 0, message, None, None)
    record.exc_text = trace
    return (_FORMATTER.format(record) + "\n").encode()
