"""The floor: what containerd itself needs to store and unpack the same bytes.

From the bench process, with imaged's own containerd client (imaged.containerd): every blob of
the image is written from memory into the content store (up to 4 blobs at once, as imaged
pulls), and then each layer is applied with the Unpacker (Diff.Apply into a snapshot). No
registry, no archive parsing, no verification, no records. `write` is containerd's content
ingestion (gRPC transfer, hashing, fsync on commit), `apply` is decompression and untar into
the snapshotter. floor = write + apply, which is what the issue asks for; a tool that overlaps
downloading and unpacking can at best reach max(write, apply) (the "pipelined bound"), and only
with a free core for each. Everything is under one lease, deleted at the end; the caller's cold
cleanup then collects it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from imaged.containerd import Containerd
from imaged.containerd import labels as L
from imaged.containerd.content import ContentStore
from imaged.containerd.leases import lease
from imaged.containerd.unpack import Unpacker
from imaged.oci.manifest import Descriptor
from tests.support.archives import Image

WRITERS = 4  # blobs written at once (imaged pulls 4 layers at a time; ctr 1.6 has no limit)


@dataclass(frozen=True)
class Blob:
    kind: str
    media_type: str
    digest: str
    data: bytes
    diff_id: str = ""


@dataclass(frozen=True)
class Prepared:
    """An image with every digest computed once (tests.support.archives.Image hashes on each access)."""

    config_digest: str
    blobs: tuple[Blob, ...]

    @property
    def layers(self) -> tuple[Blob, ...]:
        return tuple(b for b in self.blobs if b.kind == "layer")


def prepare(image: Image) -> Prepared:
    blobs = [
        Blob("manifest", "", image.digest, image.manifest),
        Blob("config", "", image.config_digest, image.config),
        *(Blob("layer", la.media_type, la.digest, la.blob, la.diff_id) for la in image.layers),
    ]
    return Prepared(image.config_digest, tuple(blobs))


async def _write(content: ContentStore, blob: Blob, labels: dict[str, str]) -> None:
    w = await content.open_writer(f"{blob.kind}-{blob.digest}", total=len(blob.data), expected=blob.digest)
    if w is None:
        raise RuntimeError(f"floor: {blob.digest} already in the content store (not a cold run)")
    try:
        await w.write(blob.data)
        await w.commit(labels)
    finally:
        await w.close()


class Floor:
    """A connected containerd client on its own event loop, reused across runs (warm, like the daemon's)."""

    def __init__(self, socket: str, snapshotter: str = "overlayfs") -> None:
        self.runner = asyncio.Runner()
        self.cd = Containerd(socket)
        self.snapshotter = snapshotter
        self.runner.run(self.cd.version())

    def close(self) -> None:
        self.runner.run(self.cd.close())
        self.runner.close()

    def __enter__(self) -> Floor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, namespace: str, image: Prepared) -> tuple[float, float]:
        """(seconds to write every blob of `image`, seconds to unpack its layers)."""
        return self.runner.run(self._run(namespace, image))

    async def _run(self, namespace: str, image: Prepared) -> tuple[float, float]:
        ns = self.cd.ns(namespace)
        async with lease(ns, owner="bench-floor", purpose="floor") as lns:
            content = ContentStore(lns)
            sem = asyncio.Semaphore(WRITERS)
            # Layers committed with their diffID label, as imaged's pull and import commit them.
            labels = {la.digest: {L.UNCOMPRESSED: la.diff_id} for la in image.layers}

            async def one(blob: Blob) -> None:
                async with sem:
                    await _write(content, blob, labels.get(blob.digest, {}))

            t0 = time.perf_counter()
            async with asyncio.TaskGroup() as tg:
                for blob in image.blobs:
                    tg.create_task(one(blob))
            t1 = time.perf_counter()
            layers = image.layers
            descs = [Descriptor(la.media_type, la.digest, len(la.data)) for la in layers]
            diff_ids = tuple(la.diff_id for la in layers)
            await Unpacker(lns, self.snapshotter).unpack(image.config_digest, descs, diff_ids)
            t2 = time.perf_counter()
        return t1 - t0, t2 - t1
