"""Pull: imaged's Pull RPC vs `ctr images pull --plain-http` (which also unpacks), cold every run.

Both pull into the `system` namespace of the same containerd from the same loopback registry;
the tools alternate in a rotating order so drift in machine load spreads over all of them.
The image is not under a verification rule (`<host>/data/...`), so the policy step costs imaged
only the rule match. ctr 1.6 fetches every blob first and unpacks afterwards; imaged unpacks
each layer as soon as it and its parents are in.
"""

from __future__ import annotations

import pathlib
import time

from bench.data import Spec, make_image
from bench.env import SYSTEM_NS, Bench, log
from bench.floor import Floor
from bench.measure import Case
from bench.profiling import profile_once
from bench.runner import Sample, Tool, compare_cold, floor_tool
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


def run(bench: Bench, specs: list[Spec], runs: int, out_dir: pathlib.Path, profile: bool) -> list[Case]:
    with Floor(bench.containerd.socket) as floor:
        return [_case(bench, floor, spec, runs, out_dir, profile) for spec in specs]


def _case(bench: Bench, floor: Floor, spec: Spec, runs: int, out_dir: pathlib.Path, profile: bool) -> Case:
    log(f"pull: generating and pushing {spec.label}")
    image = make_image(spec)
    repo = f"data/pull-{spec.key}"
    archives.push(bench.registry, repo, "v1", image)
    ref = bench.registry.ref(repo, "v1")
    blobs = set(image.blobs())
    case = Case("pull", f"{spec.label} (gzip, {spec.total_label})", target=TARGET)
    tools: dict[str, Tool] = {
        "imaged": lambda: Sample(imaged_pull(bench, ref)),
        "ctr": lambda: Sample(*_ctr(bench, ref)),
        "floor": floor_tool(floor, SYSTEM_NS, image),
    }
    compare_cold(bench, case, tools, runs, SYSTEM_NS, blobs, f"pull {spec.key}")
    case.notes.append(
        "floor = the same blobs written from memory into containerd's content store, then Diff.Apply of "
        "each layer (imaged.containerd client in the bench process); no registry, no verification, no records"
    )
    if profile and case.met() is False:
        log(f"pull {spec.key}: target missed, profiling one more imaged run")
        case.profile = profile_once(
            f"pull-{spec.key}", bench.daemon_pid, out_dir / "profiles", lambda: imaged_pull(bench, ref)
        )
        bench.make_cold(SYSTEM_NS, blobs)
    return case


def _ctr(bench: Bench, ref: str) -> tuple[float, float]:
    from bench.measure import timed_tool

    return timed_tool(bench.ctr_argv(SYSTEM_NS, "images", "pull", "--plain-http", ref))
