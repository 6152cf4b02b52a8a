"""The task functions alone: one message is always one whole line."""

import sys
from pathlib import Path

from app.tasks import LogFile, one_line, write_log


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
