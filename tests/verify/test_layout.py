"""The OCI layout reader of `imagectl policy test --offline` (imaged.verify.layout): which image a
layout stands for, where an image's layout is, and the bounds on what it reads from disk. The
verdicts themselves, on real `cosign save` output, are in tests/cli/test_policy.py."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

import pytest

from imaged.errors import DataLoss, InvalidArgument, NotFound, ResourceExhausted
from imaged.registry.reference import parse
from imaged.verify import layout as layout_mod
from imaged.verify.layout import LayoutRegistry, layout_path
from tests.support import archives

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"


def write_blob(root: pathlib.Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return digest


def make_layout(root: pathlib.Path, entries: list[dict[str, object]] | None = None) -> archives.Image:
    """A layout holding one image; index.json lists `entries` (default: the image, cosign's kind)."""
    image = archives.simple_image("layout-unit")
    for data in image.blobs().values():
        write_blob(root, data)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    listed = entries if entries is not None else [image.descriptor(kind="dev.cosignproject.cosign/image")]
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": listed}))
    return image


def referrer(root: pathlib.Path, subject: str, pad: int = 0) -> str:
    bundle = write_blob(root, b'{"mediaType":"' + BUNDLE.encode() + b'"}')
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": BUNDLE,
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": write_blob(root, b"{}"),
            "size": 2,
        },
        "layers": [{"mediaType": BUNDLE, "digest": bundle, "size": 100}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1},
        "annotations": {"pad": "x" * pad},
    }
    return write_blob(root, json.dumps(body).encode())


async def test_the_image_is_cosigns_entry_or_the_named_or_the_only_one(tmp_path: pathlib.Path) -> None:
    image = make_layout(tmp_path / "kind")
    ref = parse("registry.example/app:v1")
    assert (
        await LayoutRegistry(tmp_path / "kind", "registry.example/app:v1").resolve(ref)
    ).digest == image.digest
    # skopeo's oci:DIR:TAG names the entry by its tag; two entries, one of them named v1.
    other = {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "cd" * 32, "size": 1}
    named = image.descriptor(**{"org.opencontainers.image.ref.name": "v1"})
    make_layout(tmp_path / "named", [other, named])
    assert (
        await LayoutRegistry(tmp_path / "named", "registry.example/app:v1").resolve(ref)
    ).digest == image.digest
    with pytest.raises(InvalidArgument, match="cannot tell which image"):
        await LayoutRegistry(tmp_path / "named", "registry.example/app:v2").resolve(ref)


async def test_referrers_are_the_blobs_whose_subject_is_the_image(tmp_path: pathlib.Path) -> None:
    image = make_layout(tmp_path)
    mine = referrer(tmp_path, image.digest)
    referrer(tmp_path, "sha256:" + "ef" * 32)  # another image's
    big = referrer(tmp_path, image.digest, pad=layout_mod.MAX_REFERRER_SIZE)  # not read
    reg = LayoutRegistry(tmp_path, "registry.example/app:v1")
    index = await reg.referrers(parse("registry.example/app:v1"), image.digest)
    assert [d.digest for d in index.manifests] == [mine] and big != mine
    assert index.manifests[0].artifact_type == BUNDLE
    with pytest.raises(NotFound, match="holds the image"):
        await reg.referrers(parse("registry.example/app:v1"), "sha256:" + "ab" * 32)


async def test_an_altered_blob_is_data_loss(tmp_path: pathlib.Path) -> None:
    image = make_layout(tmp_path)
    mine = referrer(tmp_path, image.digest)
    path = tmp_path / "blobs" / "sha256" / mine[7:]
    path.write_bytes(path.read_bytes().replace(b"x", b"y") + b" ")
    reg = LayoutRegistry(tmp_path, "registry.example/app:v1")
    with pytest.raises(DataLoss, match="does not match its digest"):
        await reg.referrers(parse("registry.example/app:v1"), image.digest)
    with pytest.raises(DataLoss):
        await reg.get_manifest(parse("registry.example/app:v1"), mine)


