"""Import: imaged's Import RPC vs `ctr images import` (which also unpacks), cold every run.

The same images as the pull scenario, as a docker-save tar and as an OCI layout tar, read from a
file. imaged gets the archive as a client stream of 1 MiB chunks (imagectl sends 32 KiB; 1 MiB
keeps the bench client's per-message cost out of the comparison; both fit gRPC's 4 MiB limit).

Memory: a further ~1 GiB archive is imported once per format while the daemon's peak RSS is
watched: VmHWM is reset (`echo 5 > /proc/<pid>/clear_refs`) before and read after, and VmRSS is
sampled every 20 ms as a cross-check.
"""

from __future__ import annotations

import pathlib
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator

import grpc

from bench import Sizes
from bench.data import Spec, docker_stored, make_image, write_archives, write_big_archive
from bench.env import SYSTEM_NS, Bench, log
from bench.floor import Floor
from bench.measure import (
    Case,
    CpuMeter,
    Series,
    fmt_bytes,
    proc_status,
    reset_peak_rss,
    timed_tool,
)
from bench.profiling import profile_once
from bench.runner import NotAvailable, Sample, Tool, compare_cold, count_commits, floor_tool
from imaged.pb.common import common_pb2
from imaged.pb.machine import image_pb2
from tests.support.archives import Image
from tests.support.daemon import SYSTEM

TARGET = 0.9
RSS_GROWTH_LIMIT = 100 * 1024 * 1024  # the issue: peak RSS growth for a 1 GiB archive under 100 MiB
FORMATS = ("docker-archive", "oci-archive")


def _requests(path: pathlib.Path, chunk: int) -> Iterator[image_pb2.ImageServiceImportRequest]:
    yield image_pb2.ImageServiceImportRequest(containerd=SYSTEM)
    with open(path, "rb") as f:
        while data := f.read(chunk):
            yield image_pb2.ImageServiceImportRequest(image_chunk=common_pb2.Data(bytes=data))


def imaged_import(bench: Bench, path: pathlib.Path, chunk: int) -> float:
    t0 = time.perf_counter()
    try:
        resp = bench.daemon.images.Import(_requests(path, chunk), timeout=900)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            raise NotAvailable(f"Import returned UNIMPLEMENTED ({e.details()})") from None
        raise RuntimeError(f"imaged Import of {path.name}: {e.code().name}: {e.details()}") from None
    wall = time.perf_counter() - t0
    if not resp.name:
        raise RuntimeError(f"imaged Import of {path.name} returned no name")
    return wall


def ctr_import(bench: Bench, path: pathlib.Path) -> tuple[float, float]:
    return timed_tool(bench.ctr_argv(SYSTEM_NS, "images", "import", str(path)))


def _imaged_tool(bench: Bench, path: pathlib.Path, chunk: int) -> Tool:
    return lambda: Sample(imaged_import(bench, path, chunk))


def _ctr_tool(bench: Bench, path: pathlib.Path) -> Tool:
    return lambda: Sample(*ctr_import(bench, path))


