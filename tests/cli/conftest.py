"""Running imagectl as a subprocess, piped or under a pseudo-terminal, against the real daemon."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.daemon import DaemonProcess
from tests.support.registry import Registry

IMAGECTL = [sys.executable, "-m", "imaged.cli.main"]


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


def run_imagectl(
    *args: str, env: dict[str, str] | None = None, input: bytes | None = None, timeout: float = 180
) -> Result:
    full_env = {k: v for k, v in os.environ.items() if k != "IMAGED_SOCKET"}
    full_env.update(env or {})
    r = subprocess.run(
        [*IMAGECTL, *args],
        input=input,
        capture_output=True,
        env=full_env,
        timeout=timeout,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    return Result(r.returncode, r.stdout.decode(), r.stderr.decode())


def run_pty(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> Result:
    """imagectl with stdout and stdin on a pseudo-terminal of 40x160 (stderr apart, on a file)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    full_env = {k: v for k, v in os.environ.items() if k not in ("IMAGED_SOCKET", "COLUMNS", "LINES")}
    full_env.update({"TERM": "xterm-256color", **(env or {})})
    errfile = tempfile.TemporaryFile()
    proc = subprocess.Popen([*IMAGECTL, *args], stdin=slave, stdout=slave, stderr=errfile, env=full_env)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            raise AssertionError(f"imagectl {args} did not finish in {timeout}s")
        rc = proc.wait(timeout=30)
    finally:
        os.close(master)
    errfile.seek(0)
    err = errfile.read().decode(errors="replace")
    errfile.close()
    return Result(rc, b"".join(chunks).decode(errors="replace"), err)


class Ctl:
    """imagectl bound to one daemon's socket (through --socket)."""

    def __init__(self, socket: str) -> None:
        self.socket = socket

    def __call__(self, *args: str, **kw: object) -> Result:
        return run_imagectl("--socket", self.socket, *args, **kw)  # type: ignore[arg-type]

    def pty(self, *args: str, **kw: object) -> Result:
        return run_pty("--socket", self.socket, *args, **kw)  # type: ignore[arg-type]


@pytest.fixture
def ctl(daemon: DaemonProcess) -> Ctl:
    return Ctl(daemon.socket)


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    reg = Registry()
    yield reg
    reg.close()
