"""A private containerd for tests: own root, state and socket under a short /tmp path."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time
from typing import ClassVar


class PrivateContainerd:
    """Starts `containerd` with its own config; `stop()`/`start()` simulate an outage."""

    instances: ClassVar[list[PrivateContainerd]] = []

    def __init__(self, base: str | None = None) -> None:
        PrivateContainerd.instances.append(self)
        self.dir = pathlib.Path(base or tempfile.mkdtemp(prefix="icd-", dir="/tmp"))
        self.socket = str(self.dir / "c.sock")
        self.config = self.dir / "config.toml"
        self.log = self.dir / "containerd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.config.write_text(
            f"""version = 2
root = "{self.dir}/root"
state = "{self.dir}/state"
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[debug]
  address = "{self.dir}/debug.sock"
[plugins."io.containerd.grpc.v1.cri"]
  disable_apparmor = true
  disable_cgroup = false
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{self.dir}/cni-bin"
  conf_dir = "{self.dir}/cni-conf"
"""
        )

    def start(self, timeout: float = 30.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            ["containerd", "--config", str(self.config)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited: {self.log.read_text()[-2000:]}")
            if self.ctr_ok():
                return
            time.sleep(0.1)
        raise RuntimeError(f"containerd did not start: {self.log.read_text()[-2000:]}")

    def ctr_ok(self) -> bool:
        r = subprocess.run(["ctr", "-a", self.socket, "version"], capture_output=True, timeout=10)
        return r.returncode == 0

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def destroy(self) -> None:
        self.stop()
        # Snapshots may still be mounted (overlay) if a test left a container behind.
        subprocess.run(["umount", "-R", "-l", str(self.dir / "root")], capture_output=True)
        subprocess.run(
            ["sh", "-c", f"grep -o ' {self.dir}[^ ]*' /proc/mounts | xargs -r umount -l"], capture_output=True
        )
        shutil.rmtree(self.dir, ignore_errors=True)

    def ctr(
        self,
        *args: str,
        namespace: str = "default",
        check: bool = True,
        input: bytes | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            ["ctr", "-a", self.socket, "-n", namespace, *args],
            capture_output=True,
            text=input is None,
            input=input,
            timeout=timeout,
        )
        if check and r.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed: {r.stderr}")
        return r  # type: ignore[return-value]
