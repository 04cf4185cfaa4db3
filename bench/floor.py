"""The floor: what containerd itself needs to store and unpack the same bytes.

From the bench process, with imaged's own containerd client (imaged.containerd): every blob of
the image is written from memory into the content store (manifest, config, layers; up to 4
layer writers at once, like a pull) and each layer is applied with the Unpacker as soon as it
and its parents are in. No registry, no archive parsing, no verification, no records: the time
left is containerd's content ingestion (hashing, fsync) and Diff.Apply (decompress + untar into
the snapshot), plus the gRPC transfer of the bytes. Everything is under one lease, deleted at the
end; the caller's cold cleanup then collects it.
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

CONCURRENCY = 4


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

    def run(self, namespace: str, image: Image) -> float:
        """Seconds to write every blob of `image` and unpack its layers."""
        return self.runner.run(self._run(namespace, image))

    async def _run(self, namespace: str, image: Image) -> float:
        ns = self.cd.ns(namespace)
        start = time.perf_counter()
        async with lease(ns, owner="bench-floor", purpose="floor") as lns:
            content = ContentStore(lns)
            await _write(content, "manifest", image.digest, image.manifest)
            await _write(content, "config", image.config_digest, image.config)
            done = [asyncio.Event() for _ in image.layers]
            sem = asyncio.Semaphore(CONCURRENCY)

            async def one(i: int) -> None:
                la = image.layers[i]
                async with sem:
                    await _write(content, "layer", la.digest, la.blob)
                done[i].set()

            async def ready(i: int) -> None:
                await done[i].wait()

            descs = [Descriptor(la.media_type, la.digest, len(la.blob)) for la in image.layers]
            diff_ids = tuple(la.diff_id for la in image.layers)
            unpacker = Unpacker(lns, self.snapshotter)
            async with asyncio.TaskGroup() as tg:
                for i in range(len(image.layers)):
                    tg.create_task(one(i))
                tg.create_task(unpacker.unpack(image.config_digest, descs, diff_ids, ready=ready))
            elapsed = time.perf_counter() - start
        return elapsed
