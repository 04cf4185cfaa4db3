"""Signatures and attestations an archive carries beside its images, for the import policy.

`cosign save` writes an OCI layout whose index.json lists, besides the image (annotation
`kind: dev.cosignproject.cosign/image`), the manifest of its `sha256-<hex>.sig` tag
(`kind: dev.cosignproject.cosign/sigs`: simple-signing layers) and of its `.att` tag
(`.../atts`: DSSE envelope layers), and keeps cosign 3's bundles (signatures and attestations:
OCI referrers, manifests whose `subject` is the image) in `blobs/` without listing them. A layout
copied from a registry may list the bundle referrers, or the referrers tag's index, instead.
Both are read, as the offline layout reader (`imaged.verify.layout`) reads a layout directory:

- every index.json entry the import does not record as an image (annotations are not trusted):
  its simple-signing, bundle and DSSE layers, and those of the manifests a listed index holds;
- the manifests among the archive's blobs whose `subject` is an imported image, found by the
  same bounded scan as the layout reader's (`scan_referrers`: blobs of at most 64 KiB, 4096 of
  them, 16 MiB in all; past a bound the archive's referrers are not used, and the failure says so).

Nothing here is a verdict: each signature or attestation still has to verify for the imported
digest (the simple-signing payload or the in-toto statement names it, which the verifiers check),
under the rule matched by the name. Bounded like registry discovery: 32 index.json entries looked
at, 32 signatures from them, 32 referrers and 32 signatures an image from the scan, 1 MiB a blob.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from imaged.archive.ingest import INDEX_JSON, ArchiveContents
from imaged.archive.limits import ImportLimits
from imaged.containerd.content import ContentStore
from imaged.errors import InvalidArgument, NotFound, ResourceExhausted
from imaged.oci import mediatypes as mt
from imaged.oci.manifest import Descriptor, Manifest, parse_index, parse_manifest
from imaged.verify.discovery import (
    BUNDLE_ARTIFACT_TYPES,
    MAX_BLOB_SIZE,
    MAX_REFERRERS,
    MAX_SIGNATURES,
    SIGNATURE_ARTIFACT_TYPES,
)
from imaged.verify.layout import scan_referrers
from imaged.verify.material import (
    ANN_PREDICATE_TYPE,
    DSSE_MEDIA_TYPE,
    SIMPLE_SIGNING_MEDIA_TYPE,
    BundleSignature,
    Envelope,
    Signature,
    SimpleSigning,
)

MAX_ENTRIES = 32
# All the signature material read for one import (manifests and layers, each blob once): an index
# listing a manifest 32 times that lists one 1 MiB layer 32 times is 1 GiB of reads otherwise.
MAX_MATERIAL_BYTES = 32 * 1024 * 1024
_WANTED_LAYERS = BUNDLE_ARTIFACT_TYPES | {SIMPLE_SIGNING_MEDIA_TYPE, DSSE_MEDIA_TYPE}

# What an archive can carry for an image: signatures, and legacy (`.att`) attestation envelopes;
# bundles may be either (their statement says which).
Material = Signature | Envelope


@dataclass(frozen=True, slots=True)
class ArchiveSignature:
    """A signature or attestation found in the archive; `subject` is the digest a bundle referrer
    names (None for simple-signing and DSSE layers, whose payload names the image)."""

    signature: Material
    subject: str | None = None

    def concerns(self, digest: str) -> bool:
        return self.subject is None or self.subject == digest


@dataclass
class ArchiveMaterial:
    """What the archive carries for one image, and what was seen but not usable (for messages)."""

    signatures: list[Material] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class _Reader:
    def __init__(self, contents: ArchiveContents, store: ContentStore, limits: ImportLimits) -> None:
        self.c = contents
        self.store = store
        self.limits = limits
        self.budget = MAX_MATERIAL_BYTES
        self.exhausted = False

    async def read(self, d: Descriptor, limit: int) -> bytes | None:
        """The blob's bytes if the archive holds it at its descriptor's size, within `limit` and
        within what is left of the import's budget for signature material."""
        blob = self.c.by_digest.get(d.digest)
        if blob is None or blob.size != d.size or d.size > limit:
            return None
        if d.size > self.budget:
            self.exhausted = True
            return None
        self.budget -= d.size
        return await self.read_digest(d.digest, limit)

    async def read_digest(self, digest: str, limit: int) -> bytes | None:
        """The blob's bytes if the archive holds it within `limit` (held in memory, or read back
        from the content store, where ingest checked it against its name)."""
        blob = self.c.by_digest.get(digest)
        if blob is None or blob.size > limit:
            return None
        if blob.data is not None:
            return blob.data
        try:
            return await self.store.read_all(digest, limit)
        except (NotFound, ResourceExhausted):
            return None


