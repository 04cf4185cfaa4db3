"""containerd's durable writes during one run of a tool, counted with strace.

For images of many small layers containerd's metadata transactions, not bytes, set the pace: it
commits them one at a time and syncs each. A count, unlike a time, does not move with the host's
speed, so it says whether a tool asks containerd for more work than the floor does. Bolt syncs a
commit twice (its pages, then its meta page), so commits = fdatasync calls / 2.
"""

from __future__ import annotations

import collections
import pathlib
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

METADATA = "io.containerd.metadata.v1.bolt/meta.db"
SNAPSHOTTER = "io.containerd.snapshotter.v1.overlayfs/metadata.db"
_CALL = re.compile(r"\b(fsync|fdatasync)\(\d+<([^>]*)>")


@dataclass(frozen=True)
class Syncs:
    metadata: int  # commits of containerd's metadata database (content, snapshots, images, leases)
    snapshotter: int  # commits of the overlayfs snapshotter's own database
    blobs: int  # content files synced at their commit

    def __str__(self) -> str:
        return f"{self.metadata} / {self.snapshotter} / {self.blobs}"


def available() -> bool:
    return shutil.which("strace") is not None


def _traced(pid: int) -> bool:
    """Whether every thread of `pid` has a tracer (strace attaches to them one by one)."""
    tasks = list(pathlib.Path(f"/proc/{pid}/task").iterdir())
    for task in tasks:
        try:
            status = (task / "status").read_text()
        except OSError:
            continue  # the thread ended
        if re.search(r"^TracerPid:\s+0$", status, re.M):
            return False
    return bool(tasks)


def count(pid: int, run: Callable[[], object]) -> Syncs:
    """Trace containerd (`pid`) while `run()` runs; the trace slows syscalls, so time it elsewhere."""
    with tempfile.TemporaryDirectory(prefix="bench-strace-") as tmp:
        out = pathlib.Path(tmp) / "trace"
        st = subprocess.Popen(
            ["strace", "-f", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-o", str(out), "-p", str(pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while not _traced(pid):
                if st.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("strace could not attach to containerd")
                time.sleep(0.05)
            run()
            time.sleep(0.2)  # what the tool's last call set going (a lease's GC) is part of its cost
        finally:
            st.send_signal(signal.SIGINT)
            st.wait(timeout=30)
        calls: collections.Counter[str] = collections.Counter()
        for line in out.read_text().splitlines():
            m = _CALL.search(line)
            if m is None:
                continue
            call, path = m.groups()
            if call == "fdatasync" and path.endswith(METADATA):
                calls["metadata"] += 1
            elif call == "fdatasync" and path.endswith(SNAPSHOTTER):
                calls["snapshotter"] += 1
            elif call == "fsync" and "/io.containerd.content.v1.content/" in path:
                calls["blobs"] += 1
    return Syncs(calls["metadata"] // 2, calls["snapshotter"] // 2, calls["blobs"])
