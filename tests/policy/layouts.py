"""OCI layouts as `cosign save` writes them: the image, and beside it in index.json the cosign
signature manifest (`kind: dev.cosignproject.cosign/sigs`, the `.sig` tag's manifest), the
attestations (`.../atts`) and, for cosign 3, the bundle referrers of the image."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence
from typing import Any

from tests.support import archives
from tests.support.sigstore import BundleSignature, Descriptor, LegacySignature
from tests.support.sigstore.oci import (
    OCI_INDEX,
    OCI_MANIFEST,
    bundle_referrer_manifest,
    legacy_signature_manifest,
    referrers_tag,
)

KIND = "kind"  # cosign's pkg/oci/layout annotation key
KIND_IMAGE = "dev.cosignproject.cosign/image"
KIND_SIGS = "dev.cosignproject.cosign/sigs"
NAME = "io.containerd.image.name"


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
    tf.addfile(ti, io.BytesIO(data))


def signed_layout(
    name: str,
    image: archives.Image,
    *,
    legacy: Sequence[LegacySignature] = (),
    bundles: Sequence[BundleSignature] = (),
    bundle_subject: str | None = None,
    listed: bool = True,
    filler: int = 0,
) -> bytes:
    """An OCI layout tar naming `image` `name`, with its signatures beside it. `listed=False`
    keeps the bundle referrers out of index.json, in blobs/ only (as `cosign save` does);
    `filler` adds that many small blobs nothing refers to."""
    blobs: dict[str, bytes] = dict(image.blobs())
    entries: list[dict[str, Any]] = [image.descriptor(**{NAME: name, KIND: KIND_IMAGE})]
    if legacy:
        manifest, config = legacy_signature_manifest(legacy)
        blobs[archives.sha(config)] = config
        blobs.update({s.payload_digest: s.payload for s in legacy})
        blobs[archives.sha(manifest)] = manifest
        entries.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": archives.sha(manifest),
                "size": len(manifest),
                "annotations": {KIND: KIND_SIGS},
            }
        )
    subject = Descriptor(OCI_MANIFEST, bundle_subject or image.digest, len(image.manifest))
    for bundle in bundles:
        body = bundle_referrer_manifest(subject, bundle)
        blobs[archives.sha(b"{}")] = b"{}"
        blobs[archives.sha(bundle.json_bytes)] = bundle.json_bytes
        blobs[archives.sha(body)] = body
        if not listed:
            continue
        entries.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": archives.sha(body),
                "size": len(body),
                "artifactType": bundle.media_type,
                "annotations": {"org.opencontainers.image.ref.name": referrers_tag(image.digest)},
            }
        )
    for i in range(filler):
        data = f"filler {i}".encode()
        blobs[archives.sha(data)] = data
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        _add(tf, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add(
            tf,
            "index.json",
            json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode(),
        )
        for digest, data in blobs.items():
            _add(tf, f"blobs/sha256/{digest.removeprefix('sha256:')}", data)
    return buf.getvalue()
