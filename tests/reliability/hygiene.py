"""What a containerd namespace must look like after failures: no leases, ingests or orphans.

Read straight from containerd's own API (no imaged code): the images' closure (index, manifests
present, configs, layers, and the layers' snapshot chain) is computed from the stored manifests,
garbage collection is forced (a synchronous lease delete runs it), and whatever content or
snapshot is left outside that closure is an orphan: something a failed or killed call left
behind that containerd will never collect (a leftover lease or a `gc.root` label holds it).
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import time
import uuid
from dataclasses import dataclass, field

import grpc

from imaged.pb.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from imaged.pb.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from imaged.pb.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from imaged.pb.containerd.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from tests.support.containerd import ctr_binary

HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}


@dataclass
class Report:
    namespace: str
    leases: list[str] = field(default_factory=list)
    ingests: list[str] = field(default_factory=list)
    orphan_content: list[str] = field(default_factory=list)
    orphan_snapshots: list[str] = field(default_factory=list)
    # Image records whose host-platform content or unpacked snapshot is missing.
    incomplete_images: list[str] = field(default_factory=list)
    images: int = 0

    @property
    def clean(self) -> bool:
        return not (
            self.leases
            or self.ingests
            or self.orphan_content
            or self.orphan_snapshots
            or self.incomplete_images
        )

    def leaks(self) -> int:
        return len(self.leases) + len(self.ingests) + len(self.orphan_content) + len(self.orphan_snapshots)


def _md(ns: str) -> tuple[tuple[str, str]]:
    return (("containerd-namespace", ns),)


def chain_ids(diff_ids: list[str]) -> list[str]:
    out: list[str] = []
    for d in diff_ids:
        out.append(d if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def force_gc(socket: str, ns: str) -> None:
    """Run containerd's garbage collection now (deleting a lease with `sync` does)."""
    with grpc.insecure_channel(f"unix:{socket}") as ch:
        stub = leases_pb2_grpc.LeasesStub(ch)
        lid = f"reliability-gc-{uuid.uuid4().hex[:8]}"
        stub.Create(leases_pb2.CreateRequest(id=lid), metadata=_md(ns), timeout=30)
        stub.Delete(leases_pb2.DeleteRequest(id=lid, sync=True), metadata=_md(ns), timeout=60)


def ingest_offsets(socket: str, ns: str) -> dict[str, int]:
    """Every active ingest of `ns` and how many bytes containerd holds of it."""
    with grpc.insecure_channel(f"unix:{socket}") as ch:
        statuses = (
            content_pb2_grpc.ContentStub(ch)
            .ListStatuses(content_pb2.ListStatusesRequest(), metadata=_md(ns))
            .statuses
        )
        return {s.ref: s.offset for s in statuses}


def inspect(socket: str, ns: str, *, gc: bool = True) -> Report:
    if gc:
        force_gc(socket, ns)
    rep = Report(ns)
    with grpc.insecure_channel(
        f"unix:{socket}", options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as ch:
        md = _md(ns)
        rep.leases = [
            le.id for le in leases_pb2_grpc.LeasesStub(ch).List(leases_pb2.ListRequest(), metadata=md).leases
        ]
        content = content_pb2_grpc.ContentStub(ch)
        rep.ingests = [
            s.ref for s in content.ListStatuses(content_pb2.ListStatusesRequest(), metadata=md).statuses
        ]
        present = {
            i.digest for r in content.List(content_pb2.ListContentRequest(), metadata=md) for i in r.info
        }

        def read(digest: str) -> bytes:
            req = content_pb2.ReadContentRequest(digest=digest)
            return b"".join(r.data for r in content.Read(req, metadata=md))

        reachable: set[str] = set()
        chains: set[str] = set()
        tops: dict[str, str] = {}  # image name -> top chain id its host manifest needs

        def walk(name: str, media_type: str, digest: str, missing: list[str]) -> None:
            if digest not in present:
                missing.append(digest)
                return
            reachable.add(digest)
            doc = json.loads(read(digest))
            if media_type in INDEX_TYPES or "manifests" in doc:
                for m in doc.get("manifests", []):
                    p = m.get("platform", {})
                    host = p.get("os") == "linux" and p.get("architecture") == HOST_ARCH
                    if host or m["digest"] in present:
                        walk(name, m.get("mediaType", ""), m["digest"], missing if host else [])
                return
            cfg = doc.get("config", {}).get("digest")
            if cfg not in present:
                missing.append(str(cfg))
            else:
                reachable.add(cfg)
                diff_ids = json.loads(read(cfg)).get("rootfs", {}).get("diff_ids", [])
                ids = chain_ids(diff_ids)
                chains.update(ids)
                if ids:
                    tops[name] = ids[-1]
            for layer in doc.get("layers", []):
                if layer["digest"] in present:
                    reachable.add(layer["digest"])
                else:
                    missing.append(layer["digest"])

        images = images_pb2_grpc.ImagesStub(ch).List(images_pb2.ListImagesRequest(), metadata=md).images
        rep.images = len(images)
        for img in images:
            missing: list[str] = []
            walk(img.name, img.target.media_type, img.target.digest, missing)
            if missing:
                rep.incomplete_images.append(f"{img.name}: missing {missing}")
        rep.orphan_content = sorted(present - reachable)
        committed: set[str] = set()
        snaps = snapshots_pb2_grpc.SnapshotsStub(ch)
        for resp in snaps.List(snapshots_pb2.ListSnapshotsRequest(snapshotter="overlayfs"), metadata=md):
            for info in resp.info:
                if info.kind == snapshots_pb2.COMMITTED:
                    committed.add(info.name)
                if info.kind != snapshots_pb2.COMMITTED or info.name not in chains:
                    rep.orphan_snapshots.append(f"{info.name} ({snapshots_pb2.Kind.Name(info.kind)})")
        for name, top in tops.items():
            if top not in committed:
                rep.incomplete_images.append(f"{name}: not unpacked (no snapshot {top})")
    return rep


def wait_clean(socket: str, ns: str, timeout: float = 20.0, *, leases_only: bool = False) -> Report:
    """The namespace's report once it is clean (or, with `leases_only`, once no lease is left),
    else the last one after `timeout`. Leases go asynchronously: a cancelled call's cleanup, or a
    restarted daemon's start-up. `leases_only` is for checks where a partial ingest stays on purpose."""
    deadline = time.monotonic() + timeout
    while True:
        rep = inspect(socket, ns)
        done = not rep.leases if leases_only else rep.clean
        if done or time.monotonic() > deadline:
            return rep
        time.sleep(0.3)


def rss_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process in KiB, from /proc."""
    cur = peak = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1])
    return cur, peak


def ctr_remove_all(socket: str, ns: str) -> None:
    """Remove every image of `ns` (tests start from an empty namespace of a private containerd)."""
    names = subprocess.run(
        [ctr_binary(socket), "-a", socket, "-n", ns, "images", "ls", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    if names:
        subprocess.run(
            [ctr_binary(socket), "-a", socket, "-n", ns, "images", "rm", "--sync", *names],
            capture_output=True,
            timeout=120,
        )
