"""What a process prints past our logging reaches the log as JSON: through the queue worker's
entry point (app/observability/output_relay.py), and through the hooks every process installs."""

import io
import os
import subprocess
import sys
import textwrap

from app.observability.output_relay import relay
from harness import ROOT, log_lines

CHILD = textwrap.dedent(
    """
    import multiprocessing, sys, threading
    from app.observability.logging import configure_logging

    def fail():
        raise ConnectionError("the broker went away")

    def fail_chained():
        try:
            fail()
        except ConnectionError as error:
            raise RuntimeError("the pool gives up") from error

    if __name__ == "__main__":
        # Before logging is configured: multiprocessing's own reports, one right after the other,
        # and plain text.
        for name, target in (("Pool worker 1", fail), ("Pool worker 2", fail_chained)):
            process = multiprocessing.get_context("fork").Process(target=target, name=name)
            process.start()
            process.join()
        print("a line printed past logging", flush=True)
        configure_logging("INFO", "json")
        thread = threading.Thread(target=fail, name="consumer")
        thread.start()
        thread.join()
        raise ValueError("nothing caught this")
    """
)


def relayed(code: str) -> tuple[int, str]:
    """Runs ``code`` with its stdout and stderr relayed, as app/worker_main.py runs a library."""
    read, write = os.pipe()
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=write, stderr=write)
    os.close(write)
    out = io.BytesIO()
    relay(read, out)
    return child.wait(timeout=30), out.getvalue().decode()


def test_tracebacks_and_stray_text_become_one_json_record_each() -> None:
    status, output = relayed(CHILD)
    assert status == 1
    lines = log_lines(output)  # each a JSON object with the common keys, or this fails
    assert len(lines) == 5
    # The relay keeps each record whole; a JSON line may pass a record still open, so no order.
    by_message = {line["message"]: line for line in lines}
    pool, text = by_message["Process Pool worker 1:"], by_message["a line printed past logging"]
    thread, uncaught = by_message["uncaught exception in a thread"], by_message["uncaught exception"]
    assert [(line["logger"], line["level"]) for line in (pool, text, thread, uncaught)] == [
        ("worker.output", "ERROR"),
        ("worker.output", "WARNING"),
        ("app", "ERROR"),
        ("app", "CRITICAL"),
    ]
    assert pool["exc_info"].startswith("Traceback (most recent call last):\n")
    assert pool["exc_info"].endswith("ConnectionError: the broker went away")
    assert "exc_info" not in text
    chained = by_message["Process Pool worker 2:"]
    assert chained["exc_info"].count("Traceback (most recent call last):") == 2
    assert "The above exception was the direct cause of the following exception:" in chained["exc_info"]
    assert chained["exc_info"].endswith("RuntimeError: the pool gives up")
    assert thread["exc_info"].endswith("ConnectionError: the broker went away")
    assert uncaught["exc_info"].endswith("ValueError: nothing caught this")
    assert uncaught["pid"] == thread["pid"] != pool["pid"]  # the process's own, not the relay's


def test_json_lines_pass_as_they_are_and_a_line_cut_by_the_exit_is_kept() -> None:
    line = '{"time": "t", "level": "INFO", "logger": "x", "pid": 1, "message": "as it is"}'
    status, output = relayed(f"import sys; sys.stdout.write({line!r} + '\\n{{not json}}\\ncut')")
    assert status == 0
    passed, *made = output.splitlines()
    assert passed == line
    # One record, or two where the exit came over QUIET_SECONDS after the line before "cut".
    records = log_lines("\n".join(made))
    assert {(record["logger"], record["level"]) for record in records} == {("worker.output", "WARNING")}
    assert "\n".join(record["message"] for record in records) == "{not json}\ncut"
