"""The floor: what containerd itself needs to store and unpack the same bytes.

From the bench process, with imaged's own containerd client (imaged.containerd): every blob of
the image is written from memory into the content store (manifest, config, then the layers, one
at a time), and then each layer is applied with the Unpacker (Diff.Apply into a snapshot). No
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

from imaged.containerd import Containerd
from imaged.containerd.content import ContentStore
from imaged.containerd.leases import lease
from imaged.containerd.unpack import Unpacker
from imaged.oci.manifest import Descriptor
from tests.support.archives import Image


async def _write(content: ContentStore, kind: str, digest: str, data: bytes) -> None:
    w = await content.open_writer(f"{kind}-{digest}", total=len(data), expected=digest)
    if w is None:
        raise RuntimeError(f"floor: {digest} already in the content store (not a cold run)")
    try:
        await w.write(data)
        await w.commit()
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

    def run(self, namespace: str, image: Image) -> tuple[float, float]:
        """(seconds to write every blob of `image`, seconds to unpack its layers)."""
        return self.runner.run(self._run(namespace, image))

    async def _run(self, namespace: str, image: Image) -> tuple[float, float]:
        ns = self.cd.ns(namespace)
        async with lease(ns, owner="bench-floor", purpose="floor") as lns:
            content = ContentStore(lns)
            t0 = time.perf_counter()
            await _write(content, "manifest", image.digest, image.manifest)
            await _write(content, "config", image.config_digest, image.config)
            for la in image.layers:
                await _write(content, "layer", la.digest, la.blob)
            t1 = time.perf_counter()
            descs = [Descriptor(la.media_type, la.digest, len(la.blob)) for la in image.layers]
            diff_ids = tuple(la.diff_id for la in image.layers)
            await Unpacker(lns, self.snapshotter).unpack(image.config_digest, descs, diff_ids)
            t2 = time.perf_counter()
        return t1 - t0, t2 - t1
