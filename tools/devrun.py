"""`make run`: the daemon on a working default, with a private containerd if none answers.

Uses .run/ for everything (`IMAGED_RUN_DIR` names another directory): .run/imaged.yaml (written
once, yours to edit), .run/imaged.sock, .run/state/ (the daemon's state: the saved trust root),
and .run/containerd/ when it starts containerd itself. That
containerd is stopped when the daemon exits. Ctrl-C or SIGTERM stops both; SIGHUP makes the daemon
re-read its configuration.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
RUN = pathlib.Path(os.environ.get("IMAGED_RUN_DIR") or ROOT / ".run").resolve()
SYSTEM_SOCKET = "/run/containerd/containerd.sock"


def answers(sock: str) -> bool:
    if not os.path.exists(sock) or not shutil.which("ctr"):
        return False
    r = subprocess.run(["ctr", "-a", sock, "version"], capture_output=True, timeout=10)
    return r.returncode == 0


def start_containerd(started: list[subprocess.Popen[bytes]]) -> str:
    """A private containerd under .run/containerd/, added to `started` as soon as it exists."""
    d = RUN / "containerd"
    d.mkdir(parents=True, exist_ok=True)
    sock = str(d / "containerd.sock")
    (d / "config.toml").write_text(
        f"""version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  disable_apparmor = true
"""
    )
    with open(d / "containerd.log", "ab") as log:
        proc = subprocess.Popen(
            ["containerd", "--config", str(d / "config.toml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started.append(proc)
    for _ in range(300):
        if answers(sock):
            print(f"devrun: started a private containerd on {sock} (log: {d}/containerd.log)")
            return sock
        if proc.poll() is not None:
            sys.exit(f"devrun: containerd exited; see {d}/containerd.log")
        time.sleep(0.1)
    sys.exit("devrun: containerd did not start in 30 s")


def run(started: list[subprocess.Popen[bytes]]) -> int:
    """Start what is missing, then the daemon; its exit status."""
    RUN.mkdir(parents=True, exist_ok=True)
    config = pathlib.Path(os.environ.get("CONFIG", RUN / "imaged.yaml"))
    sock = SYSTEM_SOCKET
    if not answers(sock):
        private = str(RUN / "containerd" / "containerd.sock")
        sock = private if answers(private) else start_containerd(started)
    if not config.exists():
        config.write_text(
            f"""# Development configuration written by `make run`; edit freely.
listen:
  admin:
    path: {RUN}/imaged.sock
containerd:
  system_socket: {sock}
  cri_socket: {sock}
state:
  dir: {RUN}/state
log:
  level: info
"""
        )
        print(f"devrun: wrote {config}")
    print(
        f"devrun: imaged on {RUN}/imaged.sock — try: IMAGED_SOCKET={RUN}/imaged.sock .venv/bin/imagectl list"
    )
    daemon = subprocess.Popen([sys.executable, "-m", "imaged.daemon.main", "--config", str(config)])
    started.insert(0, daemon)  # stopped first (gone already, normally) however devrun leaves

    def forward(signum: int, frame: object) -> None:
        # SIGTERM is how a job started with `&` is stopped (it ignores Ctrl-C): the daemon shuts
        # down, and then the containerd started here, rather than both being left behind.
        daemon.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGHUP, forward)
    try:
        return daemon.wait()
    except KeyboardInterrupt:
        daemon.send_signal(signal.SIGINT)
        return daemon.wait()


def main() -> None:
    def stop_early(signum: int, frame: object) -> None:
        # Before the daemon runs: leave through the `finally` below, which stops a containerd
        # started here.
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop_early)
    signal.signal(signal.SIGHUP, stop_early)
    started: list[subprocess.Popen[bytes]] = []
    try:
        code = run(started)
    except KeyboardInterrupt:
        code = 130
    finally:
        for proc in started:  # the daemon (already gone, normally), then containerd
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    sys.exit(code)


if __name__ == "__main__":
    main()
