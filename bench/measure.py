"""Samples, statistics and per-process CPU accounting shared by the scenarios."""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation): a value that was really observed."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


@dataclass
class Series:
    """Repeated measurements of one tool in one case (seconds, unless `unit` says otherwise)."""

    tool: str
    samples: list[float] = field(default_factory=list)
    unit: str = "s"
    available: bool = True
    note: str = ""
    # Mean CPU seconds per run, by process ("imaged", "containerd", "ctr", "bench").
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def min(self) -> float:
        return min(self.samples) if self.samples else float("nan")

    @property
    def max(self) -> float:
        return max(self.samples) if self.samples else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "unit": self.unit,
            "available": self.available,
            "note": self.note,
            "samples": self.samples,
            "median": self.median if self.samples else None,
            "cpu": self.cpu,
        }


@dataclass
class Case:
    """One comparison: imaged vs a reference tool (ctr), with containerd's floor if it has one."""

    scenario: str
    name: str
    series: dict[str, Series] = field(default_factory=dict)
    # Target for median(imaged) / median(reference); None when the issue sets none.
    target: float | None = None
    reference: str = "ctr"
    subject: str = "imaged"
    notes: list[str] = field(default_factory=list)
    # Free-form extra rows for the report: (label, value) pairs.
    extra: list[tuple[str, str]] = field(default_factory=list)
    # A bench.profiling.Profile when the target was missed and the daemon was profiled.
    profile: Any = None
    # Absolute targets (not ratios): (what, measured value, target, met).
    checks: list[tuple[str, str, str, bool]] = field(default_factory=list)
    # False when another case of the same runs shows the tools' table already.
    show_series: bool = True

    def add(self, s: Series) -> Series:
        self.series[s.tool] = s
        return s

    def ratio(self) -> float | None:
        a, b = self.series.get(self.subject), self.series.get(self.reference)
        if a is None or b is None or not a.samples or not b.samples or not a.available or not b.available:
            return None
        return a.median / b.median

    def paired_ratios(self) -> list[float]:
        """subject / reference run by run: the tools take turns in each round, so run i of one
        and run i of the other saw the same machine; their spread shows how far to trust the median."""
        a, b = self.series.get(self.subject), self.series.get(self.reference)
        if a is None or b is None or not a.available or not b.available:
            return []
        return [x / y for x, y in zip(a.samples, b.samples, strict=False) if y > 0]

    def drift(self) -> float | None:
        """The reference's median over the last third of the rounds against the first third: how
        far the machine itself moved during the case (the tools share it, so ratios hold up better)."""
        b = self.series.get(self.reference)
        if b is None or not b.available or len(b.samples) < 6:
            return None
        third = len(b.samples) // 3
        return statistics.median(b.samples[-third:]) / statistics.median(b.samples[:third])

    def floor_ratio(self) -> float | None:
        a, f = self.series.get(self.subject), self.series.get("floor")
        if a is None or f is None or not a.samples or not f.samples:
            return None
        return a.median / f.median

    def met(self) -> bool | None:
        r = self.ratio()
        verdicts = [c[3] for c in self.checks]
        if r is not None and self.target is not None:
            verdicts.append(r <= self.target)
        return all(verdicts) if verdicts else None

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "name": self.name,
            "target": self.target,
            "ratio": self.ratio(),
            "paired_ratios": self.paired_ratios(),
            "floor_ratio": self.floor_ratio(),
            "met": self.met(),
            "series": {k: v.to_json() for k, v in self.series.items()},
            "checks": self.checks,
            "notes": self.notes,
            "extra": self.extra,
        }


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[0] is state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _TICK


def proc_status(pid: int, key: str) -> int:
    """A `kB` value from /proc/<pid>/status (VmRSS, VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, `echo 5 > clear_refs`); False if refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class CpuMeter:
    """CPU seconds spent by named processes between `start()` and `stop()`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> None:
        self._start = {k: proc_cpu(p) for k, p in self.pids.items()}
        self._bench = time.process_time()

    def stop(self) -> dict[str, float]:
        self.used = {k: proc_cpu(p) - self._start[k] for k, p in self.pids.items()}
        self.used["bench"] = time.process_time() - self._bench
        return self.used


def timed_tool(
    argv: list[str], *, timeout: float = 600, env: dict[str, str] | None = None
) -> tuple[float, float]:
    """Run a command to the end; return (wall seconds, its CPU seconds). Fails loudly on error."""
    wall, cpu, _ = timed_tool_output(argv, timeout=timeout, env=env)
    return wall, cpu


def timed_tool_output(
    argv: list[str], *, timeout: float = 600, env: dict[str, str] | None = None
) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, standard output) of one command run to completion."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"{' '.join(argv)} timed out after {timeout}s") from None
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {proc.returncode}: {err.decode(errors='replace')[-2000:]}"
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, out.decode(errors="replace")


def mean_cpu(runs: list[dict[str, float]]) -> dict[str, float]:
    if not runs:
        return {}
    keys = {k for r in runs for k in r}
    return {k: sum(r.get(k, 0.0) for r in runs) / len(runs) for k in sorted(keys)}


def fmt_seconds(v: float) -> str:
    if v != v:  # NaN
        return "n/a"
    if v < 0.01:
        return f"{v * 1000:.2f} ms"
    if v < 1:
        return f"{v * 1000:.0f} ms"
    return f"{v:.2f} s"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