def run(bench: Bench, sizes: Sizes, runs: int, out_dir: pathlib.Path, profile: bool) -> list[Case]:
    work = pathlib.Path(tempfile.mkdtemp(prefix="imaged-bench-archives-", dir="/tmp"))
    cases: list[Case] = []
    try:
        with Floor(bench.containerd.socket) as floor:
            for spec in (sizes.big, sizes.small):
                cases += _spec_cases(bench, floor, spec, sizes, runs, work, out_dir, profile)
        cases += rss_cases(bench, sizes, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return cases


def _spec_cases(
    bench: Bench,
    floor: Floor,
    spec: Spec,
    sizes: Sizes,
    runs: int,
    work: pathlib.Path,
    out_dir: pathlib.Path,
    profile: bool,
) -> list[Case]:
    image = make_image(spec)
    paths = write_archives(image, f"import.bench/{spec.key}:v1", work)
    out = []
    for fmt in FORMATS:
        stored: Image = docker_stored(image) if fmt == "docker-archive" else image
        # Records and the synthesized manifest differ per tool; layers and config are what both store.
        blobs = {stored.config_digest, *(la.digest for la in stored.layers)}
        path = paths[fmt]
        case = Case("import", f"{fmt}, {spec.label} ({fmt_bytes(path.stat().st_size)})", target=TARGET)
        tools: dict[str, Tool] = {
            "imaged": _imaged_tool(bench, path, sizes.import_chunk),
            "ctr": _ctr_tool(bench, path),
            "floor": floor_tool(floor, SYSTEM_NS, stored),
        }
        compare_cold(bench, case, tools, runs * spec.repeat, SYSTEM_NS, blobs, f"import {fmt} {spec.key}")
        case.notes.append(
            f"imaged: Import client stream of {sizes.import_chunk >> 10} KiB chunks read from the file "
            "(imagectl uses 32 KiB); ctr reads the same file itself"
        )
        case.notes.append(
            "floor = the blobs containerd ends up holding (for docker-save: the uncompressed layer tars), "
            "written from memory, then Diff.Apply of each layer"
        )
        if profile and case.met() is False:
            log(f"import {fmt} {spec.key}: target missed, counting containerd's commits per tool")
            count_commits(bench, case, tools, SYSTEM_NS, blobs)
            log(f"import {fmt} {spec.key}: target missed, profiling one more imaged run")
            case.profile = profile_once(
                f"import-{fmt}-{spec.key}",
                bench.daemon_pid,
                out_dir / "profiles",
                _imaged_tool(bench, path, sizes.import_chunk),
            )
            bench.make_cold(SYSTEM_NS, blobs)
        out.append(case)
    return out


class RssSampler:
    """Highest VmRSS seen every `interval` seconds while running."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, proc_status(self.pid, "VmRSS"))
            except (OSError, KeyError):
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def rss_cases(bench: Bench, sizes: Sizes, work: pathlib.Path) -> list[Case]:
    out = []
    total = sizes.rss_layers * sizes.rss_layer_size
    for seed, fmt in enumerate(FORMATS, start=50):
        log(f"import rss: writing a {fmt_bytes(total)} {fmt}")
        big = write_big_archive(
            work / f"rss.{fmt}.tar",
            fmt,
            f"import.bench/rss-{fmt}:v1",
            sizes.rss_layers,
            sizes.rss_layer_size,
            seed,
        )
        case = Case(
            "import",
            f"{fmt}, {sizes.rss_layers} x {fmt_bytes(sizes.rss_layer_size)} uncompressed "
            f"({fmt_bytes(big.size)})",
        )
        imaged_s, ctr_s = case.add(Series("imaged")), case.add(Series("ctr"))
        pid = bench.daemon_pid
        bench.make_cold(SYSTEM_NS, big.blobs)
        reset_ok = reset_peak_rss(pid)
        base = proc_status(pid, "VmRSS")
        try:
            with RssSampler(pid) as sampler:
                meter = CpuMeter(bench.pids())
                meter.start()
                imaged_s.samples.append(imaged_import(bench, big.path, sizes.import_chunk))
                imaged_s.cpu = meter.stop()
            hwm = proc_status(pid, "VmHWM")
        except NotAvailable as e:
            imaged_s.available = False
            imaged_s.note = str(e)
            hwm = base
        log(f"import rss {fmt}: imaged {imaged_s.samples}, RSS {fmt_bytes(base)} -> peak {fmt_bytes(hwm)}")
        bench.make_cold(SYSTEM_NS, big.blobs)
        meter = CpuMeter(bench.pids())
        meter.start()
        wall, cpu = ctr_import(bench, big.path)
        ctr_s.samples.append(wall)
        ctr_s.cpu = {**meter.stop(), "ctr": cpu}
        log(f"import rss {fmt}: ctr {wall:.2f}s")
        bench.make_cold(SYSTEM_NS, big.blobs)
        if imaged_s.available:
            peak = hwm if reset_ok else sampler.peak
            case.extra += [
                ("daemon RSS before", fmt_bytes(base)),
                (
                    "daemon peak RSS during import (VmHWM"
                    + (" after reset" if reset_ok else ", not resettable: sampled VmRSS used")
                    + ")",
                    fmt_bytes(peak),
                ),
                ("peak RSS growth", f"**{fmt_bytes(peak - base)}** for a {fmt_bytes(big.size)} archive"),
                ("highest VmRSS sampled every 20 ms", fmt_bytes(sampler.peak)),
            ]
            growth = peak - base
            case.checks.append(
                (
                    "peak RSS growth of the daemon",
                    fmt_bytes(growth),
                    f"< {fmt_bytes(RSS_GROWTH_LIMIT)}",
                    growth < RSS_GROWTH_LIMIT,
                )
            )
        # The time target is for the images above; this archive is there for the memory.
        case.notes.append("one run per tool (the archive is large): the time ratio is shown, not judged")
        big.path.unlink()
        out.append(case)
    return out
