"""A real olareg (built by tools/peers.py) on 127.0.0.1: a registry that serves the OCI referrers API.

    with Olareg() as reg:
        reg.host, reg.url                         # "127.0.0.1:PORT", "http://127.0.0.1:PORT"
        push_test_image(reg, "test/app", "v1")    # tests.support.archives.push works as with Registry
        reg.requests()                            # every request served so far, from olareg's own log

Debian's docker-registry 2.8 and distribution v3 answer `GET /v2/<name>/referrers/<digest>` with 404,
so a client such as cosign falls back to the `sha256-<hex>` tag there. olareg serves the API (on by
default, `--api-referrer`), and answers a manifest PUT that has a `subject` with the `OCI-Subject`
header, which is how cosign knows not to write the tag. Plain HTTP, storage in a temporary directory,
no authentication; `--verbosity trace` makes olareg log every request it serves (method, URL, status,
request headers), which is what `requests()` reads.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from types import TracebackType

from tests.support import peers
from tests.support.registry import free_port, wait_port

# One slog text line per request: `msg=ServeHTTP duration=… method=GET url=/v2/… status=200
# req-headers="map[Accept:[…] User-Agent:[imaged/…]]" resp-headers="map[…]"`.
_LINE = re.compile(r'msg=ServeHTTP .*?method=(\S+) url=("(?:[^"\\]|\\.)*"|\S+) status=(\d{3}) (.*)$')
_USER_AGENT = re.compile(r"User-Agent:\[([^\]]*)\]")
_RESP_HEADERS = re.compile(r'resp-headers="(.*)"$')


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # with the query, as olareg logged it
    status: int
    user_agent: str
    response_headers: str  # olareg's rendering of the response's headers (Go's map format)

    @property
    def bare_path(self) -> str:
        return self.path.split("?", 1)[0]


class Olareg:
    """`olareg serve` on 127.0.0.1 with a free port and its own temporary directory."""

    def __init__(self, *, start: bool = True) -> None:
        self.binary = peers.program("olareg", "olareg")
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="iola-", dir="/tmp"))
        self.port = free_port()
        self.log_path = self.dir / "olareg.log"
        self.proc: subprocess.Popen[bytes] | None = None
        if start:
            self.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self, timeout: float = 20.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        for attempt in range(3):
            argv = [
                self.binary,
                "serve",
                "--addr",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.dir / "data"),
                "--verbosity",
                "trace",
            ]
            with open(self.log_path, "ab") as logf:
                self.proc = subprocess.Popen(
                    argv,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if wait_port("127.0.0.1", self.port, 0.2):
                    return
            self._kill()
            log = self.log_path.read_text(errors="replace")[-2000:]
            if "address already in use" in log and attempt < 2:
                self.port = free_port()
                continue
            raise RuntimeError(f"olareg did not start on {self.host}:\n{log}")

    def _kill(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def close(self) -> None:
        self._kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Olareg:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def requests(self) -> list[Request]:
        """Every request olareg logged so far, in order."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        out: list[Request] = []
        for line in lines:
            m = _LINE.search(line)
            if m is None:
                continue
            path = m.group(2)
            if path.startswith('"'):
                path = path[1:-1]
            ua = _USER_AGENT.search(m.group(4))
            resp = _RESP_HEADERS.search(m.group(4))
            out.append(
                Request(
                    m.group(1),
                    path,
                    int(m.group(3)),
                    ua.group(1) if ua else "",
                    resp.group(1) if resp else "",
                )
            )
        return out
