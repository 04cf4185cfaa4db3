"""A private containerd for tests: own root, state and socket under a short /tmp path.

`PrivateContainerd()` is Debian's containerd 1.6 (config version 2, `ctr` on PATH);
`PrivateContainerd(bin_dir=...)` is a containerd 2.x built by tools/peers.py: config version 3, its own
`ctr`, and `bin_dir` first on the PATH given to that containerd only, where it finds
`containerd-shim-runc-v2` (Debian's `runc` serves as the runtime). `extra_config` is appended to the
config file; `env` is added to the containerd process's environment (the bindir verifiers it runs
inherit it).
"""

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

    def __init__(
        self,
        base: str | None = None,
        *,
        bin_dir: pathlib.Path | None = None,
        extra_config: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        PrivateContainerd.instances.append(self)
        self.dir = pathlib.Path(base or tempfile.mkdtemp(prefix="icd-", dir="/tmp"))
        self.socket = str(self.dir / "c.sock")
        self.config = self.dir / "config.toml"
        self.log = self.dir / "containerd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.bin_dir = bin_dir
        self.binary = str(bin_dir / "containerd") if bin_dir else "containerd"
        self.ctr_binary = str(bin_dir / "ctr") if bin_dir else "ctr"
        self.env = dict(os.environ)
        if bin_dir is not None:
            self.env["PATH"] = f"{bin_dir}:{self.env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        self.env.update(env or {})
        self.major = 2 if bin_dir else 1
        self.config.write_text((self._config_v3() if bin_dir else self._config_v2()) + extra_config)

    def _config_v2(self) -> str:
        return f"""version = 2
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

    def _config_v3(self) -> str:
        # NRI is off: its socket is one machine-wide path, and these containerds are private.
        return f"""version = 3
root = "{self.dir}/root"
state = "{self.dir}/state"
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[debug]
  address = "{self.dir}/debug.sock"
[plugins.'io.containerd.nri.v1.nri']
  disable = true
[plugins.'io.containerd.cri.v1.runtime']
  disable_apparmor = true
[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ["{self.dir}/cni-bin"]
  conf_dir = "{self.dir}/cni-conf"
"""

    def start(self, timeout: float = 30.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [self.binary, "--config", str(self.config)],
            env=self.env,
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
        r = subprocess.run([self.ctr_binary, "-a", self.socket, "version"], capture_output=True, timeout=10)
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
            [self.ctr_binary, "-a", self.socket, "-n", namespace, *args],
            capture_output=True,
            text=input is None,
            input=input,
            timeout=timeout,
        )
        if check and r.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed: {r.stderr}")
        return r  # type: ignore[return-value]


def ctr_binary(socket: str) -> str:
    """The `ctr` matching the containerd serving `socket` (Debian's for one this suite did not start)."""
    for cd in PrivateContainerd.instances:
        if cd.socket == socket:
            return cd.ctr_binary
    return "ctr"
