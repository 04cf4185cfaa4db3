"""The measuring loop shared by pull and import: tools in rotating order, every run cold."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from bench import syncs
from bench.env import Bench, log
from bench.floor import Floor, prepare
from bench.measure import Case, CpuMeter, Series, fmt_seconds, mean_cpu
from tests.support.archives import Image


class NotAvailable(Exception):
    """The tool cannot run here (e.g. the RPC answers UNIMPLEMENTED); reported, not fatal."""


@dataclass
class Sample:
    wall: float
    child_cpu: float = 0.0  # CPU of a child process (ctr), measured around it
    parts: dict[str, float] = field(default_factory=dict)


Tool = Callable[[], Sample]


def floor_tool(floor: Floor, namespace: str, image: Image) -> Tool:
    prepared = prepare(image)  # hash once, outside the clock

    def run() -> Sample:
        write, apply = floor.run(namespace, prepared)
        return Sample(write + apply, parts={"write": write, "apply": apply})

    return run


def compare_cold(
    bench: Bench, case: Case, tools: dict[str, Tool], runs: int, namespace: str, blobs: set[str], label: str
) -> None:
    """Run each tool `runs` times, cold each time; fill `case` with the samples and CPU use."""
    series = {name: case.add(Series(name)) for name in tools}
    cpus: dict[str, list[dict[str, float]]] = {name: [] for name in tools}
    parts: dict[str, dict[str, list[float]]] = {name: {} for name in tools}
    order = list(tools)
    for r in range(runs):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            if not series[name].available:
                continue
            bench.make_cold(namespace, blobs)
            meter = CpuMeter(bench.pids())
            meter.start()
            try:
                sample = tools[name]()
            except NotAvailable as e:
                series[name].available = False
                series[name].note = str(e)
                log(f"{label}: {name} not available: {e}")
                continue
            used = meter.stop()
            if sample.child_cpu:
                used["ctr"] = sample.child_cpu
            series[name].samples.append(sample.wall)
            cpus[name].append(used)
            for k, v in sample.parts.items():
                parts[name].setdefault(k, []).append(v)
            log(f"{label} run {r + 1}/{runs} {name}: {sample.wall:.3f}s")
    for name in tools:
        series[name].cpu = mean_cpu(cpus[name])
    bench.make_cold(namespace, blobs)
    for name, tool_parts in parts.items():
        if name != "floor" and tool_parts:
            shown = " / ".join(f"{k} {fmt_seconds(statistics.median(v))}" for k, v in tool_parts.items())
            case.extra.append((f"{name} (medians)", shown))
    fp = parts.get("floor", {})
    if fp.get("write") and fp.get("apply"):
        bound = [max(w, a) for w, a in zip(fp["write"], fp["apply"], strict=True)]
        write, apply = (
            fmt_seconds(statistics.median(fp["write"])),
            fmt_seconds(statistics.median(fp["apply"])),
        )
        case.extra += [
            (
                "floor: write blobs / apply layers (medians)",
                f"{write} / {apply}",
            ),
            ("pipelined bound max(write, apply) (median)", fmt_seconds(statistics.median(bound))),
        ]
        imaged = series.get("imaged")
        if imaged is not None and imaged.samples:
            case.extra.append(
                ("imaged / pipelined bound", f"{imaged.median / statistics.median(bound):.2f}x")
            )


def count_commits(bench: Bench, case: Case, tools: dict[str, Tool], namespace: str, blobs: set[str]) -> None:
    """One more cold run of each tool under strace: containerd's commits, which times cannot show
    apart from the host's speed (bench/syncs.py). Reported only; not part of any median."""
    if not syncs.available():
        case.notes.append("strace is not installed: containerd's commits were not counted")
        return
    counted = []
    for name, tool in tools.items():
        bench.make_cold(namespace, blobs)
        counted.append(f"{name} {syncs.count(bench.containerd_pid, tool)}")
    bench.make_cold(namespace, blobs)
    case.extra.append(
        (
            "containerd commits, one run each under strace: metadata / snapshotter / blob files",
            "; ".join(counted),
        )
    )
    case.notes.append(
        "commits: counted with strace over one more cold run of each tool (bench/syncs.py), with the "
        "garbage collection its last call sets off; the floor makes no image, so its count includes "
        "collecting what it wrote (one snapshotter commit per layer)"
    )
