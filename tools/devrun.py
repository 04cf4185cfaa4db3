"""`make run`: the daemon on a working default, with a private containerd if none answers.

Uses .run/ for everything (`IMAGED_RUN_DIR` names another directory): .run/imaged.yaml (written
once, yours to edit), .run/imaged.sock, and .run/containerd/ when it starts containerd itself. That
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


def start_containerd() -> tuple[str, subprocess.Popen[bytes]]:
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
    log = open(d / "containerd.log", "ab")
    proc = subprocess.Popen(
        ["containerd", "--config", str(d / "config.toml")],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    for _ in range(300):
        if answers(sock):
            print(f"devrun: started a private containerd on {sock} (log: {d}/containerd.log)")
            return sock, proc
        if proc.poll() is not None:
            sys.exit(f"devrun: containerd exited; see {d}/containerd.log")
        time.sleep(0.1)
    proc.kill()
    sys.exit("devrun: containerd did not start in 30 s")


def main() -> None:
    RUN.mkdir(exist_ok=True)
    config = pathlib.Path(os.environ.get("CONFIG", RUN / "imaged.yaml"))
    proc = None
    sock = SYSTEM_SOCKET
    if not answers(sock):
        private = str(RUN / "containerd" / "containerd.sock")
        if answers(private):
            sock = private
        else:
            sock, proc = start_containerd()
    if not config.exists():
        config.write_text(
            f"""# Development configuration written by `make run`; edit freely.
listen:
  admin:
    path: {RUN}/imaged.sock
containerd:
  system_socket: {sock}
  cri_socket: {sock}
log:
  level: info
"""
        )
        print(f"devrun: wrote {config}")
    print(
        f"devrun: imaged on {RUN}/imaged.sock — try: IMAGED_SOCKET={RUN}/imaged.sock .venv/bin/imagectl list"
    )
    daemon = subprocess.Popen([sys.executable, "-m", "imaged.daemon.main", "--config", str(config)])

    def forward(signum: int, frame: object) -> None:
        # SIGTERM is how a job started with `&` is stopped (it ignores Ctrl-C): the daemon shuts
        # down, and then the containerd started here, rather than both being left behind.
        daemon.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGHUP, forward)
    try:
        daemon.wait()
    except KeyboardInterrupt:
        daemon.send_signal(signal.SIGINT)
        daemon.wait()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=20)
    sys.exit(daemon.returncode)


if __name__ == "__main__":
    main()