def _signatures_of(m: Manifest, digest: str, blobs: list[tuple[Descriptor, bytes]]) -> list[ArchiveSignature]:
    kind = m.artifact_type or m.config.media_type
    out: list[ArchiveSignature] = []
    for i, (layer, data) in enumerate(blobs):
        if (
            kind in BUNDLE_ARTIFACT_TYPES
            and layer.media_type in BUNDLE_ARTIFACT_TYPES
            and m.subject is not None
        ):
            where = f"bundle referrer {digest} in the archive"
            how = f"verified via bundle referrer with digest {digest} in the archive"
            predicate = m.annotations.get(ANN_PREDICATE_TYPE)
            bundle = BundleSignature(data, where=where, how=how, predicate_type=predicate)
            out.append(ArchiveSignature(bundle, m.subject.digest))
        elif layer.media_type == SIMPLE_SIGNING_MEDIA_TYPE:
            where = f"legacy signature {digest} layer {i} in the archive"
            how = "verified via legacy signature in the archive"
            out.append(ArchiveSignature(SimpleSigning(data, layer.annotations, where=where, how=how)))
        elif layer.media_type == DSSE_MEDIA_TYPE:
            where = f"legacy attestation {digest} layer {i} in the archive"
            out.append(ArchiveSignature(Envelope(data, layer.annotations, where=where)))
    return out


def _wanted(m: Manifest, layer: Descriptor) -> bool:
    """Whether `_signatures_of` would use the layer (decided before reading it)."""
    if layer.media_type in BUNDLE_ARTIFACT_TYPES:
        return (m.artifact_type or m.config.media_type) in BUNDLE_ARTIFACT_TYPES and m.subject is not None
    return layer.media_type in _WANTED_LAYERS


async def _manifest_signatures(r: _Reader, d: Descriptor, seen: set[str]) -> list[ArchiveSignature]:
    """The signatures of the manifest `d`; `seen`: the blobs read already (each is read once: a
    second copy of a signature is the same signer's)."""
    if d.digest in seen:
        return []
    seen.add(d.digest)
    data = await r.read(d, r.limits.max_metadata)
    if data is None:
        return []
    try:
        m = parse_manifest(data, f"manifest {d.digest}")
    except InvalidArgument:
        return []
    wanted: list[Descriptor] = []
    for layer in m.layers:
        if len(wanted) >= MAX_SIGNATURES:
            break
        if layer.digest not in seen and _wanted(m, layer):
            seen.add(layer.digest)
            wanted.append(layer)
    blobs = [(layer, data) for layer in wanted if (data := await r.read(layer, MAX_BLOB_SIZE)) is not None]
    return _signatures_of(m, d.digest, blobs)


