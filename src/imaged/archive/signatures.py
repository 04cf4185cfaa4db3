"""Signatures an archive carries beside its images, for the import policy.

`cosign save` writes an OCI layout whose index.json lists, besides the image (annotation
`kind: dev.cosignproject.cosign/image`), the manifest of its `sha256-<hex>.sig` tag
(`kind: dev.cosignproject.cosign/sigs`: simple-signing layers) and of its attestations
(`.../atts`); a layout copied from a registry may also list cosign 3's bundle referrers (a
manifest with the bundle artifact type and the image as `subject`) or the referrers tag's index.
The annotations are not trusted: every index.json entry the import does not record as an image
is read and kept for what it holds, and nothing here is a verdict. Each signature still has to
verify for the imported digest (the simple-signing payload or the in-toto statement names it,
which the verifiers check), under the rule matched by the name.

Bounded like registry discovery: at most 32 entries looked at, 32 signatures, 1 MiB a blob.
"""

from __future__ import annotations

from dataclasses import dataclass

from imaged.archive.ingest import INDEX_JSON, ArchiveContents
from imaged.archive.limits import ImportLimits
from imaged.containerd.content import ContentStore
from imaged.errors import InvalidArgument, NotFound, ResourceExhausted
from imaged.oci import mediatypes as mt
from imaged.oci.manifest import Descriptor, Manifest, parse_index, parse_manifest
from imaged.verify.material import (
    BUNDLE_MEDIA_TYPE,
    SIMPLE_SIGNING_MEDIA_TYPE,
    BundleSignature,
    Signature,
    SimpleSigning,
)

MAX_ENTRIES = 32
MAX_SIGNATURES = 32
MAX_BLOB = 1024 * 1024
BUNDLE_TYPES = frozenset({BUNDLE_MEDIA_TYPE, "application/vnd.dev.sigstore.bundle+json;version=0.3"})


@dataclass(frozen=True, slots=True)
class ArchiveSignature:
    """A signature found in the archive; `subject` is the digest a bundle referrer names (None
    for simple-signing layers, whose payload names the image)."""

    signature: Signature
    subject: str | None = None

    def concerns(self, digest: str) -> bool:
        return self.subject is None or self.subject == digest


class _Reader:
    def __init__(self, contents: ArchiveContents, store: ContentStore, limits: ImportLimits) -> None:
        self.c = contents
        self.store = store
        self.limits = limits

    async def read(self, d: Descriptor, limit: int) -> bytes | None:
        """The blob's bytes if the archive holds it at its descriptor's size, within `limit`."""
        blob = self.c.by_digest.get(d.digest)
        if blob is None or blob.size != d.size or d.size > limit:
            return None
        if blob.data is not None:
            return blob.data
        try:
            return await self.store.read_all(d.digest, limit)
        except (NotFound, ResourceExhausted):
            return None


def _signatures_of(m: Manifest, digest: str, blobs: list[tuple[Descriptor, bytes]]) -> list[ArchiveSignature]:
    kind = m.artifact_type or m.config.media_type
    out: list[ArchiveSignature] = []
    for i, (layer, data) in enumerate(blobs):
        if kind in BUNDLE_TYPES and layer.media_type in BUNDLE_TYPES and m.subject is not None:
            where = f"bundle referrer {digest} in the archive"
            how = f"verified via bundle referrer with digest {digest} in the archive"
            out.append(ArchiveSignature(BundleSignature(data, where=where, how=how), m.subject.digest))
        elif layer.media_type == SIMPLE_SIGNING_MEDIA_TYPE:
            where = f"legacy signature {digest} layer {i} in the archive"
            how = "verified via legacy signature in the archive"
            out.append(ArchiveSignature(SimpleSigning(data, layer.annotations, where=where, how=how)))
    return out


async def _manifest_signatures(r: _Reader, d: Descriptor) -> list[ArchiveSignature]:
    data = await r.read(d, r.limits.max_metadata)
    if data is None:
        return []
    try:
        m = parse_manifest(data, f"manifest {d.digest}")
    except InvalidArgument:
        return []
    wanted = [
        layer
        for layer in m.layers
        if layer.media_type in BUNDLE_TYPES or layer.media_type == SIMPLE_SIGNING_MEDIA_TYPE
    ][:MAX_SIGNATURES]
    blobs = [(layer, data) for layer in wanted if (data := await r.read(layer, MAX_BLOB)) is not None]
    return _signatures_of(m, d.digest, blobs)


async def archive_signatures(
    contents: ArchiveContents, store: ContentStore, limits: ImportLimits, images: set[str]
) -> list[ArchiveSignature]:
    """Signatures listed in index.json beside the images (whose digests are `images`)."""
    doc = contents.documents.get(INDEX_JSON)
    if doc is None:
        return []
    r = _Reader(contents, store, limits)
    try:
        entries = [d for d in parse_index(doc, "index.json").manifests if d.digest not in images]
    except InvalidArgument:
        return []
    out: list[ArchiveSignature] = []
    looked = 0
    for d in entries:
        if looked >= MAX_ENTRIES or len(out) >= MAX_SIGNATURES:
            break
        looked += 1
        if mt.is_manifest(d.media_type):
            out += await _manifest_signatures(r, d)
        elif mt.is_index(d.media_type):  # a referrers tag (`sha256-<hex>`) saved as it is
            data = await r.read(d, limits.max_metadata)
            try:
                listed = parse_index(data, f"index {d.digest}").manifests if data is not None else ()
            except InvalidArgument:
                continue
            for child in listed[:MAX_ENTRIES]:
                if mt.is_manifest(child.media_type) and child.digest not in images:
                    out += await _manifest_signatures(r, child)
    return out[:MAX_SIGNATURES]
