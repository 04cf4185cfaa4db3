"""Build real image archives in Python: OCI layout and docker-save tars, with busybox layers.

Deterministic and fast, so tests can make many images and malformed variants; `ctr images
import` and `skopeo` accept what this writes, which keeps it honest.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from typing import Any

BUSYBOX = "/bin/busybox"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_bytes(entries: dict[str, bytes | tuple[str, str]]) -> bytes:
    """A tar of files (bytes) and symlinks (("symlink", target)); directories are implied."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        dirs: set[str] = set()
        for name in sorted(entries):
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    ti = tarfile.TarInfo(d)
                    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
                    tf.addfile(ti)
            value = entries[name]
            ti = tarfile.TarInfo(name)
            ti.mtime = 0
            if isinstance(value, tuple):
                ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, value[1], 0o777
                tf.addfile(ti)
            else:
                ti.size, ti.mode = len(value), 0o755
                tf.addfile(ti, io.BytesIO(value))
    return buf.getvalue()


@dataclass
class Layer:
    tar: bytes
    blob: bytes
    media_type: str

    @property
    def diff_id(self) -> str:
        return sha(self.tar)

    @property
    def digest(self) -> str:
        return sha(self.blob)


OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def layer(
    entries: dict[str, bytes | tuple[str, str]], *, docker: bool = False, compress: bool = True
) -> Layer:
    raw = tar_bytes(entries)
    if not compress:
        return Layer(raw, raw, OCI_LAYER)
    return Layer(raw, gzip.compress(raw, mtime=0), DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP)


def busybox_layer(*, docker: bool = False) -> Layer:
    with open(BUSYBOX, "rb") as f:
        bb = f.read()
    return layer(
        {"bin/busybox": bb, "bin/echo": ("symlink", "busybox"), "bin/sh": ("symlink", "busybox")},
        docker=docker,
    )


@dataclass
class Image:
    """One image: layers, a config, and the manifest over them (OCI or Docker schema2)."""

    layers: list[Layer]
    cmd: list[str] = field(default_factory=lambda: ["/bin/echo", "hello"])
    docker: bool = False
    architecture: str = "amd64"
    os: str = "linux"
    variant: str = ""
    user: str = ""  # the config's `User` ("1002", "www-data:1004", ...)

    @property
    def config(self) -> bytes:
        run: dict[str, Any] = {"Cmd": self.cmd, "Env": ["PATH=/bin"]}
        if self.user:
            run["User"] = self.user
        doc: dict[str, Any] = {
            "architecture": self.architecture,
            "os": self.os,
            "config": run,
            "rootfs": {"type": "layers", "diff_ids": [lay.diff_id for lay in self.layers]},
            "created": "2026-01-01T00:00:00Z",
        }
        if self.variant:
            doc["variant"] = self.variant
        return json.dumps(doc, separators=(",", ":")).encode()

    @property
    def manifest(self) -> bytes:
        doc = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST if self.docker else OCI_MANIFEST,
            "config": {
                "mediaType": DOCKER_CONFIG if self.docker else OCI_CONFIG,
                "digest": sha(self.config),
                "size": len(self.config),
            },
            "layers": [
                {"mediaType": la.media_type, "digest": la.digest, "size": len(la.blob)} for la in self.layers
            ],
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @property
    def digest(self) -> str:
        return sha(self.manifest)

    @property
    def config_digest(self) -> str:
        return sha(self.config)

    @property
    def size(self) -> int:
        """manifest + config + layers: what List reports for a single-manifest image."""
        return len(self.manifest) + len(self.config) + sum(len(la.blob) for la in self.layers)

    def blobs(self) -> dict[str, bytes]:
        out = {sha(self.manifest): self.manifest, sha(self.config): self.config}
        out.update({la.digest: la.blob for la in self.layers})
        return out

    def descriptor(self, **annotations: str) -> dict[str, Any]:
        d: dict[str, Any] = {
            "mediaType": DOCKER_MANIFEST if self.docker else OCI_MANIFEST,
            "digest": self.digest,
            "size": len(self.manifest),
            "platform": {"architecture": self.architecture, "os": self.os},
        }
        if self.variant:
            d["platform"]["variant"] = self.variant
        if annotations:
            d["annotations"] = annotations
        return d


