"""The task functions alone: one message is always one whole line."""

import sys
from pathlib import Path

import pytest

from app.tasks import EmailDeliveryError, LogFile, one_line, send_email, write_log


def test_no_character_can_break_a_line() -> None:
    breakers = [chr(c) for c in range(sys.maxunicode + 1) if len(f"a{chr(c)}b".splitlines()) != 1]
    assert "\n" in breakers
    assert "\u2028" in breakers
    for char in [*breakers, "\x00"]:
        escaped = one_line(f"a{char}b")
        assert escaped.splitlines() == [escaped]
        assert "\x00" not in escaped


def test_escaping_is_unambiguous() -> None:
    # A literal backslash-n typed by a client must not read back like an escaped newline.
    assert one_line("a\\nb") != one_line("a\nb")
    assert one_line("a\\nb") == "a\\\\nb"


def test_write_log_appends_one_line(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "log.txt")
    write_log(log, "first")
    write_log(log, "second\r\nthird")
    assert (tmp_path / "log.txt").read_text().splitlines() == ["first", "second\\r\\nthird"]


def test_the_simulated_send_fails_at_the_configured_rate(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "tasks.log")
    with pytest.raises(EmailDeliveryError):
        send_email(log, "a@example.com", "Hi", "body", delay_seconds=0, failure_rate=1.0)
    send_email(log, "b@example.com", "Hi", "body", delay_seconds=0, failure_rate=0.0)
    assert log.path.read_text() == "Sent email to b@example.com: Hi\n"
