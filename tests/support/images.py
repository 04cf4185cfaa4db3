"""Building small real test images offline (umoci + busybox-static) and pushing them with skopeo.

- `build_test_layout(dir, layers=1)`: an OCI layout `dir` with image `app` whose root holds
  `/bin/busybox` and the symlink `/bin/echo`; cmd `/bin/echo hello` (runs under containerd).
  `layers > 1` adds small extra layers (`/layer-N.txt`).
- `push_test_image(registry, repo, tag, layers=1, schema="oci"|"docker") -> manifest digest`.
- `push_multiplatform_image(registry, repo, tag) -> MultiPlatformImage`: an OCI index with the runnable
  linux/amd64 image above and a linux/arm64 manifest whose config and layer are small fakes (only for
  platform selection: it would not run), pushed with `skopeo copy --all`.
- `copy_to_archive(layout, archive, name, kind="docker"|"oci")`: docker-save or OCI archive tarballs.

`registry` is a tests.support.registry.Registry (anything with `.host` and `.skopeo_dest_args()`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import pathlib
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from typing import Any, Literal, Protocol

BUSYBOX = "/bin/busybox"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class PushTarget(Protocol):
    @property
    def host(self) -> str: ...

    def skopeo_dest_args(self) -> list[str]: ...


def _run(*args: str, timeout: float = 120) -> str:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def build_test_layout(dir: pathlib.Path, *, layers: int = 1, image: str = "app") -> pathlib.Path:
    """Create (or extend) the OCI layout at `dir` with image `image`; returns `dir`."""
    if layers < 1:
        raise ValueError("layers must be >= 1")
    layout = f"{dir}:{image}"  # umoci syntax: <layout dir>:<tag>
    if not (dir / "oci-layout").exists():
        _run("umoci", "init", "--layout", str(dir))
    _run("umoci", "new", "--image", layout)
    with tempfile.TemporaryDirectory(prefix="ibundle-", dir="/tmp") as tmp:
        bundle = pathlib.Path(tmp) / "bundle"
        _run("umoci", "unpack", "--rootless", "--image", layout, str(bundle))
        bindir = bundle / "rootfs" / "bin"
        bindir.mkdir(parents=True, exist_ok=True)
        shutil.copy(BUSYBOX, bindir / "busybox")
        (bindir / "echo").symlink_to("busybox")
        _run("umoci", "repack", "--image", layout, str(bundle))
        for n in range(2, layers + 1):
            shutil.rmtree(bundle)
            _run("umoci", "unpack", "--rootless", "--image", layout, str(bundle))
            (bundle / "rootfs" / f"layer-{n}.txt").write_text(f"layer {n} of {image}\n")
            _run("umoci", "repack", "--image", layout, str(bundle))
    _run(
        "umoci",
        "config",
        "--image",
        layout,
        "--config.cmd",
        "/bin/echo",
        "--config.cmd",
        "hello",
        "--os",
        "linux",
        "--architecture",
        "amd64",
    )
    return dir


def _digestfile_push(src: str, registry: PushTarget, repo: str, tag: str, extra: list[str]) -> str:
    with tempfile.TemporaryDirectory(prefix="ipush-", dir="/tmp") as tmp:
        digestfile = pathlib.Path(tmp) / "digest"
        _run(
            "skopeo",
            "copy",
            "--quiet",
            *extra,
            *registry.skopeo_dest_args(),
            f"--digestfile={digestfile}",
            src,
            f"docker://{registry.host}/{repo}:{tag}",
            timeout=300,
        )
        return digestfile.read_text().strip()


def push_test_image(
    registry: PushTarget,
    repo: str,
    tag: str,
    *,
    layers: int = 1,
    schema: Literal["oci", "docker"] = "oci",
) -> str:
    """Build the busybox test image and push it as `registry.host/repo:tag`; returns the manifest digest.

    `schema="docker"` pushes Docker schema2 media types (`skopeo --format v2s2`).
    """
    with tempfile.TemporaryDirectory(prefix="iimg-", dir="/tmp") as tmp:
        layout = build_test_layout(pathlib.Path(tmp) / "layout", layers=layers)
        extra = ["--format", "v2s2"] if schema == "docker" else ["--format", "oci"]
        return _digestfile_push(f"oci:{layout}:app", registry, repo, tag, extra)


def copy_to_archive(
    layout: pathlib.Path,
    archive: pathlib.Path,
    name: str,
    *,
    kind: Literal["docker", "oci"] = "docker",
    image: str = "app",
) -> pathlib.Path:
    """Write image `image` of `layout` as a docker-save (`kind="docker"`) or OCI archive named `name`."""
    dest = f"docker-archive:{archive}:{name}" if kind == "docker" else f"oci-archive:{archive}:{name}"
    _run("skopeo", "copy", "--quiet", f"oci:{layout}:{image}", dest, timeout=300)
    return archive


# -- multi-platform ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MultiPlatformImage:
    index_digest: str
    amd64_digest: str
    arm64_digest: str


def _put_blob(layout: pathlib.Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest, len(data)


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def _fake_layer(text: str) -> tuple[bytes, str]:
    """A gzip tar with one small file; returns (compressed bytes, diff id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = text.encode()
        info = tarfile.TarInfo("fake.txt")
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), "sha256:" + hashlib.sha256(tar_bytes).hexdigest()


def build_multiplatform_layout(
    dir: pathlib.Path, *, tag: str = "multi"
) -> tuple[pathlib.Path, MultiPlatformImage]:
    """An OCI layout whose `tag` is an index of linux/amd64 (runnable) and linux/arm64 (fake) images."""
    build_test_layout(dir)
    top = json.loads((dir / "index.json").read_text())
    amd64 = next(
        m
        for m in top["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "app"
    )
    amd64_desc = {
        "mediaType": OCI_MANIFEST,
        "digest": amd64["digest"],
        "size": amd64["size"],
        "platform": {"architecture": "amd64", "os": "linux"},
    }

    layer, diff_id = _fake_layer("not a real arm64 image\n")
    layer_digest, layer_size = _put_blob(dir, layer)
    config = {
        "architecture": "arm64",
        "variant": "v8",
        "os": "linux",
        "config": {"Cmd": ["/bin/echo", "hello"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    config_digest, config_size = _put_blob(dir, _canonical(config))
    arm_manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer_digest,
                "size": layer_size,
            }
        ],
    }
    arm_digest, arm_size = _put_blob(dir, _canonical(arm_manifest))
    arm_desc = {
        "mediaType": OCI_MANIFEST,
        "digest": arm_digest,
        "size": arm_size,
        "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
    }

    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [amd64_desc, arm_desc]}
    index_digest, index_size = _put_blob(dir, _canonical(index))
    top["manifests"].append(
        {
            "mediaType": OCI_INDEX,
            "digest": index_digest,
            "size": index_size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }
    )
    (dir / "index.json").write_text(json.dumps(top))
    return dir, MultiPlatformImage(index_digest, amd64["digest"], arm_digest)


def push_multiplatform_image(registry: PushTarget, repo: str, tag: str) -> MultiPlatformImage:
    """Push a two-platform OCI index (linux/amd64 runnable, linux/arm64 fake) as `repo:tag`."""
    with tempfile.TemporaryDirectory(prefix="iimg-", dir="/tmp") as tmp:
        layout, image = build_multiplatform_layout(pathlib.Path(tmp) / "layout")
        pushed = _digestfile_push(f"oci:{layout}:multi", registry, repo, tag, ["--all", "--preserve-digests"])
        if pushed != image.index_digest:
            raise RuntimeError(f"skopeo pushed index {pushed}, built {image.index_digest}")
        return image
