"""List: N image records in k8s.io (one target), listed by imaged and by `ctr images ls`.

The records are created fast with imaged.containerd's ImageStore.put (as the foundation tests
do), all pointing at one small image imported with ctr. Measured: the List RPC alone (the client
iterating the whole stream), `imagectl list` as a whole command (process start, import of the
CLI, table output), and `ctr images ls` (which also computes every image's size).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import sys
import time

from bench.env import CRI_NS, Bench, log
from bench.measure import Case, CpuMeter, Series, mean_cpu, timed_tool
from bench.profiling import profile_once
from imaged.pb.machine import image_pb2
from tests.support import archives
from tests.support.daemon import CRI

PREFIX = "registry.bench/list/app"


def imaged_list(bench: Bench, expect: int) -> float:
    t0 = time.perf_counter()
    n = sum(
        1 for _ in bench.daemon.images.List(image_pb2.ImageServiceListRequest(containerd=CRI), timeout=300)
    )
    wall = time.perf_counter() - t0
    if n < expect:
        raise RuntimeError(f"imaged List returned {n} records, expected at least {expect}")
    return wall


def imagectl_path() -> str | None:
    exe = pathlib.Path(sys.executable).parent / "imagectl"
    return str(exe) if exe.exists() else shutil.which("imagectl")


async def _records(socket: str, names: list[str], target: archives.Image | None) -> None:
    from imaged.containerd import Containerd
    from imaged.containerd.images import ImageStore, Target

    cd = Containerd(socket)
    store = ImageStore(cd.ns(CRI_NS))
    sem = asyncio.Semaphore(64)
    desc = None
    if target is not None:
        desc = Target(archives.OCI_MANIFEST, target.digest, len(target.manifest))

    async def one(name: str) -> None:
        async with sem:
            if desc is not None:
                await store.put(name, desc, {"io.cri-containerd.image": "managed"})
            else:
                await store.delete(name, sync=False)

    try:
        await asyncio.gather(*(one(n) for n in names))
    finally:
        await cd.close()


def run(bench: Bench, count: int, runs: int, out_dir: pathlib.Path, profile: bool) -> list[Case]:
    base = archives.simple_image("bench-list")
    base_name = "registry.bench/list/base:v1"
    bench.containerd.ctr(
        "images", "import", "-", namespace=CRI_NS, input=archives.oci_archive([(base_name, base)])
    )
    bench.keep_snapshots(CRI_NS)
    names = [f"{PREFIX}-{i:05d}:v1" for i in range(count)]
    t0 = time.perf_counter()
    asyncio.run(_records(bench.containerd.socket, names, base))
    log(f"list: {count} records created in {time.perf_counter() - t0:.1f}s")
    expect = count + 1
    case = Case("list", f"{count} records in k8s.io")
    tools = {
        "imaged List RPC": lambda: (imaged_list(bench, expect), 0.0),
        "ctr": lambda: timed_tool(bench.ctr_argv(CRI_NS, "images", "ls")),
    }
    cli = imagectl_path()
    env = {**os.environ, "IMAGED_SOCKET": bench.daemon.socket}
    if cli is not None:
        tools["imagectl list"] = lambda: timed_tool([cli, "--namespace", "cri", "list"], env=env)
    try:
        first = imaged_list(bench, expect)
        case.extra.append(
            ("imaged List, first call after the records were made (size cache cold)", f"{first:.3f} s")
        )
        series = {name: case.add(Series(name)) for name in tools}
        if cli is None:
            case.add(Series("imagectl list", available=False, note="console script imagectl not installed"))
        cpus: dict[str, list[dict[str, float]]] = {name: [] for name in tools}
        order = list(tools)
        for r in range(runs):
            for name in order[r % len(order) :] + order[: r % len(order)]:
                meter = CpuMeter(bench.pids())
                meter.start()
                wall, child = tools[name]()
                used = meter.stop()
                if name != "imaged List RPC":
                    used["ctr"] = child
                series[name].samples.append(wall)
                cpus[name].append(used)
                log(f"list run {r + 1}/{runs} {name}: {wall:.3f}s")
        for name in tools:
            series[name].cpu = mean_cpu(cpus[name])
        case.subject = "imaged List RPC"
        cases = [case]
        if cli is not None:
            whole = Case("list", f"{count} records in k8s.io, whole command", subject="imagectl list")
            whole.series = {"imagectl list": series["imagectl list"], "ctr": series["ctr"]}
            whole.notes.append("`imagectl list` (process start, CLI import, table) vs `ctr images ls` (same)")
            cases.append(whole)
        case.notes.append(
            "no target in the issue; the RPC row is the daemon's work plus the client draining the stream "
            "(sync grpc in the bench process); ctr also computes each image's size"
        )
        if profile and (case.ratio() or 0) > 1.0:
            case.profile = profile_once(
                "list", bench.daemon_pid, out_dir / "profiles", lambda: imaged_list(bench, expect)
            )
        return cases
    finally:
        asyncio.run(_records(bench.containerd.socket, names, None))
        bench.remove_images(CRI_NS, [base_name])
        bench.gc(CRI_NS)
        bench.keep_snapshots(CRI_NS)