class ArchiveSignatures:
    """The signatures an archive carries for each of its images (`of(digest)`): index.json's
    entries, read once, and the referrers among its blobs, found by one scan for all the images
    (`images`: their digests), the first time an image needs them."""

    def __init__(
        self, contents: ArchiveContents, store: ContentStore, limits: ImportLimits, images: set[str]
    ) -> None:
        self._r = _Reader(contents, store, limits)
        self._images = frozenset(images)
        self._lock = asyncio.Lock()
        self._listed: list[ArchiveSignature] | None = None
        self._read: set[str] = set()  # manifests read from index.json: not again as referrers
        self._referrers: dict[str, list[Descriptor]] | None = None
        self._notes: list[str] = []
        self._seen: set[str] = set()  # blobs read for their signatures (each once)
        self._referred: dict[str, tuple[list[ArchiveSignature], list[str]]] = {}

    async def of(self, digest: str) -> ArchiveMaterial:
        """What the archive carries for the image `digest`: listed entries first, then referrers."""
        listed = [s.signature for s in await self.listed() if s.concerns(digest)]
        referred, notes = await self.referred(digest)
        return ArchiveMaterial(listed + [s.signature for s in referred], notes)

    async def listed(self) -> list[ArchiveSignature]:
        """The signatures of index.json's entries (other than the images), for any image."""
        async with self._lock:
            if self._listed is None:
                self._listed = await self._index_signatures()
            return list(self._listed)

    async def referred(self, digest: str) -> tuple[list[ArchiveSignature], list[str]]:
        """The signatures of `digest`'s referrers among the blobs (those index.json does not list),
        and notes on what was not looked at. Once per image, however many names it has."""
        await self.listed()
        async with self._lock:
            if self._referrers is None:
                self._referrers = await self._scan()
            if digest not in self._referred:
                self._referred[digest] = await self._referred_of(digest, self._referrers)
            found, notes = self._referred[digest]
            return list(found), list(notes)

    async def _referred_of(
        self, digest: str, referrers: dict[str, list[Descriptor]]
    ) -> tuple[list[ArchiveSignature], list[str]]:
        notes = list(self._notes)
        listed = referrers.get(digest, [])
        candidates = [
            d for d in listed if d.digest not in self._read and d.artifact_type in SIGNATURE_ARTIFACT_TYPES
        ]
        if len(candidates) > MAX_REFERRERS:
            notes.append(
                f"the archive holds {len(candidates)} signature referrers of {digest}; "
                f"only the first {MAX_REFERRERS} are considered"
            )
            candidates = candidates[:MAX_REFERRERS]
        out: list[ArchiveSignature] = []
        for d in candidates:
            out += [s for s in await _manifest_signatures(self._r, d, self._seen) if s.concerns(digest)]
            if len(out) >= MAX_SIGNATURES:
                break
        if self._r.exhausted:
            notes.append(self._budget_note())
        return out[:MAX_SIGNATURES], notes

    @staticmethod
    def _budget_note() -> str:
        return (
            f"the archive's signatures and attestations are over {MAX_MATERIAL_BYTES} bytes; "
            "the rest were not read"
        )

    async def _index_signatures(self) -> list[ArchiveSignature]:
        r = self._r
        doc = r.c.documents.get(INDEX_JSON)
        if doc is None:
            return []
        try:
            entries = [d for d in parse_index(doc, INDEX_JSON).manifests if d.digest not in self._images]
        except InvalidArgument:
            return []
        out: list[ArchiveSignature] = []
        looked = 0
        for d in entries:
            if looked >= MAX_ENTRIES or len(out) >= MAX_SIGNATURES:
                break
            looked += 1
            if mt.is_manifest(d.media_type):
                out += await self._listed_manifest(d)
            elif mt.is_index(d.media_type):  # a referrers tag (`sha256-<hex>`) saved as it is
                if d.digest in self._seen:
                    continue
                self._seen.add(d.digest)
                data = await r.read(d, r.limits.max_metadata)
                try:
                    listed = parse_index(data, f"index {d.digest}").manifests if data is not None else ()
                except InvalidArgument:
                    continue
                for child in listed[:MAX_ENTRIES]:
                    if len(out) >= MAX_SIGNATURES:
                        break
                    if mt.is_manifest(child.media_type) and child.digest not in self._images:
                        out += await self._listed_manifest(child)
        if len(out) > MAX_SIGNATURES or looked < len(entries):
            self._notes.append(
                f"the archive's index.json lists more signature material than the {MAX_ENTRIES} "
                f"entries and {MAX_SIGNATURES} signatures looked at"
            )
        if r.exhausted:
            self._notes.append(self._budget_note())
        return out[:MAX_SIGNATURES]

    async def _listed_manifest(self, d: Descriptor) -> list[ArchiveSignature]:
        blob = self._r.c.by_digest.get(d.digest)
        if blob is not None and blob.size == d.size:  # read here, so not again as a referrer
            self._read.add(d.digest)
        return await _manifest_signatures(self._r, d, self._seen)

    async def _scan(self) -> dict[str, list[Descriptor]]:
        """The referrers of the images among the archive's blobs (`scan_referrers`, bounded)."""
        c = self._r.c
        blobs = {b.digest: b.size for b in c.blobs.values() if b.path.startswith("blobs/sha256/")}
        try:
            return await scan_referrers(blobs.items(), self._r.read_digest, self._images, "the archive")
        except ResourceExhausted as e:
            self._notes.append(f"the archive's referrers were not used: {e.message}")
            return {}


async def archive_signatures(
    contents: ArchiveContents, store: ContentStore, limits: ImportLimits, images: set[str]
) -> list[ArchiveSignature]:
    """Everything the archive carries for `images` (their digests): index.json's entries, then
    each image's referrers among the blobs (`ArchiveSignatures.of` gives one image's)."""
    source = ArchiveSignatures(contents, store, limits, images)
    out = await source.listed()
    for digest in sorted(images):
        out += (await source.referred(digest))[0]
    return out
