"""CRI: imaged's pulls into k8s.io against containerd's own CRI `PullImage`, the pull they replace.

The anchor is what a kubelet gets without imaged: containerd's CRI `PullImage` of the tag (no
verification). Against it, in the same run, cold every run, the tools in rotating order:

- `imaged PullImage`: imaged's CRI socket (the kubelet's imageServiceEndpoint): the policy decides
  (a cached verdict: the image is signed and verified once before timing), then containerd's CRI
  pulls the verified digest under imaged's lease, then the tag record and labels, then the wait
  until containerd's CRI knows the tag;
- `imaged Pull`: machine.ImageService Pull into k8s.io, the same transfer plus per-layer progress
  from looking at containerd's ingests and snapshots;
- `imaged Pull, own pipeline`: the same Pull with `pull.cri_transfer: imaged` (imaged fetches and
  unpacks itself, as before this scenario existed; still what imaged does where containerd cannot
  be told what imaged would do, and in the system namespace).

Each image is pushed under `<host>/bench/cri-<shape>` (the bench's verify rule) and signed with
the bench's key. CPU is counted for every process (each daemon, containerd, the registry, the bench
client) and reported per pulled GiB.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import grpc

from bench import syncs
from bench.data import Spec, make_image
from bench.env import CRI_NS, Bench, daemon_config, log
from bench.measure import Case, CpuMeter, Series, mean_cpu
from imaged.pb.machine import image_pb2
from imaged.pb.runtime.v1 import api_pb2, api_pb2_grpc
from tests.support import archives
from tests.support.daemon import CRI, DaemonProcess
from tests.support.registry import free_port
from tests.support.sigstore import OciPusher, PrivateSigstore

TARGET = 1.0
ANCHOR = "containerd CRI PullImage"
PULLIMAGE = "imaged PullImage"
PULL = "imaged Pull"
OWN = "imaged Pull, own pipeline"
WARM_ANCHOR = "containerd CRI PullImage, image present"
WARM_PULLIMAGE = "imaged PullImage, image present"
WARM_RUNS = 20
GiB = float(1 << 30)


def _daemon(bench: Bench, **extra: object) -> DaemonProcess:
    cfg = daemon_config(bench.registry.host, bench.public_pem, free_port())
    # Every timed run must find the verdict cached, however long the case takes.
    cfg["verification"]["cache"] = {"successTtl": "2h"}
    for key, value in extra.items():
        cfg[key] = value
    d = DaemonProcess(bench.containerd.socket, cfg)
    d.start()
    bench.extra_daemons.append(d)
    return d


def _pull_image(socket: str, ref: str) -> str:
    with grpc.insecure_channel(f"unix:{socket}") as ch:
        req = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref))
        return str(api_pb2_grpc.ImageServiceStub(ch).PullImage(req, timeout=900).image_ref)


def _pull(d: DaemonProcess, ref: str) -> int:
    """A machine.ImageService Pull into k8s.io; returns how many progress messages it sent."""
    n, name = 0, ""
    for resp in d.images.Pull(image_pb2.ImageServicePullRequest(containerd=CRI, image_ref=ref), timeout=900):
        if resp.HasField("pull_progress"):
            n += 1
        else:
            name = resp.name
    if not name:
        raise RuntimeError(f"Pull of {ref} ended without the pinned name")
    return n


def run(bench: Bench, specs: list[Spec], runs: int, *, commits: bool = True) -> list[Case]:
    ps = PrivateSigstore(seed=b"imaged-bench")
    key = ps.static_key()
    cri_sock = f"/tmp/imaged-bench-cri-{os.getpid()}.sock"
    ours = _daemon(bench, listen={"cri": {"path": cri_sock}})
    own = _daemon(bench, pull={"cri_transfer": "imaged"})
    cases: list[Case] = []
    for spec in specs:
        cases += _shape(bench, spec, runs, ps, key, ours, own, cri_sock, commits)
    return cases


def _shape(
    bench: Bench,
    spec: Spec,
    runs: int,
    ps: PrivateSigstore,
    key: object,
    ours: DaemonProcess,
    own: DaemonProcess,
    cri_sock: str,
    commits: bool,
) -> list[Case]:
    log(f"cri: generating and pushing {spec.label}")
    image = make_image(spec)
    repo = f"bench/cri-{spec.key}"
    digest = archives.push(bench.registry, repo, "v1", image)
    host = bench.registry.host
    sig = ps.sign_legacy(digest, f"{host}/{repo}", key, tlog=False)  # type: ignore[arg-type]
    OciPusher(bench.registry).push_legacy_signatures(repo, digest, [sig])
    ref = f"{host}/{repo}:v1"
    for d in (ours, own):  # the verdict, cached before anything is timed
        resp = d.images.Verify(image_pb2.ImageServiceVerifyRequest(image_ref=ref), timeout=60)
        assert resp.verified, resp
    blobs = set(image.blobs())
    pulled = sum(len(b) for b in image.blobs().values())
    # Hashed once here: the image's properties hash every layer on each use (not in the clock).
    image_id = image.config_digest
    assert bench.registry.proc is not None

    def anchor() -> None:
        assert _pull_image(bench.containerd.socket, ref) == image_id

    def pullimage() -> None:
        assert _pull_image(cri_sock, ref) == image_id

    messages: dict[str, list[int]] = {PULL: [], OWN: []}

    def pull_ours() -> None:
        messages[PULL].append(_pull(ours, ref))

    def pull_own() -> None:
        messages[OWN].append(_pull(own, ref))

    assert ours.proc is not None and own.proc is not None
    base = {"containerd": bench.containerd_pid, "registry": bench.registry.proc.pid}
    tools: dict[str, tuple[Callable[[], None], dict[str, int]]] = {
        ANCHOR: (anchor, base),
        PULLIMAGE: (pullimage, {**base, "imaged": ours.proc.pid}),
        PULL: (pull_ours, {**base, "imaged": ours.proc.pid}),
        OWN: (pull_own, {**base, "imaged": own.proc.pid}),
    }
    series = {name: Series(name) for name in tools}
    cpus: dict[str, list[dict[str, float]]] = {name: [] for name in tools}
    order = list(tools)
    load = [os.getloadavg()[0]]
    n = runs * spec.repeat
    for r in range(n):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            body, pids = tools[name]
            bench.make_cold(CRI_NS, blobs)
            meter = CpuMeter(pids)
            meter.start()
            t0 = time.perf_counter()
            body()
            wall = time.perf_counter() - t0
            cpus[name].append(meter.stop())
            series[name].samples.append(wall)
            log(f"cri {spec.key} run {r + 1}/{n} {name}: {wall:.3f}s")
        load.append(os.getloadavg()[0])
    # The image present (a kubelet with imagePullPolicy: Always, at every pod start): containerd's
    # pull resolves and compares; imaged decides, resolves the tag and finds it here.
    anchor()
    warm = {WARM_ANCHOR: anchor, WARM_PULLIMAGE: pullimage}
    warm_series = {name: Series(name) for name in warm}
    for r in range(WARM_RUNS):
        for name in list(warm)[r % 2 :] + list(warm)[: r % 2]:
            t0 = time.perf_counter()
            warm[name]()
            warm_series[name].samples.append(time.perf_counter() - t0)
    log(
        "cri {} present: {}".format(
            spec.key,
            ", ".join(f"{n} {statistics.median(s.samples) * 1e3:.1f} ms" for n, s in warm_series.items()),
        )
    )
    bench.make_cold(CRI_NS, blobs)
    counted: dict[str, syncs.Syncs] = {}
    if commits and syncs.available():
        # A count the machine's load does not move: what each tool asks containerd to commit.
        for name, (body, _pids) in tools.items():
            counted[name] = syncs.count(bench.containerd_pid, body)
            bench.make_cold(CRI_NS, blobs)
    for name in tools:
        series[name].cpu = mean_cpu(cpus[name])
    label = f"{spec.label} ({spec.total_label})"
    out = []
    for subject in (PULL, PULLIMAGE):
        case = Case("cri", f"{label}: {subject}", target=TARGET, reference=ANCHOR, subject=subject)
        case.series = series
        out.append(case)
    main = out[0]
    own_case = Case(
        "cri", f"{label}: {OWN} (not used where containerd can pull)", reference=ANCHOR, subject=OWN
    )
    own_case.series = series
    out.append(own_case)
    warm_case = Case(
        "cri", f"{label}, image present: {WARM_PULLIMAGE}", reference=WARM_ANCHOR, subject=WARM_PULLIMAGE
    )
    warm_case.series = warm_series
    out.append(warm_case)
    gib = pulled / GiB
    for name, s in series.items():
        c = s.cpu
        main.extra.append(
            (
                f"{name}: wall s per GiB; CPU s per GiB imaged / containerd / registry / client",
                f"{statistics.median(s.samples) / gib:.2f}; "
                f"{c.get('imaged', 0.0) / gib:.2f} / {c.get('containerd', 0.0) / gib:.2f} / "
                f"{c.get('registry', 0.0) / gib:.2f} / {c.get('bench', 0.0) / gib:.2f}",
            )
        )
    for name, counts in messages.items():
        if counts:
            main.extra.append(
                (f"{name}: progress messages per pull (median)", f"{statistics.median(counts):g}")
            )
    if counted:
        main.extra.append(
            (
                "containerd commits, one more run each under strace: metadata / snapshotter / blob files",
                "; ".join(f"{name} {n}" for name, n in counted.items()),
            )
        )
    main.extra.append(("load average (1 min) over the case", f"{min(load):.2f} to {max(load):.2f}"))
    for case in out[1:]:
        case.show_series = False
    return out
