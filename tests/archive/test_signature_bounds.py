"""What an import reads of the signatures an archive carries is bounded in all, not only per blob:
each blob once, bundle layers only in bundle manifests, one budget for the whole archive."""

from __future__ import annotations

import hashlib
import json

import pytest

from imaged.archive import signatures as sigs
from imaged.archive.ingest import ArchiveContents, Blob
from imaged.archive.limits import ImportLimits
from imaged.oci import mediatypes as mt
from imaged.verify.material import BUNDLE_MEDIA_TYPE, SIMPLE_SIGNING_MEDIA_TYPE

IMAGE = "sha256:" + "1" * 64


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _desc(media_type: str, data: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": _sha(data), "size": len(data)}


def _archive(layer_type: str, layer: bytes) -> ArchiveContents:
    """index.json lists one index 32 times; it lists one manifest 32 times; that manifest lists
    one layer 32 times (the amplification a review built: 1,024 copies of the layer)."""
    config = b"{}"
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": _desc("application/vnd.oci.image.config.v1+json", config),
            "layers": [_desc(layer_type, layer)] * 32,
        }
    ).encode()
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [_desc(mt.OCI_MANIFEST, manifest)] * 32}
    ).encode()
    top = {"schemaVersion": 2, "manifests": [_desc(mt.OCI_INDEX, index)] * 32}
    contents = ArchiveContents(documents={"index.json": json.dumps(top).encode()})
    for blob in (layer, config, manifest, index):
        contents.by_digest[_sha(blob)] = Blob(
            f"blobs/sha256/{_sha(blob)[7:]}", _sha(blob), len(blob), "", blob
        )
    return contents


@pytest.mark.parametrize("layer_type", [SIMPLE_SIGNING_MEDIA_TYPE, BUNDLE_MEDIA_TYPE])
async def test_each_blob_is_read_once_and_bundle_layers_only_in_bundles(
    layer_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = b"s" * (512 * 1024)
    contents = _archive(layer_type, layer)
    read: list[int] = []
    real = sigs._Reader.read_digest

    async def counted(self: sigs._Reader, digest: str, limit: int) -> bytes | None:
        data = await real(self, digest, limit)
        read.append(len(data or b""))
        return data

    monkeypatch.setattr(sigs._Reader, "read_digest", counted)
    source = sigs.ArchiveSignatures(contents, None, ImportLimits(), {IMAGE})  # type: ignore[arg-type]
    material = await source.of(IMAGE)
    # The layer once (simple signing) or never (a bundle layer in a manifest that is no bundle).
    assert sum(read) < len(layer) + 64 * 1024, (len(read), sum(read))
    assert len(material.signatures) == (1 if layer_type == SIMPLE_SIGNING_MEDIA_TYPE else 0)
    again = await source.of(IMAGE)  # another name of the image: nothing read again
    assert len(again.signatures) == len(material.signatures)
    assert sum(read) < len(layer) + 64 * 1024


async def test_the_archive_has_one_budget_for_its_signature_material(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sigs, "MAX_MATERIAL_BYTES", 256 * 1024)
    contents = _archive(SIMPLE_SIGNING_MEDIA_TYPE, b"s" * (512 * 1024))
    source = sigs.ArchiveSignatures(contents, None, ImportLimits(), {IMAGE})  # type: ignore[arg-type]
    material = await source.of(IMAGE)
    assert material.signatures == []
    assert any("the rest were not read" in n for n in material.notes), material.notes
