"""Tar building blocks for archive tests: arbitrary members (links, devices, odd paths) and layouts.

tests.support.archives makes well-formed archives; these make the variants it cannot.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from dataclasses import dataclass
from typing import Any

import zstandard

from imaged.oci.platform import host_platform
from tests.support import archives as A


@dataclass
class M:
    """One tar member: a file (data), or another type with a link name."""

    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""


def tar(members: list[M], *, format: int = tarfile.USTAR_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=format) as tf:
        for m in members:
            ti = tarfile.TarInfo(m.name)
            ti.type, ti.linkname, ti.mode, ti.mtime = m.type, m.linkname, 0o644, 0
            if m.type == tarfile.REGTYPE:
                ti.size = len(m.data)
                tf.addfile(ti, io.BytesIO(m.data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def other_arch() -> str:
    return "arm64" if host_platform().architecture != "arm64" else "amd64"


def host_image(marker: str, *, docker: bool = False) -> A.Image:
    img = A.simple_image(marker, docker=docker)
    img.architecture = host_platform().architecture
    img.variant = host_platform().variant if img.architecture == "arm64" else ""
    return img


def foreign_image(marker: str) -> A.Image:
    """A small image for a platform that is not the host's (never runnable here)."""
    arch = other_arch()
    return A.Image(
        [A.layer({"foreign": marker.encode()})], architecture=arch, variant="v8" if arch == "arm64" else ""
    )


def oci_members(
    images: list[tuple[dict[str, str], A.Image]], *, extra_blobs: dict[str, bytes] | None = None
) -> list[M]:
    """An OCI layout's members: oci-layout, index.json (entries with the given annotations), blobs."""
    blobs: dict[str, bytes] = {}
    entries = []
    for annotated, img in images:
        blobs.update(img.blobs())
        entries.append(img.descriptor(**annotated))
    blobs.update(extra_blobs or {})
    index = {"schemaVersion": 2, "mediaType": A.OCI_INDEX, "manifests": entries}
    out = [M("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), M("index.json", json.dumps(index).encode())]
    out += [M(blob_name(d), data) for d, data in blobs.items()]
    return out


def index_json(entries: list[dict[str, Any]]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": A.OCI_INDEX, "manifests": entries}).encode()


def docker_members(images: list[tuple[list[str], A.Image]], *, compress: str = "") -> list[M]:
    """docker-save members; layers plain, or compressed with 'gzip' / 'zstd'."""
    out: list[M] = []
    entries = []
    seen: set[str] = set()
    for tags, img in images:
        layer_paths = []
        for la in img.layers:
            path = la.diff_id.removeprefix("sha256:") + "/layer.tar"
            data = la.tar
            if compress == "gzip":
                data = gzip.compress(la.tar, mtime=0)
            elif compress == "zstd":
                data = zstandard.ZstdCompressor().compress(la.tar)
            if path not in seen:
                out.append(M(path, data))
                seen.add(path)
            layer_paths.append(path)
        config_path = img.config_digest.removeprefix("sha256:") + ".json"
        if config_path not in seen:
            out.append(M(config_path, img.config))
            seen.add(config_path)
        entries.append({"Config": config_path, "RepoTags": tags, "Layers": layer_paths})
    out.append(M("manifest.json", json.dumps(entries).encode()))
    return out


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)
