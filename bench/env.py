"""The real components a bench run drives: a private containerd, a loopback registry, the daemon.

Also the "cold" guarantee: between runs every image record is removed with a synchronous GC, and
the content store, snapshotter, ingests and leases are checked to hold nothing of the image
before the next run starts (what remains is removed explicitly, and a run that cannot be made
cold stops the bench rather than measure a warm one).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import platform
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.support.containerd import PrivateContainerd
from tests.support.daemon import DaemonProcess
from tests.support.registry import Registry, free_port

SYSTEM_NS = "system"
CRI_NS = "k8s.io"


class NotCold(RuntimeError):
    """Something of an earlier run is still in containerd: measuring now would be a warm run."""


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


log = _log


@dataclass
class Versions:
    containerd: str
    imaged: str
    python: str
    cores: int
    kernel: str
    machine: str
    load: str

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("cores", str(self.cores)),
            ("containerd", self.containerd),
            ("imaged", self.imaged),
            ("python", self.python),
            ("kernel", self.kernel),
            ("cpu", self.machine),
            ("load average at start", self.load),
        ]


def versions() -> Versions:
    from importlib.metadata import version

    cd = subprocess.run(["containerd", "--version"], capture_output=True, text=True).stdout.strip()
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        imaged_v = version("imaged")
    except Exception:  # not installed as a distribution: the source tree's own
        import imaged

        imaged_v = getattr(imaged, "__version__", "unknown")
    repo = pathlib.Path(__file__).resolve().parent.parent
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=repo)
    if rev.returncode == 0:
        imaged_v += f" (git {rev.stdout.strip()})"
    return Versions(
        containerd=" ".join(cd.split()[2:3]) or "unknown",
        imaged=imaged_v,
        python=platform.python_version(),
        cores=os.cpu_count() or 0,
        kernel=platform.release(),
        machine=cpu or platform.machine(),
        load=" ".join(f"{x:.2f}" for x in os.getloadavg()),
    )


@dataclass
class Bench:
    """Everything started for one bench run; `close()` stops all of it."""

    containerd: PrivateContainerd
    registry: Registry
    daemon: DaemonProcess
    metrics_port: int
    verify_rule_repo: str  # the rule pattern's prefix, "<host>/bench"
    public_pem: str
    extra_daemons: list[DaemonProcess] = field(default_factory=list)
    _keep_snapshots: set[str] = field(default_factory=set)

    @classmethod
    def start(cls) -> Bench:
        from tests.support.sigstore import PrivateSigstore

        cd = PrivateContainerd()
        cd.start()
        reg: Registry | None = None
        try:
            reg = Registry()
            key = PrivateSigstore(seed=b"imaged-bench").static_key()
            pem = key.public_pem.decode()
            port = free_port()
            daemon = DaemonProcess(cd.socket, daemon_config(reg.host, pem, port))
            daemon.start()
        except BaseException:
            if reg is not None:
                reg.close()
            cd.destroy()
            raise
        return cls(cd, reg, daemon, port, f"{reg.host}/bench", pem)

    def close(self) -> None:
        for d in [*self.extra_daemons, self.daemon]:
            with contextlib.suppress(Exception):
                d.stop()
        with contextlib.suppress(Exception):
            self.registry.close()
        self.containerd.destroy()

    @property
    def daemon_pid(self) -> int:
        assert self.daemon.proc is not None
        return self.daemon.proc.pid

    @property
    def containerd_pid(self) -> int:
        assert self.containerd.proc is not None
        return self.containerd.proc.pid

    def pids(self) -> dict[str, int]:
        return {"imaged": self.daemon_pid, "containerd": self.containerd_pid}

    def ctr_argv(self, namespace: str, *args: str) -> list[str]:
        return ["ctr", "-a", self.containerd.socket, "-n", namespace, *args]

    def ctr(self, namespace: str, *args: str, check: bool = True, timeout: float = 300) -> str:
        r = self.containerd.ctr(*args, namespace=namespace, check=check, timeout=timeout)
        return str(r.stdout)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return str(resp.read().decode())

    # -- cold runs ------------------------------------------------------------------------------

    def namespaces(self) -> list[str]:
        return [n for n in self.ctr("default", "namespaces", "ls", "-q").split() if n]

    def gc(self, namespace: str) -> None:
        """A synchronous garbage collection (containerd runs one when a lease is deleted with sync)."""
        lease = f"bench-gc-{os.getpid()}-{time.monotonic_ns()}"
        self.ctr(namespace, "leases", "create", "--id", lease)
        self.ctr(namespace, "leases", "rm", "--sync", lease)

    def remove_images(self, namespace: str, names: Iterable[str] | None = None) -> None:
        """Remove records (all of the namespace by default) with synchronous GC."""
        todo = list(names) if names is not None else self.ctr(namespace, "images", "ls", "-q").split()
        for i in range(0, len(todo), 200):
            self.ctr(namespace, "images", "rm", "--sync", *todo[i : i + 200], check=False)

    def leftovers(self, blobs: set[str]) -> dict[str, Any]:
        """What of `blobs` (and any snapshot, ingest, or bench-unrelated lease) containerd still has."""
        found: dict[str, Any] = {}
        for ns in self.namespaces():
            content = set(self.ctr(ns, "content", "ls", "-q").split()) & blobs
            snaps = [
                line.split()[0] for line in self.ctr(ns, "snapshots", "ls").splitlines()[1:] if line.strip()
            ]
            active = [
                line.split()[0] for line in self.ctr(ns, "content", "active").splitlines()[1:] if line.strip()
            ]
            leases = [
                line.split()[0] for line in self.ctr(ns, "leases", "ls").splitlines()[1:] if line.strip()
            ]
            if ns == CRI_NS:
                # The List scenario's one small image may live in k8s.io; its snapshots are not ours.
                snaps = [s for s in snaps if s not in self._keep_snapshots]
            if content or snaps or active or leases:
                found[ns] = {
                    "content": sorted(content),
                    "snapshots": snaps,
                    "active": active,
                    "leases": leases,
                }
        return found

    def keep_snapshots(self, namespace: str) -> None:
        """Snapshots existing now in `namespace` are expected to stay (not part of a measured image)."""
        self._keep_snapshots = {
            line.split()[0]
            for line in self.ctr(namespace, "snapshots", "ls").splitlines()[1:]
            if line.strip()
        }

    def make_cold(self, namespace: str, blobs: set[str]) -> None:
        """Remove every image in `namespace` and check nothing of `blobs` stays anywhere."""
        self.remove_images(namespace)
        deadline = time.monotonic() + 10
        left = self.leftovers(blobs)
        while left and time.monotonic() < deadline:
            for ns, what in left.items():
                for lease in what["leases"]:
                    self.ctr(ns, "leases", "rm", "--sync", lease, check=False)
                for ref in what["active"]:
                    # An ingest left by a cancelled write would be resumed: a warm run.
                    asyncio.run(_abort(self.containerd.socket, ns, ref))
                if what["content"] or what["snapshots"]:
                    self.gc(ns)
            time.sleep(0.2)
            left = self.leftovers(blobs)
            if left and time.monotonic() > deadline - 5:
                # GC did not take them (something still references them): delete explicitly.
                for ns, what in left.items():
                    if what["content"]:
                        self.ctr(ns, "content", "rm", *what["content"], check=False)
                    for snap in reversed(what["snapshots"]):
                        self.ctr(ns, "snapshots", "rm", snap, check=False)
                left = self.leftovers(blobs)
        if left:
            raise NotCold(f"containerd still holds parts of the image after cleanup: {left}")


async def _abort(socket: str, namespace: str, ref: str) -> None:
    from imaged.containerd import Containerd
    from imaged.containerd.content import ContentStore

    cd = Containerd(socket)
    try:
        await ContentStore(cd.ns(namespace)).abort(ref)
    finally:
        await cd.close()


def daemon_config(registry_host: str, public_pem: str, metrics_port: int, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "verification": {
            "rules": [{"image": f"{registry_host}/bench/*", "publicKey": {"certificate": public_pem}}],
        },
    }
    cfg.update(extra)
    return cfg


_BUCKET = re.compile(r'^imaged_request_seconds_bucket\{le="([^"]+)",method="([^"]+)"\} ([0-9.e+]+)$')


def histogram(metrics_text: str, method: str) -> dict[float, float]:
    """Cumulative bucket counts {upper bound: count} of `imaged_request_seconds` for one method."""
    out: dict[float, float] = {}
    for line in metrics_text.splitlines():
        m = _BUCKET.match(line)
        if m is None:
            # prometheus_client orders labels alphabetically; accept either order.
            m2 = re.match(
                r'^imaged_request_seconds_bucket\{method="([^"]+)",le="([^"]+)"\} ([0-9.e+]+)$', line
            )
            if m2 is None:
                continue
            meth, le, val = m2.group(1), m2.group(2), m2.group(3)
        else:
            le, meth, val = m.group(1), m.group(2), m.group(3)
        if meth == method:
            out[float("inf") if le == "+Inf" else float(le)] = float(val)
    return out