def simple_image(marker: str = "hello", *, docker: bool = False) -> Image:
    """A runnable busybox image plus one small layer that makes it unique per `marker`."""
    return Image(
        [busybox_layer(docker=docker), layer({"etc/marker": marker.encode()}, docker=docker)],
        cmd=["/bin/echo", marker],
        docker=docker,
    )


@dataclass
class Index:
    """An OCI image index over `images`, each described with its platform."""

    images: list[Image]

    @property
    def manifest(self) -> bytes:
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [i.descriptor() for i in self.images]}
        return json.dumps(doc, separators=(",", ":")).encode()

    @property
    def digest(self) -> str:
        return sha(self.manifest)


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
    tf.addfile(ti, io.BytesIO(data))


def oci_archive(
    images: list[tuple[str, Image]], *, name_annotation: str = "io.containerd.image.name"
) -> bytes:
    """An OCI image layout tar; each image named by `name_annotation` in index.json."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        _add(tf, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        blobs: dict[str, bytes] = {}
        manifests = []
        for name, img in images:
            blobs.update(img.blobs())
            manifests.append(img.descriptor(**{name_annotation: name}))
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        _add(tf, "index.json", json.dumps(index).encode())
        for digest, data in blobs.items():
            _add(tf, f"blobs/sha256/{digest.removeprefix('sha256:')}", data)
    return buf.getvalue()


def docker_archive(images: list[tuple[list[str], Image]]) -> bytes:
    """A docker-save tar (manifest.json + config + layer.tar files, uncompressed layers)."""
    buf = io.BytesIO()
    entries = []
    with tarfile.open(fileobj=buf, mode="w") as tf:
        written: set[str] = set()
        for tags, img in images:
            cfg_name = img.config_digest.removeprefix("sha256:") + ".json"
            layer_names = []
            for la in img.layers:
                lname = la.diff_id.removeprefix("sha256:") + "/layer.tar"
                if lname not in written:
                    _add(tf, lname, la.tar)
                    written.add(lname)
                layer_names.append(lname)
            if cfg_name not in written:
                _add(tf, cfg_name, img.config)
                written.add(cfg_name)
            entries.append({"Config": cfg_name, "RepoTags": tags, "Layers": layer_names})
        _add(tf, "manifest.json", json.dumps(entries).encode())
    return buf.getvalue()


def push(registry: Any, repo: str, tag: str, image: Image) -> str:
    """Push `image` to a tests.support.registry.Registry as repo:tag; return the manifest digest."""
    from tests.support.sigstore import OciPusher

    pusher = OciPusher(registry)
    for la in image.layers:
        pusher.push_blob(repo, la.blob, la.media_type)
    pusher.push_blob(repo, image.config, DOCKER_CONFIG if image.docker else OCI_CONFIG)
    pusher.put_manifest(repo, tag, image.manifest, DOCKER_MANIFEST if image.docker else OCI_MANIFEST)
    return image.digest


def push_index(registry: Any, repo: str, tags: list[str], index: Index) -> str:
    """Push every image of `index` by digest, then the index as each of `tags`; return its digest."""
    from tests.support.sigstore import OciPusher

    pusher = OciPusher(registry)
    for image in index.images:
        for la in image.layers:
            pusher.push_blob(repo, la.blob, la.media_type)
        pusher.push_blob(repo, image.config, DOCKER_CONFIG if image.docker else OCI_CONFIG)
        media_type = DOCKER_MANIFEST if image.docker else OCI_MANIFEST
        pusher.put_manifest(repo, image.digest, image.manifest, media_type)
    for tag in tags:
        pusher.put_manifest(repo, tag, index.manifest, OCI_INDEX)
    return index.digest
