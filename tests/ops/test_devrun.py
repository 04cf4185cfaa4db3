"""`make run` (tools/devrun.py): the daemon on a private containerd, and both stopped with it."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

from tests.conftest import REPO


def _wait(what: str, ok: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ok():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _running(pattern: str) -> list[int]:
    r = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


def test_devrun_stops_daemon_and_its_containerd_on_sigterm() -> None:
    # A short directory: containerd's ttrpc socket path must fit in a sockaddr_un.
    run = pathlib.Path(subprocess.check_output(["mktemp", "-d", "/tmp/idev-XXXX"], text=True).strip())
    log = open(run / "devrun.log", "wb")
    env = {**os.environ, "IMAGED_RUN_DIR": str(run)}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tools" / "devrun.py")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        sock = run / "imaged.sock"
        _wait("the daemon's socket", sock.exists)
        private = run / "containerd" / "config.toml"
        # No containerd answered on the system socket (as on CI): devrun started its own.
        containerd = _running(f"containerd --config {private}") if private.exists() else []
        assert containerd or not private.exists()
        daemon = _running(f"imaged.daemon.main --config {run}/imaged.yaml")
        assert len(daemon) == 1
        # SIGHUP reaches the daemon: it re-reads its configuration.
        proc.send_signal(signal.SIGHUP)
        _wait("the reload", lambda: b"configuration reloaded" in (run / "devrun.log").read_bytes(), 30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not sock.exists()
        assert _running(f"imaged.daemon.main --config {run}/imaged.yaml") == []
        for pid in containerd:  # stopped by devrun, not left behind
            assert not pathlib.Path(f"/proc/{pid}").exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        for pid in _running(f"--config {run}/"):
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", str(run)], check=False)
