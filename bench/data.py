"""Generated test images: incompressible layers from a seeded generator (same digests every run).

Layers are gzip level 1: random data does not compress at any level, and level 1 builds the
256 MiB image in seconds instead of a minute; decompression cost is the same.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import pathlib
import random
import tarfile
from dataclasses import dataclass

from tests.support import archives
from tests.support.archives import Image, Layer


@dataclass(frozen=True)
class Spec:
    """`layers` layers of `layer_size` random bytes each, one file per layer.

    `repeat` multiplies the runs of a cheap case: on this shared machine a half-second run moves
    by ±20% from minute to minute, and more rounds cost little there.
    """

    key: str
    layers: int
    layer_size: int
    seed: int
    repeat: int = 1

    @property
    def label(self) -> str:
        return f"{self.layers} layers x {_size(self.layer_size)}"

    @property
    def total_label(self) -> str:
        return _size(self.total)

    @property
    def total(self) -> int:
        return self.layers * self.layer_size


def _size(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):g} GiB"
    if n >= 1 << 20:
        return f"{n / (1 << 20):g} MiB"
    return f"{n / (1 << 10):g} KiB"


# randbytes takes at most 2^31 bits at once; larger layers are made of pieces of this size.
_PIECE = 64 << 20


def random_layer(seed: int, size: int, *, compress: bool = True) -> Layer:
    rng = random.Random(seed)
    data = (
        rng.randbytes(size)
        if size <= _PIECE
        else b"".join(rng.randbytes(min(_PIECE, size - i)) for i in range(0, size, _PIECE))
    )
    raw = archives.tar_bytes({f"data/layer-{seed}.bin": data})
    if not compress:
        return Layer(raw, raw, archives.OCI_LAYER)
    return Layer(raw, gzip.compress(raw, compresslevel=1, mtime=0), archives.OCI_LAYER_GZIP)


@functools.lru_cache(maxsize=4)
def make_image(spec: Spec, *, compress: bool = True) -> Image:
    """The image of `spec` (cached: pull and import use the same bytes)."""
    layers = [
        random_layer(spec.seed * 1000 + i, spec.layer_size, compress=compress) for i in range(spec.layers)
    ]
    return Image(layers, cmd=["/bin/true"])


def stored_blobs(image: Image) -> set[str]:
    return set(image.blobs())


def docker_stored(image: Image) -> Image:
    """What containerd stores for the docker-save form: the same image with uncompressed layers."""
    return Image([Layer(la.tar, la.tar, archives.OCI_LAYER) for la in image.layers], cmd=image.cmd)


def write_archives(image: Image, name: str, directory: pathlib.Path) -> dict[str, pathlib.Path]:
    """The image as a docker-save tar and as an OCI layout tar, named `name`."""
    directory.mkdir(parents=True, exist_ok=True)
    key = name.rsplit("/", 1)[-1].replace(":", "-")
    out = {
        "docker-archive": directory / f"{key}.docker.tar",
        "oci-archive": directory / f"{key}.oci.tar",
    }
    out["docker-archive"].write_bytes(archives.docker_archive([([name], image)]))
    out["oci-archive"].write_bytes(archives.oci_archive([(name, image)]))
    return out


# -- big archives, streamed to disk (never the whole archive in memory) ---------------------------


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
    tf.addfile(ti, io.BytesIO(data))


@dataclass
class BigArchive:
    path: pathlib.Path
    blobs: set[str]  # digests containerd will hold after importing it
    size: int


def write_big_archive(
    path: pathlib.Path, fmt: str, name: str, layers: int, layer_size: int, seed: int
) -> BigArchive:
    """A docker-save or OCI (uncompressed layers) archive of `layers` x `layer_size` random bytes.

    Layers are generated and written one at a time, so memory stays at one layer.
    """
    diff_ids: list[str] = []
    sizes: list[int] = []
    with open(path, "wb") as f, tarfile.open(fileobj=f, mode="w") as tf:
        if fmt == "oci-archive":
            _add_bytes(tf, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        layer_names = []
        for i in range(layers):
            la = random_layer(seed * 1000 + i, layer_size, compress=False)
            diff_ids.append(la.diff_id)
            sizes.append(len(la.tar))
            if fmt == "docker-archive":
                lname = la.diff_id.removeprefix("sha256:") + "/layer.tar"
            else:
                lname = "blobs/sha256/" + la.diff_id.removeprefix("sha256:")
            layer_names.append(lname)
            _add_bytes(tf, lname, la.tar)
            del la
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Cmd": ["/bin/true"]},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
                "created": "2026-01-01T00:00:00Z",
            },
            separators=(",", ":"),
        ).encode()
        config_digest = archives.sha(config)
        blobs = {config_digest, *diff_ids}
        if fmt == "docker-archive":
            _add_bytes(tf, config_digest.removeprefix("sha256:") + ".json", config)
            manifest = [
                {
                    "Config": config_digest.removeprefix("sha256:") + ".json",
                    "RepoTags": [name],
                    "Layers": layer_names,
                }
            ]
            _add_bytes(tf, "manifest.json", json.dumps(manifest).encode())
        else:
            _add_bytes(tf, "blobs/sha256/" + config_digest.removeprefix("sha256:"), config)
            manifest_doc = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": archives.OCI_MANIFEST,
                    "config": {
                        "mediaType": archives.OCI_CONFIG,
                        "digest": config_digest,
                        "size": len(config),
                    },
                    "layers": [
                        {"mediaType": archives.OCI_LAYER, "digest": d, "size": s}
                        for d, s in zip(diff_ids, sizes, strict=True)
                    ],
                },
                separators=(",", ":"),
            ).encode()
            mdigest = archives.sha(manifest_doc)
            blobs.add(mdigest)
            _add_bytes(tf, "blobs/sha256/" + mdigest.removeprefix("sha256:"), manifest_doc)
            index = {
                "schemaVersion": 2,
                "mediaType": archives.OCI_INDEX,
                "manifests": [
                    {
                        "mediaType": archives.OCI_MANIFEST,
                        "digest": mdigest,
                        "size": len(manifest_doc),
                        "platform": {"architecture": "amd64", "os": "linux"},
                        "annotations": {"io.containerd.image.name": name},
                    }
                ],
            }
            _add_bytes(tf, "index.json", json.dumps(index).encode())
    return BigArchive(path, blobs, path.stat().st_size)


def file_digest(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()
