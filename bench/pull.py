"""Pull: imaged's Pull RPC vs `ctr images pull --plain-http` (which also unpacks), cold every run.

Both pull into the `system` namespace of the same containerd from the same loopback registry;
the tools alternate in a rotating order so drift in machine load spreads over all of them.
The image is not under a verification rule (`<host>/data/...`), so the policy step costs imaged
only the rule match. ctr 1.6 fetches every blob first and unpacks afterwards; imaged unpacks
each layer as soon as it and its parents are in.
"""

from __future__ import annotations

import pathlib
import re
import time

from bench.data import Spec, make_image
from bench.env import SYSTEM_NS, Bench, log
from bench.floor import Floor
from bench.measure import Case, timed_tool_output
from bench.profiling import profile_once
from bench.runner import Sample, Tool, compare_cold, count_commits, floor_tool
from imaged.pb.machine import image_pb2
from tests.support import archives
from tests.support.daemon import SYSTEM

TARGET = 0.8


DOWNLOAD_COMPLETE = image_pb2.ImageServicePullLayerProgress.DOWNLOAD_COMPLETE
EXTRACT_COMPLETE = image_pb2.ImageServicePullLayerProgress.EXTRACT_COMPLETE


def imaged_pull_timed(bench: Bench, ref: str) -> Sample:
    """One Pull; parts: when the last layer finished downloading, and unpacking (from the progress)."""
    t0 = time.perf_counter()
    last = None
    downloaded = unpacked = 0.0
    for resp in bench.daemon.images.Pull(
        image_pb2.ImageServicePullRequest(containerd=SYSTEM, image_ref=ref), timeout=900
    ):
        last = resp
        if resp.HasField("pull_progress"):
            status = resp.pull_progress.progress.status
            if status == DOWNLOAD_COMPLETE:
                downloaded = time.perf_counter() - t0
            elif status == EXTRACT_COMPLETE:
                unpacked = time.perf_counter() - t0
    wall = time.perf_counter() - t0
    if last is None or not last.name:
        raise RuntimeError(f"imaged Pull of {ref} ended without the pinned name")
    return Sample(wall, parts={"all layers downloaded at": downloaded, "last layer unpacked at": unpacked})


def imaged_pull(bench: Bench, ref: str) -> float:
    return imaged_pull_timed(bench, ref).wall


_ELAPSED = re.compile(r"elapsed: ([0-9.]+) ?s")
_DONE = re.compile(r"done: ([0-9.]+)(ms|s)")


def ctr_pull(bench: Bench, ref: str) -> Sample:
    """`ctr images pull`; parts from its output: the fetch's elapsed time and the unpack's duration."""
    wall, cpu, out = timed_tool_output(bench.ctr_argv(SYSTEM_NS, "images", "pull", "--plain-http", ref))
    parts = {}
    elapsed = _ELAPSED.findall(out)
    done = _DONE.findall(out)
    if elapsed:
        parts["fetch (ctr's elapsed)"] = float(elapsed[-1])
    if done:
        value, unit = done[-1]
        parts["unpack (ctr's done)"] = float(value) / (1000 if unit == "ms" else 1)
    return Sample(wall, cpu, parts)


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
        "imaged": lambda: imaged_pull_timed(bench, ref),
        "ctr": lambda: ctr_pull(bench, ref),
        "floor": floor_tool(floor, SYSTEM_NS, image),
    }
    compare_cold(bench, case, tools, runs * spec.repeat, SYSTEM_NS, blobs, f"pull {spec.key}")
    case.notes.append(
        "floor = the same blobs written from memory into containerd's content store, then Diff.Apply of "
        "each layer (imaged.containerd client in the bench process); no registry, no verification, no records"
    )
    if profile and case.met() is False:
        log(f"pull {spec.key}: target missed, counting containerd's commits per tool")
        count_commits(bench, case, tools, SYSTEM_NS, blobs)
        log(f"pull {spec.key}: target missed, profiling one more imaged run")
        case.profile = profile_once(
            f"pull-{spec.key}", bench.daemon_pid, out_dir / "profiles", lambda: imaged_pull(bench, ref)
        )
        bench.make_cold(SYSTEM_NS, blobs)
    return case
