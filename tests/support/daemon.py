"""Run the real `imaged` daemon as a child process against a test containerd."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, ClassVar

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imaged.pb.common import common_pb2
from imaged.pb.machine import image_pb2_grpc

CRI = common_pb2.ContainerdInstance(driver=common_pb2.CRI, namespace=common_pb2.NS_CRI)
SYSTEM = common_pb2.ContainerdInstance(driver=common_pb2.CONTAINERD, namespace=common_pb2.NS_SYSTEM)


def run_imaged(*args: str) -> subprocess.CompletedProcess[str]:
    """`imaged ARGS` to its end (`--check-config FILE`, a `--config` refused at start), output kept."""
    return subprocess.run(
        [sys.executable, "-m", "imaged.daemon.main", *args], capture_output=True, text=True, timeout=60
    )


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            deep_merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


class DaemonProcess:
    # Every instance of this session, so a session finalizer can stop what a test left running.
    instances: ClassVar[list[DaemonProcess]] = []

    def __init__(
        self, containerd_socket: str, config: dict[str, Any] | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="imd-", dir="/tmp"))
        self.socket = str(self.dir / "imaged.sock")
        self.config_path = self.dir / "config.yaml"
        self.log_path = self.dir / "imaged.log"
        cfg: dict[str, Any] = {
            "listen": {"admin": {"path": self.socket}},
            "containerd": {"system_socket": containerd_socket, "cri_socket": containerd_socket},
            # Never the machine's /var/lib/imaged: a saved trust root is this daemon's alone.
            "state": {"dir": str(self.dir / "state")},
        }
        self.config = deep_merge(cfg, config or {})
        self.config_path.write_text(yaml.safe_dump(self.config))
        # A proxy of the machine running the tests must not reach the daemon unless a test says so.
        inherited = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        self.env = {**inherited, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self._channel: grpc.Channel | None = None
        DaemonProcess.instances.append(self)

    def start(self, timeout: float = 30.0, wait_serving: bool = True) -> None:
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imaged.daemon.main", "--config", str(self.config_path)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"imaged exited {self.proc.returncode}: {self.logs()[-3000:]}")
            if os.path.exists(self.socket) and (not wait_serving or self.health() == "SERVING"):
                return
            time.sleep(0.05)
        # Never leave a half-started daemon behind: the caller's `finally` may not cover start().
        self.stop(timeout=10)
        raise RuntimeError(f"imaged did not become ready: {self.logs()[-3000:]}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(
                f"unix:{self.socket}", options=[("grpc.max_receive_message_length", 64 << 20)]
            )
        return self._channel

    @property
    def images(self) -> image_pb2_grpc.ImageServiceStub:
        return image_pb2_grpc.ImageServiceStub(self.channel)

    def health(self, service: str = "") -> str:
        try:
            resp = health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        except grpc.RpcError as e:
            return f"error: {e.code().name}"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)
