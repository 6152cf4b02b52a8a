"""Processes and waiting: the project root, free ports, servers spawned so that they die with the
test process (PR_SET_PDEATHSIG), and the one way to wait for a condition."""

import ctypes
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free port below the ephemeral range, not handed out before by this process. A port the
    kernel picks (bind to 0) is an ephemeral one: any client's outgoing connection could take it
    before the server it was picked for binds it (a worker failed to start so, once in a suite),
    or while a server the tests restart is down (a localhost socket connected to itself)."""
    lowest_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        port = random.randrange(10_000, lowest_ephemeral)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port


def die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(
    args: list[str], env: dict[str, str] | None, log: Path, *, append: bool = False, root: Path = ROOT
) -> "subprocess.Popen[bytes]":
    """A server process from the project root, its output in `log`, stopped if the tests die."""
    with log.open("ab" if append else "wb") as out:
        return subprocess.Popen(
            args,
            cwd=root,
            env=env,
            stdout=out,
            stderr=out,
            preexec_fn=die_with_parent,  # noqa: PLW1509
        )


def children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(child) for child in path.read_text().split()} if path.exists() else set()
