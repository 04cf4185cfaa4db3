"""Run in a child process: import a generated archive of `--mib` MiB and print the peak RSS increase.

The archive streams from a generator (nothing of it is held here either): an OCI layout whose one
image (for another platform, so nothing is unpacked) has a single layer of the given size, with
every blob before index.json, the order that makes an importer wait longest for metadata.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import resource
import tarfile
from collections.abc import AsyncIterator, Iterator

from imaged.archive import import_archive
from imaged.containerd.client import Containerd

MIB = 1024 * 1024


def layer_pieces(mib: int) -> Iterator[bytes]:
    seed = hashlib.sha256(b"memory-probe").digest() * (MIB // 32)
    for i in range(mib):
        yield i.to_bytes(8, "big") + seed[8:]


def header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o644
    return info.tobuf(tarfile.USTAR_FORMAT)


def member(name: str, data: bytes) -> bytes:
    return header(name, len(data)) + data + bytes(-len(data) % 512)


def archive(mib: int, name: str) -> tuple[Iterator[bytes], int]:
    h = hashlib.sha256()
    for piece in layer_pieces(mib):
        h.update(piece)
    layer_digest, layer_size = "sha256:" + h.hexdigest(), mib * MIB
    config = json.dumps(
        {
            "architecture": "s390x",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]},
        }
    ).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest,
                    "size": layer_size,
                }
            ],
        }
    ).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest,
                    "size": len(manifest),
                    "annotations": {"io.containerd.image.name": name},
                }
            ],
        }
    ).encode()

    def gen() -> Iterator[bytes]:
        yield header("blobs/sha256/" + layer_digest[7:], layer_size)
        yield from layer_pieces(mib)
        yield member("blobs/sha256/" + config_digest[7:], config)
        yield member("blobs/sha256/" + manifest_digest[7:], manifest)
        yield member("index.json", index)
        yield member("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        yield bytes(1024)

    return gen(), layer_size


async def chunked(pieces: Iterator[bytes], size: int) -> AsyncIterator[bytes]:
    buf = b""
    for piece in pieces:
        buf += piece
        while len(buf) >= size:
            yield buf[:size]
            buf = buf[size:]
    if buf:
        yield buf


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--socket", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--mib", type=int, required=True)
    p.add_argument("--name", required=True)
    args = p.parse_args()
    cd = Containerd(args.socket)
    ns = cd.ns(args.namespace)
    opts = {"snapshotter": "overlayfs", "owner": "memory-probe", "lease_expire": dt.timedelta(minutes=30)}
    warm, _ = archive(1, args.name + "-warmup")
    await import_archive(ns, chunked(warm, 64 * 1024), **opts)  # type: ignore[arg-type]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pieces, _ = archive(args.mib, args.name)
    names = await import_archive(ns, chunked(pieces, 64 * 1024), **opts)  # type: ignore[arg-type]
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    await cd.close()
    print(json.dumps({"names": names, "rss_before_kib": before, "rss_after_kib": after}))


if __name__ == "__main__":
    asyncio.run(main())
