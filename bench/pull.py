"""Pull: imaged's Pull RPC vs `ctr images pull --plain-http` (which also unpacks), cold every run.

Both pull into the `system` namespace of the same containerd from the same loopback registry;
the tools alternate in a rotating order so drift in machine load spreads over all of them.
The image is not under a verification rule (`<host>/data/...`), so the policy step costs imaged
only the rule match.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable

from bench.data import Spec, make_image
from bench.env import SYSTEM_NS, Bench, log
from bench.floor import Floor
from bench.measure import Case, CpuMeter, Series, mean_cpu, timed_tool
from bench.profiling import Profile, profile_once
from imaged.pb.machine import image_pb2
from tests.support import archives
from tests.support.daemon import SYSTEM

TARGET = 0.8


def imaged_pull(bench: Bench, ref: str) -> float:
    t0 = time.perf_counter()
    last = None
    for resp in bench.daemon.images.Pull(
        image_pb2.ImageServicePullRequest(containerd=SYSTEM, image_ref=ref), timeout=900
    ):
        last = resp
    wall = time.perf_counter() - t0
    if last is None or not last.name:
        raise RuntimeError(f"imaged Pull of {ref} ended without the pinned name")
    return wall


def run(
    bench: Bench, specs: list[Spec], runs: int, out_dir: pathlib.Path, profile: bool
) -> tuple[list[Case], list[Profile]]:
    cases: list[Case] = []
    profiles: list[Profile] = []
    with Floor(bench.containerd.socket) as floor:
        for spec in specs:
            cases.append(_case(bench, floor, spec, runs, out_dir, profile, profiles))
    return cases, profiles


def _case(
    bench: Bench,
    floor: Floor,
    spec: Spec,
    runs: int,
    out_dir: pathlib.Path,
    profile: bool,
    profiles: list[Profile],
) -> Case:
    log(f"pull: generating {spec.label}")
    image = make_image(spec)
    repo = f"data/pull-{spec.key}"
    archives.push(bench.registry, repo, "v1", image)
    ref = bench.registry.ref(repo, "v1")
    blobs = set(image.blobs())
    case = Case("pull", f"{spec.label} (gzip, {spec.total_label})", target=TARGET)
    tools: dict[str, Callable[[], tuple[float, float]]] = {
        "imaged": lambda: (imaged_pull(bench, ref), 0.0),
        "ctr": lambda: timed_tool(bench.ctr_argv(SYSTEM_NS, "images", "pull", "--plain-http", ref)),
        "floor": lambda: (floor.run(SYSTEM_NS, image), 0.0),
    }
    series = {name: case.add(Series(name)) for name in tools}
    cpus: dict[str, list[dict[str, float]]] = {name: [] for name in tools}
    order = list(tools)
    for r in range(runs):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            bench.make_cold(SYSTEM_NS, blobs)
            meter = CpuMeter(bench.pids())
            meter.start()
            wall, child_cpu = tools[name]()
            used = meter.stop()
            if name == "ctr":
                used["ctr"] = child_cpu
            series[name].samples.append(wall)
            cpus[name].append(used)
            log(f"pull {spec.key} run {r + 1}/{runs} {name}: {wall:.3f}s")
    for name in tools:
        series[name].cpu = mean_cpu(cpus[name])
    bench.make_cold(SYSTEM_NS, blobs)
    case.notes.append(
        "floor = the same blobs written from memory into containerd's content store plus Diff.Apply of "
        "each layer (imaged.containerd client in the bench process, 4 writers, unpack pipelined); "
        "no registry, no verification, no records"
    )
    if profile and case.met() is False:
        log(f"pull {spec.key}: target missed, profiling one more imaged run")
        prof = profile_once(
            f"pull-{spec.key}", bench.daemon_pid, out_dir / "profiles", lambda: imaged_pull(bench, ref)
        )
        profiles.append(prof)
        case.profile = prof
        bench.make_cold(SYSTEM_NS, blobs)
    return case
