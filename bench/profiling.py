"""py-spy against the daemon process while one extra (unmeasured) run happens, summarized.

py-spy samples the daemon's Python stacks (CPU only by default, so idle waiting on containerd
or the registry does not count). The summary gives, per function, the share of samples in which
it is on the stack (inclusive) and at the top (self), which is where the daemon's CPU goes.
"""

from __future__ import annotations

import collections
import pathlib
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from bench.env import log

RATE = 200
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass
class Profile:
    label: str
    raw_path: pathlib.Path
    samples: int = 0
    wall: float = 0.0
    inclusive: list[tuple[str, float]] = field(default_factory=list)
    self_time: list[tuple[str, float]] = field(default_factory=list)
    by_file: list[tuple[str, float]] = field(default_factory=list)
    error: str = ""
    idle: int = 0
    other: int = 0
    other_top: list[tuple[str, int]] = field(default_factory=list)
    expected: int = 0

    def lines(self, top: int = 12) -> list[str]:
        if self.error:
            return [f"profile of {self.label}: {self.error}"]
        share = f", busy {100 * self.samples / self.expected:.0f}% of the run" if self.expected else ""
        out = [
            f"py-spy over {self.wall:.1f} s (`profiles/{self.raw_path.name}`): {self.samples} samples of the "
            f"event loop at work{share}; {self.idle} idle samples (waiting); {self.other} in other threads"
            + (" (" + ", ".join(f"`{k}` {v}" for k, v in self.other_top) + ")" if self.other_top else "")
            + ". Percentages are of the event loop's busy samples. `Handle._run` at the top is grpc's "
            "Cython code run as loop callbacks (py-spy sees no deeper without --native).",
            "",
        ]
        out.append("| on stack (inclusive) | % | | at top (self) | % |")
        out.append("|---|---:|---|---|---:|")
        for i in range(top):
            a = self.inclusive[i] if i < len(self.inclusive) else ("", 0.0)
            b = self.self_time[i] if i < len(self.self_time) else ("", 0.0)
            out.append(
                f"| `{a[0]}` | {a[1]:.0f} | | `{b[0]}` | {b[1]:.0f} |" if a[0] or b[0] else "| | | | | |"
            )
        out.append("")
        out.append("By source file (self): " + ", ".join(f"`{f}` {p:.0f}%" for f, p in self.by_file[:10]))
        return out


def _short(file: str) -> str:
    for marker in ("/site-packages/", "/src/", "/lib/python3.11/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def _name(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip(), ""
    file = _short(m.group("file"))
    return f"{m.group('func')} ({file})", file


# Where a thread waits: the event loop's epoll, the executor's queue, locks, the metrics server.
_IDLE = {
    ("select", "selectors.py"),
    ("_worker", "concurrent/futures/thread.py"),
    ("wait", "threading.py"),
    ("get", "queue.py"),
}


def _is_idle(top: str) -> bool:
    func, _, rest = top.partition(" (")
    return (func.rsplit(".", 1)[-1], rest.rstrip(")")) in _IDLE


def summarize(label: str, raw: pathlib.Path, wall: float, rate: int) -> Profile:
    """Parse py-spy's raw (collapsed stack) output.

    Stacks of the event loop thread (the one running `imaged.daemon.main`) are what the tables
    show; a stack whose top is the loop's `select` is the loop waiting (idle), not work. Other
    threads are the grpc poller (C code under `Thread.run`), the metrics HTTP server and the
    default executor (used by `asyncio.to_thread`); they are counted apart.
    """
    prof = Profile(label, raw, wall=wall)
    incl: collections.Counter[str] = collections.Counter()
    selfc: collections.Counter[str] = collections.Counter()
    files: collections.Counter[str] = collections.Counter()
    other: collections.Counter[str] = collections.Counter()
    busy = idle = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        n = int(count_s)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        names = [_name(f)[0] for f in frames]
        top_name, top_file = _name(frames[-1])
        if _is_idle(top_name):
            idle += n
            continue
        if not any("imaged/daemon/main.py" in nm or "run_forever" in nm for nm in names):
            other[top_name] += n
            continue
        busy += n
        for name in set(names):
            incl[name] += n
        selfc[top_name] += n
        files[top_file or top_name] += n
    prof.samples = busy
    prof.idle = idle
    prof.other = sum(other.values())
    prof.other_top = [(k, v) for k, v in other.most_common(4)]
    prof.expected = int(wall * rate)
    if busy == 0:
        prof.error = "no busy samples of the event loop (the daemon was idle or py-spy could not attach)"
        return prof
    skip = (
        "_run (asyncio/events.py)",
        "run_forever",
        "_run_once",
        "<module>",
        "run (asyncio/runners.py)",
        "main (imaged/daemon/main.py)",
        "run_until_complete",
        "_run_module_as_main",
        "_run_code",
        "Runner.run",
    )
    prof.inclusive = [(k, 100 * v / busy) for k, v in incl.most_common(60) if not any(x in k for x in skip)][
        :20
    ]
    prof.self_time = [(k, 100 * v / busy) for k, v in selfc.most_common(20)]
    prof.by_file = [(k, 100 * v / busy) for k, v in files.most_common(15)]
    return prof


@contextmanager
def pyspy(pid: int, out: pathlib.Path, *, rate: int = 0, idle: bool = True) -> Iterator[None]:
    """Record `pid` while the body runs (stopped with SIGINT, which makes py-spy write its file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = ["py-spy", "record", "-p", str(pid), "-r", str(rate or RATE), "-f", "raw", "-o", str(out)]
    if idle:
        argv.append("--idle")
    import shutil
    import sys

    exe = shutil.which("py-spy") or str(pathlib.Path(sys.executable).parent / "py-spy")
    argv[0] = exe
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.7)  # attach
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if proc.returncode not in (0, -2, 130) and not out.exists():
            log(f"py-spy failed ({proc.returncode}): {err.decode(errors='replace')[-500:]}")


def profile_once(label: str, pid: int, out_dir: pathlib.Path, body: Callable[[], object]) -> Profile:
    raw = out_dir / f"{label}.pyspy.txt"
    t0 = time.perf_counter()
    try:
        with pyspy(pid, raw):
            t0 = time.perf_counter()
            body()
            wall = time.perf_counter() - t0
    except Exception as e:
        return Profile(label, raw, error=f"run under py-spy failed: {e}")
    if not raw.exists():
        return Profile(label, raw, error="py-spy wrote no output")
    return summarize(label, raw, wall, RATE)