async def test_reads_are_bounded(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = make_layout(tmp_path)
    ref = parse("registry.example/app:v1")
    reg = LayoutRegistry(tmp_path, "registry.example/app:v1")
    big = write_blob(tmp_path, b"x" * 2000)
    with pytest.raises(ResourceExhausted, match="over the 1000 byte limit"):
        await reg.get_blob(ref, big, max_size=1000)
    with pytest.raises(NotFound):
        await reg.get_blob(ref, "sha256:" + "00" * 32, max_size=1000)
    monkeypatch.setattr(layout_mod, "MAX_SCANNED", 3)
    with pytest.raises(ResourceExhausted, match="more than 3 blobs"):
        await LayoutRegistry(tmp_path, "registry.example/app:v1").referrers(ref, image.digest)
    monkeypatch.setattr(layout_mod, "MAX_SCANNED", 4096)
    monkeypatch.setattr(layout_mod, "MAX_SCAN_BYTES", 100)
    with pytest.raises(ResourceExhausted, match="read over 100 bytes"):
        await LayoutRegistry(tmp_path, "registry.example/app:v1").referrers(ref, image.digest)


async def test_a_fifo_or_a_bad_digest_in_index_json_is_refused(tmp_path: pathlib.Path) -> None:
    make_layout(
        tmp_path / "bad", [{"mediaType": OCI_MANIFEST, "digest": "sha256:../../etc/passwd", "size": 1}]
    )
    with pytest.raises(InvalidArgument, match="invalid digest"):
        await LayoutRegistry(tmp_path / "bad", "a.example/app:v1").resolve(parse("a.example/app:v1"))
    fifo = tmp_path / "fifo"
    make_layout(fifo)
    (fifo / "index.json").unlink()
    os.mkfifo(fifo / "index.json")
    # A FIFO without a writer: refused at once, never waited on.
    with pytest.raises(InvalidArgument, match="not a regular file"):
        await LayoutRegistry(fifo, "a.example/app:v1").resolve(parse("a.example/app:v1"))


def test_layout_path(tmp_path: pathlib.Path) -> None:
    (tmp_path / "ghcr.io/org/app:v1").mkdir(parents=True)
    assert layout_path(tmp_path, "ghcr.io/org/app:v1", single=False) == tmp_path / "ghcr.io/org/app:v1"
    (tmp_path / "docker.io/library/busybox:latest").mkdir(parents=True)
    got = layout_path(tmp_path, "busybox", single=False)
    assert got == tmp_path / "docker.io/library/busybox:latest"  # the normalized name, when only it exists
    assert layout_path(tmp_path, "a.example/none:v1", single=False) == tmp_path / "a.example/none:v1"
    one = tmp_path / "one"
    make_layout(one)
    assert layout_path(one, "a.example/x:v1", single=True) == one
    with pytest.raises(InvalidArgument, match="one image only"):
        layout_path(one, "a.example/x:v1", single=False)
    with pytest.raises(InvalidArgument):
        layout_path(tmp_path, "a.example/../../etc:v1", single=False)


async def test_the_scan_counts_what_it_read_not_what_was_listed() -> None:
    """A blob may grow between its listing and its read (a directory being written): the budget
    is charged with the bytes read, so the scan stops at MAX_SCAN_BYTES whatever the listing said."""
    listed = [(f"sha256:{i:064x}", 1) for i in range(layout_mod.MAX_SCANNED)]
    reads: list[str] = []

    async def read(blob: str, limit: int) -> bytes | None:
        reads.append(blob)
        return b"x" * limit  # grew to the per-blob limit since it was listed

    with pytest.raises(ResourceExhausted, match="read over"):
        await layout_mod.scan_referrers(listed, read, {"sha256:" + "0" * 64}, "a growing layout")
    assert len(reads) == layout_mod.MAX_SCAN_BYTES // layout_mod.MAX_REFERRER_SIZE + 1
